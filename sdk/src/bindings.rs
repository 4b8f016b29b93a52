//! The generated bindings for both worlds. Plugin authors never name anything in here: the
//! export macros and the SDK's own types sit between them and the WIT contract.
#![allow(missing_docs)]

/// Bindings for the `projection` world.
pub mod projection {
    wit_bindgen::generate!({
        path: "../wit",
        world: "projection",
        pub_export_macro: true,
        export_macro_name: "export_projection_world",
        default_bindings_module: "weir_sdk::__private::projection",
    });
}

/// Bindings for the `handler` world; the shared interfaces are the projection world's.
pub mod handler {
    wit_bindgen::generate!({
        path: "../wit",
        world: "handler",
        pub_export_macro: true,
        export_macro_name: "export_handler_world",
        default_bindings_module: "weir_sdk::__private::handler",
        type_section_suffix: "handler",
        with: {
            "weir:plugin/types@0.1.0": crate::bindings::projection::weir::plugin::types,
            "weir:plugin/host@0.1.0": crate::bindings::projection::weir::plugin::host,
            "weir:plugin/state@0.1.0": crate::bindings::projection::weir::plugin::state,
        },
    });
}

#[cfg(target_arch = "wasm32")]
pub use handler::weir::plugin::timers;
#[cfg(target_arch = "wasm32")]
pub use projection::weir::plugin::{host, state};
pub use projection::weir::plugin::{tables, types};
