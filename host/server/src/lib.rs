//! # weir-host
//!
//! The weir host: assembles the crates below it into a running process and serves what the
//! plugins produce. It owns the flow of events — [`pipeline`] (routing batches to plugins,
//! applying their row changes, collecting emitted events), [`ingest`] (the loop that polls the
//! source, runs the pipeline and checkpoints), [`checkpoint`] — plus [`status`], [`config`], the
//! HTTP API ([`api`], the only module that knows axum exists) and the assembly behind `weir serve`
//! and `weir demo` ([`server`], [`demo`]). The binary `weir` (`main.rs`, `cli.rs`: the only place
//! that knows clap exists) is a thin shell over this library.
//!
//! What it must not do: depend on wasmtime, Arrow, DataFusion, pgwire or rdkafka. It reaches them
//! only through `weir-runtime`, `weir-sql` and `weir-kafka`, whose APIs speak `weir-core` types.

pub mod admin;
pub mod api;
pub mod auth;
pub mod build;
pub mod checkpoint;
pub mod config;
pub mod demo;
pub mod ingest;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod registry;
pub mod sample;
pub mod scaffold;
pub mod server;
pub mod status;
