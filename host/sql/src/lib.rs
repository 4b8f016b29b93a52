//! # weir-sql
//!
//! Read models and SQL: projections' rows kept as Arrow tables ([`readmodel`]), queried with
//! DataFusion ([`query`]) over snapshots that ingest publishes, answered as JSON, CSV, Arrow IPC or
//! text, and served over the Postgres wire protocol ([`postgres`]) and Arrow Flight SQL ([`flight`]),
//! each front end counting and timing its queries ([`stats`]); a Postgres client's messages are checked
//! before pgwire decodes them (`wire`).
//!
//! The only crate that depends on Arrow, DataFusion and pgwire. Its public API speaks
//! `weir-core` types and its own; Arrow and DataFusion types stay inside (an [`query::Answer`] is
//! opaque; callers get encoded bytes or text from it).

pub mod flight;
mod ipc;
pub mod postgres;
pub mod query;
pub mod readmodel;
pub(crate) mod session;
pub mod stats;
mod wire;

/// A running SQL listener (the Postgres wire, Flight SQL); dropping it stops accepting and ends
/// every session.
pub struct Listener {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// The address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}
