//! The host's integration tests: one binary, so the 2-core machine links once.
//!
//! Everything here uses real components built from real Rust crates (the example plugins in
//! `plugins/` and the fixtures in `tests/fixtures/`), or hand-written WAT made a component with
//! wit-component (`raw_plugins.rs`: what Rust cannot produce), through the real runtime.

// A test fails by panicking; its helpers unwrap for the same reason (clippy's
// `allow-unwrap-in-tests` covers only `#[test]` functions and `#[cfg(test)]` modules).
#![allow(clippy::unwrap_used)]

mod cli;
mod clients;
mod crash;
mod dashboard;
mod faults;
mod fuzz;
mod golden;
mod handlers;
mod hostile;
mod ingest;
mod kafka;
mod lifecycle;
mod raw_plugins;
mod security;
mod sql;
mod support;
