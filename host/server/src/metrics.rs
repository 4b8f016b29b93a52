//! `GET /metrics`: what the host reports about itself in the Prometheus/OpenMetrics text
//! exposition, written with `prometheus-client` (the only module that knows it exists).
//!
//! Nothing is counted here: every figure comes from what the ingest loop last reported (the
//! [`Status`], at most a second old), the published read models and the SQL front ends'
//! counters, read at each scrape. So a series exists exactly while its plugin, partition or table
//! does, and a removed plugin leaves no stale series behind. Names follow Prometheus'
//! conventions: `weir_` prefix, base units (`_seconds`, `_bytes`), counters ending in `_total`.
//! Per-partition counters start from 0 when a version starts serving (a swap or a rebuild that
//! takes over), which Prometheus' `rate()` treats as a counter reset.

use std::collections::BTreeSet;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use weir_core::meter::Histogram;
use weir_sql::query::TableInfo;
use weir_sql::stats::FrontEndStats;

use crate::status::{PluginState, Status};

/// The media type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything one scrape reports.
#[derive(Debug)]
pub struct Scrape {
    /// What the ingest loop last reported.
    pub status: Status,
    /// The published tables.
    pub tables: Vec<TableInfo>,
    /// The SQL front ends' figures.
    pub sql: Vec<FrontEndStats>,
    /// Now, milliseconds since the Unix epoch.
    pub now_ms: u64,
}

/// The exposition text of `scrape`.
pub fn render(scrape: Scrape) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Families(families(&scrape))));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
enum Value {
    /// A counter of things.
    Count(u64),
    /// A counter of seconds.
    Counter(f64),
    Gauge(f64),
    Histogram(Histogram),
    /// An info metric: its labels are the information, its value 1.
    Info,
}

/// One metric family: its descriptor and samples.
#[derive(Debug)]
struct Family {
    /// Without the unit or `_total` (the encoder adds them).
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    kind: MetricType,
    samples: Vec<(Labels, Value)>,
}

impl Family {
    fn new(name: &'static str, unit: Option<Unit>, kind: MetricType, help: &'static str) -> Self {
        Family { name, help, unit, kind, samples: Vec::new() }
    }

    fn add(&mut self, labels: Labels, value: Value) {
        self.samples.push((labels, value));
    }
}

#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for family in &self.0 {
            let mut metric = encoder.encode_descriptor(family.name, family.help, family.unit.as_ref(), family.kind)?;
            for (labels, value) in &family.samples {
                if let Value::Info = value {
                    metric.encode_info(labels)?;
                    continue;
                }
                if labels.is_empty() {
                    encode_value(&mut metric, value)?;
                } else {
                    encode_value(&mut metric.encode_family(labels)?, value)?;
                }
            }
        }
        Ok(())
    }
}

fn encode_value(sample: &mut MetricEncoder<'_>, value: &Value) -> Result<(), std::fmt::Error> {
    match value {
        Value::Info => Ok(()),
        Value::Count(v) => sample.encode_counter::<NoLabelSet, _, u64>(v, None),
        Value::Counter(v) => sample.encode_counter::<NoLabelSet, _, f64>(v, None),
        Value::Gauge(v) => sample.encode_gauge(v),
        Value::Histogram(h) => sample.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count(), &h.buckets(), None),
    }
}

fn name_of(label: &str) -> &str {
    label.split_once('@').map_or(label, |(name, _)| name)
}

fn partition_labels(plugin: &str, topic: &str, partition: u32) -> Labels {
    vec![("plugin", name_of(plugin).to_string()), ("topic", topic.to_string()), ("partition", partition.to_string())]
}

fn seconds_since(now_ms: u64, then_ms: u64) -> f64 {
    now_ms.saturating_sub(then_ms) as f64 / 1000.0
}

