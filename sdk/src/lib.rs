//! # weir-sdk: write weir plugins in Rust
//!
//! A weir plugin is a WebAssembly component that the weir host runs on every event of the topics
//! it subscribes to. This crate is all a plugin author depends on: it hides the WIT contract
//! (`wit/weir.wit`) behind a small typed API and runs the same logic natively for tests.
//!
//! There are two kinds of plugin:
//! - a **projection** ([`Projection`]) turns events into rows of read-model tables, which the host
//!   serves to SQL;
//! - a **handler** ([`Handler`]) reacts to events by emitting new events.
//!
//! ```
//! use serde::Deserialize;
//! use weir_sdk::{Event, Projection, ProjectionCtx, ProjectionInfo, Result};
//!
//! weir_sdk::table! {
//!     /// Accounts by id.
//!     pub struct Account as "accounts" key(id) {
//!         id: String,
//!         balance: i64,
//!     }
//! }
//!
//! #[derive(Deserialize)]
//! struct Opened { id: String, deposit: i64 }
//!
//! pub struct Accounts;
//!
//! impl Projection for Accounts {
//!     fn describe() -> ProjectionInfo {
//!         ProjectionInfo::new("accounts", "0.1.0").topic("bank").table::<Account>()
//!     }
//!
//!     fn apply(ctx: &mut ProjectionCtx, event: &Event) -> Result<()> {
//!         if event.event_type == "AccountOpened" {
//!             let opened: Opened = event.json()?;
//!             ctx.upsert(Account { id: opened.id, balance: opened.deposit });
//!         }
//!         Ok(())
//!     }
//! }
//!
//! weir_sdk::export_projection!(Accounts);
//!
//! // The same logic, natively, in a plain `cargo test`:
//! let mut harness = weir_sdk::testing::ProjectionHarness::<Accounts>::new();
//! let out = harness.apply([Event::json_event("AccountOpened", "a-1", &serde_json::json!({"id": "a-1", "deposit": 5}))]);
//! assert_eq!(out[0].as_ref().unwrap()[0].to_string(), r#"upsert accounts("a-1", 5)"#);
//! ```
//!
//! Plugins are deterministic by contract: there is no clock and no randomness of their own, so a
//! replay of the same events gives the same rows. Keep anything you need between events in
//! [state](ProjectionCtx::put), never in globals: the host may recreate the instance at any time.
#![deny(missing_docs)]

#[cfg_attr(
    not(all(feature = "size-classes", target_family = "wasm", not(target_feature = "atomics"))),
    allow(dead_code)
)]
mod alloc;
mod bindings;
mod event;
mod handler;
mod projection;
mod state;
mod table;
pub mod testing;

#[doc(hidden)]
pub mod __private;

/// The plugin's heap allocator (feature `size-classes`, on by default; see `Cargo.toml`).
#[cfg(all(feature = "size-classes", target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: alloc::SizeClasses = alloc::SizeClasses::new();

pub use event::{Event, Position, Timestamp};
pub use handler::{Handler, HandlerCtx, HandlerInfo, OutgoingEvent, TICKS_TOPIC, TIMER_HEADER};
pub use projection::{Projection, ProjectionCtx, ProjectionInfo};
pub use table::{Column, ColumnType, ColumnValue, Key, Row, RowChange, TableSchema, Value};

/// Why an event could not be handled. The host does not apply anything the event produced and
/// sends the event to the plugin's error path with this message.
///
/// Any `std::error::Error` converts into it, so `?` works on ordinary fallible calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    /// An error with this message.
    pub fn msg(message: impl std::fmt::Display) -> Self {
        Error { message: message.to_string() }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(error: E) -> Self {
        Error::msg(error)
    }
}

/// The result of handling one event.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Return early with an [`Error`] built like `format!`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return ::core::result::Result::Err($crate::Error::msg(::std::format!($($arg)*)))
    };
}

/// Severity of a plugin log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the plugin recovered from.
    Warn,
    /// Something failed.
    Error,
}

/// Write a log line; the host re-emits it inside a span that names the plugin.
pub fn log(level: Level, message: &str) {
    state::sys::log(level, message)
}
