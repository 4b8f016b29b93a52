//! # weir-core
//!
//! The host's own vocabulary, shared by every other host crate: events and their positions
//! ([`event`]), read-model schemas, values and row changes with the one check a row change must
//! pass ([`row`]), the traits every event source and sink implements ([`source`]), durable
//! file writes ([`durable`]) and the latency histograms the host measures itself with ([`meter`]).
//!
//! It depends on no heavy library (no wasmtime, Arrow, DataFusion, rdkafka, axum or clap), so the
//! crates above it can only talk to each other in these types.

pub mod durable;
pub mod event;
pub mod meter;
pub mod row;
pub mod source;