/// Every family, in the order they are documented (README "Metrics").
fn families(scrape: &Scrape) -> Vec<Family> {
    use MetricType::{Counter, Gauge, Histogram as Hist, Info};
    use Value::{Count as N, Counter as C, Gauge as G, Histogram as H};
    let status = &scrape.status;
    let mut out = Vec::new();

    // The host and its source.
    let mut up = Family::new("weir_source_up", None, Gauge, "1 while the source answers, 0 while it fails");
    up.add(vec![("source", status.source.clone())], G(f64::from(u8::from(status.source_error.is_none()))));
    out.push(up);
    let mut read = Family::new("weir_source_events_read", None, Counter, "Events read from the source since start");
    read.add(vec![], N(status.events_read));
    out.push(read);
    let mut pending =
        Family::new("weir_emitted_pending", None, Gauge, "Events handlers emitted that wait to be written");
    pending.add(vec![], G(status.emitted_pending as f64));
    out.push(pending);
    let mut started = Family::new("weir_start_time", Some(Unit::Seconds), Gauge, "When the host started (Unix time)");
    started.add(vec![], G(status.started_ms as f64 / 1000.0));
    out.push(started);

    // Plugins.
    let mut info = Family::new("weir_plugin", None, Info, "A loaded plugin: version, kind, deploy and component");
    let mut state = Family::new("weir_plugin_state", None, Gauge, "1 for the state the plugin is in, 0 for the others");
    let mut ok = Family::new("weir_plugin_events_ok", None, Counter, "Events the plugin processed successfully");
    let mut failed = Family::new("weir_plugin_events_failed", None, Counter, "Events the plugin failed on");
    let mut errors =
        Family::new("weir_plugin_errors", None, Counter, "Events the plugin failed on, by kind of failure");
    let mut dead_lettered =
        Family::new("weir_plugin_dead_lettered", None, Counter, "Events sent to the plugin's dead-letter topic");
    let mut dead_letters = Family::new(
        "weir_plugin_dead_letters_open",
        None,
        Gauge,
        "Dead letters in the plugin's dead-letter topic not replayed or purged",
    );
    let mut batches = Family::new(
        "weir_plugin_batch_duration",
        Some(Unit::Seconds),
        Hist,
        "Time of one batch through the plugin: its call and applying what it produced",
    );
    let mut memory =
        Family::new("weir_plugin_memory", Some(Unit::Bytes), Gauge, "Linear memory the plugin's instance holds");
    let mut busy = Family::new("weir_plugin_busy", Some(Unit::Seconds), Counter, "Time spent in calls into the plugin");
    let mut budget = Family::new(
        "weir_plugin_cpu_budget_used",
        Some(Unit::Other("ratio".into())),
        Gauge,
        "The plugin's longest call over the last second, as a fraction of its CPU budget per call",
    );
    let mut instances = Family::new(
        "weir_plugin_instances_started",
        None,
        Counter,
        "Instances of the plugin started (more than one: it trapped and was recreated)",
    );
    let mut rebuild_done =
        Family::new("weir_rebuild_events_done", None, Gauge, "Events a rebuilding version has replayed so far");
    let mut rebuild_left =
        Family::new("weir_rebuild_events_left", None, Gauge, "Events a rebuilding version has still to replay");
    let mut rebuild_rate =
        Family::new("weir_rebuild_events_per_second", None, Gauge, "A rebuilding version's replay rate so far");
    for plugin in &status.plugins {
        let name = plugin.info.name.clone();
        let kind = match plugin.info.kind {
            weir_runtime::PluginKind::Projection { .. } => "projection",
            weir_runtime::PluginKind::Handler { .. } => "handler",
        };
        info.add(
            vec![
                ("plugin", name.clone()),
                ("version", plugin.info.version.clone()),
                ("kind", kind.to_string()),
                ("deploy", plugin.deploy.to_string()),
                ("component", plugin.component.clone()),
            ],
            Value::Info,
        );
        for candidate in [PluginState::Running, PluginState::Paused, PluginState::Rebuilding, PluginState::Failed] {
            state.add(
                vec![("plugin", name.clone()), ("state", candidate.to_string())],
                G(f64::from(u8::from(plugin.state == candidate))),
            );
        }
        let one = || vec![("plugin", name.clone())];
        ok.add(one(), N(plugin.events_ok));
        failed.add(one(), N(plugin.events_failed));
        for (kind, n) in &plugin.errors {
            errors.add(vec![("plugin", name.clone()), ("kind", kind.clone())], N(*n));
        }
        dead_lettered.add(one(), N(plugin.dead_lettered));
        dead_letters.add(one(), G(plugin.dead_letters as f64));
        if status.metered {
            batches.add(one(), H(plugin.batches.clone()));
        }
        memory.add(one(), G(plugin.memory_bytes as f64));
        busy.add(one(), C(plugin.busy_seconds));
        budget.add(one(), G(plugin.cpu_budget_used));
        instances.add(one(), N(plugin.instances_started));
        if let Some(rebuild) = &plugin.rebuild {
            let labels = || vec![("plugin", name.clone()), ("version", rebuild.label.clone())];
            rebuild_done.add(labels(), G(rebuild.events_done as f64));
            rebuild_left.add(labels(), G(rebuild.events_left as f64));
            rebuild_rate.add(labels(), G(rebuild.rate));
        }
    }
    out.push(info);
    out.extend([state, ok, failed, errors, dead_lettered, dead_letters, batches, memory, busy, budget, instances]);

    // Plugins per partition.
    let mut events = Family::new("weir_plugin_events", None, Counter, "Events the plugin processed from the partition");
    let mut changes = Family::new(
        "weir_plugin_row_changes",
        None,
        Counter,
        "Row changes a projection made for the partition's events",
    );
    let mut emitted =
        Family::new("weir_plugin_events_emitted", None, Counter, "Events a handler emitted for the partition's events");
    let mut position =
        Family::new("weir_plugin_position", None, Gauge, "Next offset the plugin processes in the partition");
    let mut lag =
        Family::new("weir_plugin_lag_events", None, Gauge, "Events between the plugin's position and the end");
    let mut lag_seconds = Family::new(
        "weir_plugin_lag",
        Some(Unit::Seconds),
        Gauge,
        "While behind: age of the last event the plugin processed in the partition (0 when caught up)",
    );
    let mut end =
        Family::new("weir_partition_end_offset", None, Gauge, "Offset the next event written to the partition gets");
    let mut ends_seen = BTreeSet::new();
    let is_handler = |label: &str| {
        status
            .plugins
            .iter()
            .any(|p| p.info.name == name_of(label) && matches!(p.info.kind, weir_runtime::PluginKind::Handler { .. }))
    };
    for l in &status.lag {
        let labels = || partition_labels(&l.plugin, &l.topic, l.partition);
        if status.metered {
            events.add(labels(), N(l.events));
            if is_handler(&l.plugin) {
                emitted.add(labels(), N(l.produced));
            } else {
                changes.add(labels(), N(l.produced));
            }
        }
        position.add(labels(), G(l.position as f64));
        lag.add(labels(), G(l.lag as f64));
        lag_seconds.add(labels(), G(l.lag_seconds));
        if ends_seen.insert((l.topic.clone(), l.partition)) {
            end.add(vec![("topic", l.topic.clone()), ("partition", l.partition.to_string())], G(l.end as f64));
        }
    }
    out.extend([events, changes, emitted, position, end, lag, lag_seconds, rebuild_done, rebuild_left, rebuild_rate]);

    // Read-model tables.
    let mut rows = Family::new("weir_table_rows", None, Gauge, "Rows in the table's published snapshot");
    let mut bytes = Family::new("weir_table", Some(Unit::Bytes), Gauge, "Bytes of the table's published snapshot");
    let mut age = Family::new(
        "weir_table_snapshot_age",
        Some(Unit::Seconds),
        Gauge,
        "Seconds since the snapshot queries read was taken (a new one is taken when rows change)",
    );
    for table in &scrape.tables {
        let labels = || vec![("plugin", table.plugin.clone()), ("table", table.name.clone())];
        rows.add(labels(), G(table.rows as f64));
        bytes.add(labels(), G(table.bytes as f64));
        age.add(labels(), G(seconds_since(scrape.now_ms, table.snapshot_ms)));
    }
    out.extend([rows, bytes, age]);

    // SQL.
    let mut queries = Family::new("weir_sql_queries", None, Counter, "Queries run, by front end");
    let mut latency = Family::new(
        "weir_sql_query_duration",
        Some(Unit::Seconds),
        Hist,
        "Time from receiving a query to handing over its last row, by front end",
    );
    let mut sql_errors =
        Family::new("weir_sql_errors", None, Counter, "Failed queries, by front end and kind of error");
    for front in &scrape.sql {
        let labels = || vec![("front_end", front.front_end.name().to_string())];
        queries.add(labels(), N(front.queries));
        latency.add(labels(), H(front.latency.clone()));
        for (kind, n) in &front.errors {
            sql_errors.add(vec![("front_end", front.front_end.name().to_string()), ("kind", kind.to_string())], N(*n));
        }
    }
    out.extend([queries, latency, sql_errors]);

    // Checkpoints.
    let mut written = Family::new("weir_checkpoints", None, Counter, "Checkpoints written since start");
    written.add(vec![], N(status.checkpoints_written));
    let mut failures = Family::new("weir_checkpoint_failures", None, Counter, "Checkpoints that failed since start");
    failures.add(vec![], N(status.checkpoints_failed));
    let mut duration = Family::new("weir_checkpoint_duration", Some(Unit::Seconds), Hist, "Time to write a checkpoint");
    duration.add(vec![], H(status.checkpoint_durations.clone()));
    let mut size = Family::new("weir_checkpoint_size", Some(Unit::Bytes), Gauge, "Bytes the last checkpoint wrote");
    let mut checkpoint_rows =
        Family::new("weir_checkpoint_rows", None, Gauge, "Rows over all tables in the last checkpoint");
    let mut checkpoint_age =
        Family::new("weir_checkpoint_age", Some(Unit::Seconds), Gauge, "Seconds since the last checkpoint was written");
    if let Some(last) = &status.checkpoint {
        size.add(vec![], G(last.bytes as f64));
        checkpoint_rows.add(vec![], G(last.rows as f64));
        checkpoint_age.add(vec![], G(seconds_since(scrape.now_ms, last.written_ms)));
    }
    out.extend([written, failures, duration, size, checkpoint_rows, checkpoint_age]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Lag, PluginStatus};
    use weir_runtime::{PluginInfo, PluginKind};

    fn plugin(name: &str) -> PluginStatus {
        PluginStatus {
            info: PluginInfo {
                name: name.into(),
                version: "0.1.0".into(),
                description: String::new(),
                topics: vec!["orders".into()],
                event_types: vec![],
                kind: PluginKind::Handler { emits_to: vec!["alerts".into()] },
            },
            path: String::new(),
            component: "ab".into(),
            deploy: 1,
            state: PluginState::Paused,
            params: Default::default(),
            start: weir_core::event::StartAt::Earliest,
            events_ok: 5,
            events_failed: 1,
            instances_started: 1,
            recent_failures: vec![],
            rebuild: None,
            rebuild_error: None,
            on_error: Default::default(),
            stopped: None,
            dead_lettered: 1,
            dead_letters: 1,
            errors: [("trapped".to_string(), 1)].into(),
            batches: Histogram { counts: vec![0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], sum_seconds: 40.0 },
            memory_bytes: 65536,
            busy_seconds: 0.5,
            cpu_budget_used: 0.25,
        }
    }

    #[test]
    fn a_handler_s_work_is_exposed_per_partition_with_units_and_totals() {
        let status = Status {
            plugins: vec![plugin("alerter")],
            lag: vec![Lag {
                plugin: "alerter@0.1.0".into(),
                topic: "orders".into(),
                partition: 2,
                position: 6,
                end: 9,
                lag: 3,
                events: 6,
                produced: 4,
                lag_seconds: 1.5,
            }],
            metered: true,
            ..Status::default()
        };
        let text = render(Scrape { status, tables: vec![], sql: vec![], now_ms: 0 });
        for line in [
            r#"weir_plugin_events_total{plugin="alerter",topic="orders",partition="2"} 6"#,
            r#"weir_plugin_events_emitted_total{plugin="alerter",topic="orders",partition="2"} 4"#,
            r#"weir_plugin_lag_events{plugin="alerter",topic="orders",partition="2"} 3"#,
            r#"weir_plugin_lag_seconds{plugin="alerter",topic="orders",partition="2"} 1.5"#,
            r#"weir_partition_end_offset{topic="orders",partition="2"} 9"#,
            r#"weir_plugin_state{plugin="alerter",state="paused"} 1"#,
            r#"weir_plugin_errors_total{plugin="alerter",kind="trapped"} 1"#,
            r#"weir_plugin_batch_duration_seconds_bucket{le="0.001",plugin="alerter"} 2"#,
            r#"weir_plugin_batch_duration_seconds_bucket{le="+Inf",plugin="alerter"} 3"#,
            r#"weir_plugin_batch_duration_seconds_count{plugin="alerter"} 3"#,
            "# UNIT weir_plugin_memory_bytes bytes",
            "weir_checkpoints_total 0",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line || l.replace(".0", "") == line), "no line {line:?} in:\n{text}");
        }
        // No row changes for a handler, nothing for a table that does not exist.
        assert!(!text.contains("weir_plugin_row_changes_total{"), "{text}");
        assert!(!text.contains("weir_table_rows{"), "{text}");
    }

    #[test]
    fn without_metering_only_totals_are_exposed() {
        let status = Status {
            plugins: vec![plugin("alerter")],
            lag: vec![Lag {
                plugin: "alerter@0.1.0".into(),
                topic: "orders".into(),
                partition: 0,
                position: 1,
                end: 1,
                lag: 0,
                events: 0,
                produced: 0,
                lag_seconds: 0.0,
            }],
            metered: false,
            ..Status::default()
        };
        let text = render(Scrape { status, tables: vec![], sql: vec![], now_ms: 0 });
        assert!(text.contains(r#"weir_plugin_events_ok_total{plugin="alerter"} 5"#), "{text}");
        assert!(!text.contains("weir_plugin_events_total{"), "{text}");
        assert!(!text.contains("weir_plugin_batch_duration_seconds_count{"), "{text}");
    }
}
