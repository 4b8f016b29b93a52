//! What a running host reports about itself: the typed status the ingest loop writes after each
//! publish, `GET /v1/status` serves, and `weir status` reads back. One set of types for all three,
//! so the CLI never re-parses the API's JSON by string keys.
//!
//! It sits below the HTTP API and the ingest loop and depends on neither.

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use weir_runtime::PluginInfo;

/// What the API reports about one loaded plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginStatus {
    /// What it declared.
    #[serde(flatten)]
    pub info: PluginInfo,
    /// Where it was loaded from.
    pub path: String,
    /// Events it processed successfully.
    pub events_ok: u64,
    /// Events it failed on.
    pub events_failed: u64,
    /// Instances started (more than one means it trapped and was recreated).
    pub instances_started: u64,
    /// The latest failures, newest last, each naming plugin, position and reason.
    pub recent_failures: Vec<String>,
}

/// One plugin's progress on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lag {
    /// `name@version`.
    pub plugin: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Next offset the plugin will process.
    pub position: u64,
    /// Offset the next event written to the partition gets.
    pub end: u64,
    /// `end - position`.
    pub lag: u64,
}

/// The last checkpoint written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointStatus {
    /// Sequence number.
    pub seq: u64,
    /// Rows over all tables.
    pub rows: usize,
    /// Bytes written.
    pub bytes: u64,
    /// Milliseconds it took.
    pub write_ms: u64,
}

/// What `GET /v1/status` reports; the ingest loop rewrites it after each publish.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The source, and its state.
    pub source: String,
    /// The source's last error, until it recovers.
    pub source_error: Option<String>,
    /// Events read from the source since start.
    pub events_read: u64,
    /// Events handlers emitted that wait to be written (non-zero only while the sink fails).
    pub emitted_pending: usize,
    /// The plugins.
    pub plugins: Vec<PluginStatus>,
    /// Per plugin and partition: position, end and lag.
    pub lag: Vec<Lag>,
    /// The last checkpoint written.
    pub checkpoint: Option<CheckpointStatus>,
}

/// Shared, read-mostly status: the ingest loop writes it, the API reads it.
pub type StatusBoard = Arc<RwLock<Status>>;

#[cfg(test)]
mod tests {
    use super::*;
    use weir_runtime::PluginKind;

    /// The CLI reads back exactly what the API serves.
    #[test]
    fn status_round_trips_through_json() {
        let status = Status {
            source: "embedded log".into(),
            source_error: None,
            events_read: 7,
            emitted_pending: 0,
            plugins: vec![PluginStatus {
                info: PluginInfo {
                    name: "orders".into(),
                    version: "0.1.0".into(),
                    description: "orders".into(),
                    topics: vec!["orders".into()],
                    event_types: vec![],
                    kind: PluginKind::Handler { emits_to: vec!["alerts".into()] },
                },
                path: "orders.wasm".into(),
                events_ok: 6,
                events_failed: 1,
                instances_started: 2,
                recent_failures: vec!["boom".into()],
            }],
            lag: vec![Lag {
                plugin: "orders@0.1.0".into(),
                topic: "orders".into(),
                partition: 0,
                position: 7,
                end: 9,
                lag: 2,
            }],
            checkpoint: Some(CheckpointStatus { seq: 3, rows: 10, bytes: 100, write_ms: 4 }),
        };
        let text = serde_json::to_string(&status).expect("serialise");
        assert_eq!(serde_json::from_str::<Status>(&text).expect("deserialise"), status);
    }
}
