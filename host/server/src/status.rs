//! What a running host reports about itself: the typed status the ingest loop writes after each
//! publish, `GET /v1/status` serves, and `weir status` reads back. One set of types for all three,
//! so the CLI never re-parses the API's JSON by string keys.
//!
//! It sits below the HTTP API and the ingest loop and depends on neither.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use weir_core::event::StartAt;
use weir_core::meter::Histogram;
use weir_runtime::PluginInfo;

/// Where a plugin is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginState {
    /// Processing events.
    Running,
    /// Holding its position and serving its tables; its lag grows.
    Paused,
    /// Serving its tables while another version of it replays history beside it.
    Rebuilding,
    /// Stopped at an event it failed on (`on_error = "stop"`); holding its position.
    Failed,
}

impl std::fmt::Display for PluginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PluginState::Running => "running",
            PluginState::Failed => "failed",
            PluginState::Paused => "paused",
            PluginState::Rebuilding => "rebuilding",
        })
    }
}

/// A version of a projection replaying history into shadow tables beside the serving one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RebuildStatus {
    /// `name@version` of the version being built.
    pub label: String,
    /// Its deploy number.
    pub deploy: u32,
    /// Content hash of its component.
    pub component: String,
    /// Why it runs: `deploy`, `rebuild` or `rollback`.
    pub reason: String,
    /// Events applied to the shadow tables so far.
    pub events_done: u64,
    /// Events between its positions and the end of its partitions.
    pub events_left: u64,
    /// Events per second over the rebuild so far.
    pub rate: f64,
    /// Milliseconds since it started.
    pub elapsed_ms: u64,
}

/// What the API reports about one loaded plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginStatus {
    /// What it declared.
    #[serde(flatten)]
    pub info: PluginInfo,
    /// Where it was loaded from.
    pub path: String,
    /// Content hash (SHA-256, hex) of its component.
    pub component: String,
    /// Its deploy number: the n-th version deployed under this name.
    pub deploy: u32,
    /// Running, paused, rebuilding or failed.
    pub state: PluginState,
    /// Deploy-time parameters.
    pub params: BTreeMap<String, String>,
    /// Where it starts without a checkpoint of its own.
    pub start: StartAt,
    /// Events it processed successfully.
    pub events_ok: u64,
    /// Events it failed on.
    pub events_failed: u64,
    /// Instances started (more than one means it trapped and was recreated).
    pub instances_started: u64,
    /// The latest failures, newest last, each naming plugin, position and reason.
    pub recent_failures: Vec<String>,
    /// A side-by-side rebuild in progress.
    pub rebuild: Option<RebuildStatus>,
    /// Why the last rebuild was abandoned, if it was.
    pub rebuild_error: Option<String>,
    /// What an event it fails on does: `dead-letter` (default) or `stop`.
    #[serde(default)]
    pub on_error: crate::output::OnError,
    /// Why it stopped (state `failed`).
    #[serde(default)]
    pub stopped: Option<String>,
    /// Events sent to its dead-letter topic since the host started.
    #[serde(default)]
    pub dead_lettered: u64,
    /// Dead letters waiting in its dead-letter topic (not replayed or purged).
    #[serde(default)]
    pub dead_letters: u64,
    /// Events it failed on since this version started serving, by kind of failure.
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
    /// How long its batches took (plugin call and applying what it produced).
    #[serde(default)]
    pub batches: Histogram,
    /// Linear memory its instance holds, in bytes.
    #[serde(default)]
    pub memory_bytes: u64,
    /// Seconds spent in calls into it.
    #[serde(default)]
    pub busy_seconds: f64,
    /// Its longest call since the previous report, as a fraction of the CPU budget per call
    /// (1 = stopped for running past it).
    #[serde(default)]
    pub cpu_budget_used: f64,
}

/// `GET /v1/plugins/{name}`: a plugin's status and its lag per partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginDetail {
    /// The plugin.
    #[serde(flatten)]
    pub status: PluginStatus,
    /// Its position, end and lag per partition.
    pub lag: Vec<Lag>,
}

/// One deployed version of a plugin (`GET /v1/plugins/{name}/versions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Deploy number, from 1.
    pub deploy: u32,
    /// Content hash (SHA-256, hex) of the component; the file is `<data_dir>/components/<hash>.wasm`.
    pub component: String,
    /// The version the plugin declared.
    pub version: String,
    /// Milliseconds since the Unix epoch when it was deployed.
    pub deployed_ms: u64,
    /// Deploy-time parameters.
    pub params: BTreeMap<String, String>,
    /// Where it starts without a checkpoint of its own.
    pub start: StartAt,
    /// `config` (a `[[plugin]]` of the config file) or `api` (`weir plugin deploy`).
    pub origin: String,
    /// Whether this is the version serving now.
    pub current: bool,
}

