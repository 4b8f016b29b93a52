//! # weir-host
//!
//! The weir host: consumes event streams, routes each event through sandboxed WebAssembly
//! plugins, and serves what they produce. The binary `weir` is a thin shell over this library.
//!
//! Modules own one concern each and are the only place that imports its heavy library:
//! [`plugin`] alone knows wasmtime, [`readmodel`] and [`query`] alone Arrow/DataFusion, [`api`]
//! alone axum, `cli` (in the binary) alone clap and ureq.
//! Everything else speaks the project's own types ([`event`], [`row`]).

pub mod api;
pub mod build;
pub mod checkpoint;
pub mod config;
pub mod demo;
pub mod event;
pub mod ingest;
pub mod log;
pub mod pipeline;
pub mod plugin;
pub mod postgres;
pub mod query;
pub mod readmodel;
pub mod row;
pub mod sample;
pub mod server;
pub mod source;
