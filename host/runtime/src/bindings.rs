//! The one place the WIT contract becomes Rust for the host.

/// The `projection` world.
pub mod projection {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "projection",
        imports: { default: trappable },
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

/// The `handler` world; `host` and `state` are the projection world's; `timers` is its own. It has
/// its own `types`, since it returns headers where the projection world only receives them.
pub mod handler {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "handler",
        imports: { default: trappable },
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "weir:plugin/host": super::projection::weir::plugin::host,
            "weir:plugin/state": super::projection::weir::plugin::state,
        },
    });
}

pub use projection::weir::plugin::{host, state, tables, types};

/// Export names that identify each world.
pub const PROJECTOR_EXPORT: &str = "weir:plugin/projector@0.1.0";
/// See [`PROJECTOR_EXPORT`].
pub const REACTOR_EXPORT: &str = "weir:plugin/reactor@0.1.0";