/// What an admin action did (`POST /v1/plugins...`, `DELETE /v1/plugins/{name}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminOutcome {
    /// The plugin.
    pub name: String,
    /// `deployed` (a new plugin), `swapped` (a new version continuing from the old one's
    /// positions and state), `rebuilding` (a new version replaying beside the serving one),
    /// `unchanged`, `paused`, `resumed`, `removed`.
    pub action: String,
    /// The deploy number now serving or being built, when there is one.
    pub deploy: Option<u32>,
    /// One sentence for people.
    pub message: String,
    /// Milliseconds the ingest loop stopped between two batches to apply it (for a swap: the
    /// whole pause in processing).
    #[serde(default)]
    pub applied_ms: f64,
}

/// One line a plugin logged (`GET /v1/plugins/{name}/logs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// Sequence number, increasing per plugin; `?after=SEQ` returns the lines after it.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// `name@version` of the instance that logged it.
    pub plugin: String,
    /// The text.
    pub message: String,
}

/// One plugin's progress on one partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Events it processed there since this version started serving.
    #[serde(default)]
    pub events: u64,
    /// Row changes (a projection) or events emitted (a handler) for them.
    #[serde(default)]
    pub produced: u64,
    /// While it is behind: seconds between now and the time of the last event it processed
    /// there (0 when it is caught up or has processed nothing there yet).
    #[serde(default)]
    pub lag_seconds: f64,
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
    /// When it was written, milliseconds since the Unix epoch.
    #[serde(default)]
    pub written_ms: u64,
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
    /// Checkpoints written since start.
    #[serde(default)]
    pub checkpoints_written: u64,
    /// Checkpoints that failed since start.
    #[serde(default)]
    pub checkpoints_failed: u64,
    /// How long checkpoints took to write.
    #[serde(default)]
    pub checkpoint_durations: Histogram,
    /// When the host started, milliseconds since the Unix epoch.
    #[serde(default)]
    pub started_ms: u64,
    /// Whether plugins' work is counted per partition and timed (`[server] metrics`).
    #[serde(default)]
    pub metered: bool,
    /// Per plugin, which dead letters are settled (for the dead-letter API; not served here).
    #[serde(skip)]
    pub dead_letter_books: BTreeMap<String, crate::output::DeadLetterBook>,
}

/// One dead letter, as `GET /v1/plugins/{name}/dlq` lists it and `weir dlq` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Where it is in the dead-letter topic.
    pub partition: u32,
    /// Its offset there.
    pub offset: u64,
    /// The failed event's id.
    pub id: String,
    /// Its type.
    pub event_type: String,
    /// Its key.
    pub key: Option<String>,
    /// Where it was read: `topic/partition@offset`.
    pub origin: String,
    /// The version that failed on it (`name@version`).
    pub plugin: String,
    /// Why.
    pub error: String,
    /// The kind of failure (`refused`, `trapped`, `cpu_budget`, `output_refused`, ...).
    pub kind: String,
    /// Tries before it was dead-lettered.
    pub attempts: u32,
    /// The event's time, microseconds since the Unix epoch.
    pub time_us: i64,
    /// Its correlation id.
    pub correlation_id: Option<String>,
    /// The payload (as text, lossily), with `show` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The event's own headers (not weir's), with `show` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<(String, String)>>,
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
                component: "ab".repeat(32),
                deploy: 2,
                state: PluginState::Rebuilding,
                params: BTreeMap::from([("threshold".into(), "5".into())]),
                start: StartAt::Latest,
                events_ok: 6,
                events_failed: 1,
                instances_started: 2,
                recent_failures: vec!["boom".into()],
                rebuild: Some(RebuildStatus {
                    label: "orders@0.2.0".into(),
                    deploy: 3,
                    component: "cd".repeat(32),
                    reason: "deploy".into(),
                    events_done: 10,
                    events_left: 5,
                    rate: 100.0,
                    elapsed_ms: 100,
                }),
                rebuild_error: None,
                on_error: crate::output::OnError::Stop,
                stopped: Some("plugin orders@0.1.0 failed on event orders/0@3".into()),
                dead_lettered: 1,
                dead_letters: 1,
                errors: BTreeMap::from([("refused".into(), 1)]),
                batches: Histogram { counts: vec![1; 15], sum_seconds: 0.5 },
                memory_bytes: 1 << 20,
                busy_seconds: 0.25,
                cpu_budget_used: 0.1,
            }],
            lag: vec![Lag {
                plugin: "orders@0.1.0".into(),
                topic: "orders".into(),
                partition: 0,
                position: 7,
                end: 9,
                lag: 2,
                events: 7,
                produced: 14,
                lag_seconds: 1.5,
            }],
            checkpoint: Some(CheckpointStatus { seq: 3, rows: 10, bytes: 100, write_ms: 4, written_ms: 1 }),
            checkpoints_written: 3,
            checkpoints_failed: 1,
            checkpoint_durations: Histogram::default(),
            started_ms: 1,
            metered: true,
            dead_letter_books: BTreeMap::new(),
        };
        let text = serde_json::to_string(&status).expect("serialise");
        assert_eq!(serde_json::from_str::<Status>(&text).expect("deserialise"), status);
    }
}
