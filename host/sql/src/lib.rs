//! # weir-sql
//!
//! Read models and SQL: projections' rows kept as Arrow tables ([`readmodel`]), queried with
//! DataFusion ([`query`]) over snapshots that ingest publishes, answered as JSON, CSV, Arrow IPC or
//! text, and served over the Postgres wire protocol ([`postgres`]).
//!
//! The only crate that depends on Arrow, DataFusion and pgwire. Its public API speaks
//! `weir-core` types and its own; Arrow and DataFusion types stay inside (an [`query::Answer`] is
//! opaque; callers get encoded bytes or text from it).

pub mod flight;
pub mod postgres;
pub mod query;
pub mod readmodel;
pub(crate) mod session;
