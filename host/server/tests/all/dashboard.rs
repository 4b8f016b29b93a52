//! What operators watch (issue 15): `GET /metrics` parsed by the reference Prometheus parser,
//! `weir status --watch`, and the dashboard in a real headless Chromium driven through WebDriver
//! (`tests/dashboard/check.py`, with Selenium and Debian's chromium and chromium-driver, which
//! `test.sh` installs).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write as _;

use serde_json::Value;
use weir_host::sample::OrderStream;

use crate::support::{WeirProcess, clients_python, envelope_lines, repo, write_config};

/// Every metric family the README documents, as the parser names them (counters without
/// `_total`, info metrics without `_info`).
const DOCUMENTED: &[(&str, &str)] = &[
    ("weir_source_up", "gauge"),
    ("weir_source_events_read", "counter"),
    ("weir_emitted_pending", "gauge"),
    ("weir_start_time_seconds", "gauge"),
    ("weir_plugin", "info"),
    ("weir_plugin_state", "gauge"),
    ("weir_plugin_events_ok", "counter"),
    ("weir_plugin_events_failed", "counter"),
    ("weir_plugin_errors", "counter"),
    ("weir_plugin_dead_lettered", "counter"),
    ("weir_plugin_dead_letters_open", "gauge"),
    ("weir_plugin_batch_duration_seconds", "histogram"),
    ("weir_plugin_memory_bytes", "gauge"),
    ("weir_plugin_busy_seconds", "counter"),
    ("weir_plugin_cpu_budget_used_ratio", "gauge"),
    ("weir_plugin_instances_started", "counter"),
    ("weir_plugin_events", "counter"),
    ("weir_plugin_row_changes", "counter"),
    ("weir_plugin_events_emitted", "counter"),
    ("weir_plugin_position", "gauge"),
    ("weir_partition_end_offset", "gauge"),
    ("weir_plugin_lag_events", "gauge"),
    ("weir_plugin_lag_seconds", "gauge"),
    ("weir_rebuild_events_done", "gauge"),
    ("weir_rebuild_events_left", "gauge"),
    ("weir_rebuild_events_per_second", "gauge"),
    ("weir_table_rows", "gauge"),
    ("weir_table_bytes", "gauge"),
    ("weir_table_snapshot_age_seconds", "gauge"),
    ("weir_sql_queries", "counter"),
    ("weir_sql_query_duration_seconds", "histogram"),
    ("weir_sql_errors", "counter"),
    ("weir_checkpoints", "counter"),
    ("weir_checkpoint_failures", "counter"),
    ("weir_checkpoint_duration_seconds", "histogram"),
    ("weir_checkpoint_size_bytes", "gauge"),
    ("weir_checkpoint_rows", "gauge"),
    ("weir_checkpoint_age_seconds", "gauge"),
];

/// One scrape, as the parser read it.
struct Scrape {
    families: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// Sum of the samples named `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|(_, _, v)| v).sum()
    }

    /// How many samples are named `name` with labels including `labels`.
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.matching(name, labels).count()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a (String, BTreeMap<String, String>, f64)> + 'a {
        self.samples
            .iter()
            .filter(move |(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
    }
}

/// `GET /metrics`, checked to be OpenMetrics text by the reference parser (prometheus_client).
fn scrape(weir: &WeirProcess) -> Scrape {
    let (code, text) = weir.get("/metrics");
    assert_eq!(code, 200, "{text}");
    let mut parser = std::process::Command::new(clients_python())
        .arg(repo().join("host/server/tests/metrics/parse.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    parser.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = parser.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let families = parsed["families"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, kind)| (name.clone(), kind.as_str().unwrap().to_string()))
        .collect();
    let samples = parsed["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let labels =
                s[1].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().into())).collect();
            (s[0].as_str().unwrap().to_string(), labels, s[2].as_f64().unwrap())
        })
        .collect();
    Scrape { families, samples }
}

/// Scrapes until `done` holds of one (at most 20 s).
fn scrape_until(weir: &WeirProcess, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let started = std::time::Instant::now();
    loop {
        let scraped = scrape(weir);
        if done(&scraped) || started.elapsed() > std::time::Duration::from_secs(20) {
            return scraped;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// `events` topic events for the relay handler.
fn relay_events(n: usize, prefix: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let line = serde_json::json!({"type": "Ping", "key": format!("{prefix}-{}", i % 7), "data": {"i": i}});
        out.extend(line.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

fn psql(weir: &WeirProcess, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &weir.pg_port.unwrap().to_string(), "-U", "weir", "-At", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql (Debian's postgresql-client) must be installed; test.sh installs it");
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn metrics_are_openmetrics_and_move_as_events_flow() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("orders", ""), ("relay", "")], "");
    let weir = WeirProcess::start(&[OsStr::new("serve"), OsStr::new("--config"), config.as_os_str()]);

    let before = scrape(&weir);
    for (name, kind) in DOCUMENTED {
        assert_eq!(before.families.get(*name).map(String::as_str), Some(*kind), "family {name} ({kind})");
    }
    let undocumented: Vec<&String> =
        before.families.keys().filter(|name| !DOCUMENTED.iter().any(|(n, _)| n == name)).collect();
    assert!(undocumented.is_empty(), "families the README does not document: {undocumented:?}");
    assert_eq!(before.sum("weir_plugin_events_ok_total", &[("plugin", "orders")]), 0.0);
    assert_eq!(before.count("weir_plugin_info", &[("plugin", "relay"), ("kind", "handler")]), 1);
    assert_eq!(before.sum("weir_plugin_state", &[("plugin", "orders"), ("state", "running")]), 1.0);

    // 1,200 orders and one the projection refuses; 700 events for the relay.
    let orders = OrderStream::take_events(16, 40, 1_200);
    let (code, body) = weir.post("/v1/topics/orders/events", &envelope_lines(&orders));
    assert_eq!(code, 200, "{body}");
    let bad = br#"{"type": "OrderPlaced", "key": "bad", "data": {"nonsense": true}}"#;
    let (code, body) = weir.post("/v1/topics/orders/events", bad);
    assert_eq!(code, 200, "{body}");
    let (code, body) = weir.post("/v1/topics/events/events", &relay_events(700, "k"));
    assert_eq!(code, 200, "{body}");
    weir.wait_caught_up(1_201);
    // Queries over HTTP (one refused) and the Postgres wire.
    let rows: u64 = weir.sql_csv("SELECT count(*) AS n FROM orders").lines().nth(1).unwrap().parse().unwrap();
    let (code, _) = weir.request("POST", "/v1/sql", Some(br#"{"sql": "SELECT nope FROM nowhere"}"#), &[]);
    assert_eq!(code, 400);
    assert_eq!(psql(&weir, "SELECT count(*) FROM orders"), rows.to_string());
    // Status (what /metrics reads) is rewritten every second, where dead-letter topics end every
    // two; a checkpoint is written every 150 ms.
    let after = scrape_until(&weir, |s| {
        s.sum("weir_plugin_dead_letters_open", &[("plugin", "orders")]) == 1.0
            && s.sum("weir_sql_queries_total", &[("front_end", "postgres")]) >= 1.0
    });
    let orders_events = after.sum("weir_plugin_events_total", &[("plugin", "orders")]);
    assert_eq!(orders_events, 1_201.0, "orders processed every event once, the refused one too");
    assert_eq!(after.sum("weir_plugin_events_ok_total", &[("plugin", "orders")]), 1_200.0);
    assert_eq!(after.sum("weir_plugin_errors_total", &[("plugin", "orders"), ("kind", "refused")]), 1.0);
    assert_eq!(after.sum("weir_plugin_dead_lettered_total", &[("plugin", "orders")]), 1.0);
    assert_eq!(after.sum("weir_plugin_dead_letters_open", &[("plugin", "orders")]), 1.0);
    assert!(after.sum("weir_plugin_row_changes_total", &[("plugin", "orders")]) >= 1_200.0);
    assert_eq!(after.sum("weir_plugin_events_total", &[("plugin", "relay")]), 700.0);
    assert_eq!(after.sum("weir_plugin_events_emitted_total", &[("plugin", "relay")]), 700.0);
    assert_eq!(
        after.sum("weir_plugin_position", &[("plugin", "orders")]),
        after.sum("weir_partition_end_offset", &[("topic", "orders")])
    );
    assert_eq!(after.sum("weir_plugin_lag_events", &[]), 0.0);
    assert_eq!(after.sum("weir_table_rows", &[("plugin", "orders"), ("table", "orders")]), rows as f64);
    assert!(after.sum("weir_table_bytes", &[("table", "orders")]) > 0.0);
    assert!(after.sum("weir_plugin_batch_duration_seconds_count", &[("plugin", "orders")]) > 0.0);
    assert!(after.sum("weir_plugin_memory_bytes", &[("plugin", "orders")]) > 0.0);
    assert!(after.sum("weir_plugin_busy_seconds_total", &[("plugin", "relay")]) > 0.0);
    assert!(after.sum("weir_source_events_read_total", &[]) >= 1_901.0);
    assert_eq!(after.sum("weir_sql_queries_total", &[("front_end", "http")]), 2.0);
    assert_eq!(after.sum("weir_sql_errors_total", &[("front_end", "http"), ("kind", "sql")]), 1.0);
    assert_eq!(after.sum("weir_sql_query_duration_seconds_count", &[("front_end", "http")]), 2.0);
    assert!(after.sum("weir_sql_queries_total", &[("front_end", "postgres")]) >= 1.0);
    let checkpoints = after.sum("weir_checkpoints_total", &[]);
    assert!(checkpoints >= 1.0);
    assert_eq!(after.sum("weir_checkpoint_duration_seconds_count", &[]), checkpoints);
    assert!(after.sum("weir_checkpoint_size_bytes", &[]) > 0.0);

    // Paused, the relay falls behind by exactly what is produced, and its lag in seconds grows.
    weir.admin("POST", "/v1/plugins/relay/pause", None);
    let (code, body) = weir.post("/v1/topics/events/events", &relay_events(300, "late"));
    assert_eq!(code, 200, "{body}");
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    let paused = scrape_until(&weir, |s| s.sum("weir_plugin_lag_seconds", &[("plugin", "relay")]) >= 1.0);
    assert_eq!(paused.sum("weir_plugin_state", &[("plugin", "relay"), ("state", "paused")]), 1.0);
    assert_eq!(paused.sum("weir_plugin_lag_events", &[("plugin", "relay")]), 300.0);
    let behind = paused.sum("weir_plugin_lag_seconds", &[("plugin", "relay")]);
    assert!(behind >= 1.0, "the relay is {behind} s behind after seconds paused");
    assert_eq!(paused.sum("weir_plugin_events_total", &[("plugin", "relay")]), 700.0);

    // `weir status --watch`: the same figures, refreshed, with rates from the second screen on.
    weir.admin("POST", "/v1/plugins/relay/resume", None);
    let out = weir.cli(&["status", "--watch", "0.5", "--times", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches(" UTC ---").count(), 2, "two screens: {text}");
    for expected in ["orders@0.1.0", "relay@0.1.0", "ok/s", "p99 batch", "orders/0", "events/0", "orders.orders"] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    let second = text.rsplit(" UTC ---").next().unwrap();
    let relay = second.lines().find(|l| l.contains("relay@0.1.0") && l.contains("handler")).unwrap();
    let rate: f64 = relay.split('|').nth(4).unwrap().trim().parse().unwrap_or_else(|_| panic!("no rate in {relay}"));
    assert!(rate >= 0.0, "{relay}");
}

#[test]
fn metrics_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("relay", "")], "");
    let text = std::fs::read_to_string(&config).unwrap().replacen("[server]\n", "[server]\nmetrics = false\n", 1);
    std::fs::write(&config, text).unwrap();
    let weir = WeirProcess::start(&[OsStr::new("serve"), OsStr::new("--config"), config.as_os_str()]);
    let (code, body) = weir.get("/metrics");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("metrics = false"), "{body}");
    let (code, body) = weir.post("/v1/topics/events/events", &relay_events(50, "k"));
    assert_eq!(code, 200, "{body}");
    weir.wait_caught_up(50);
    let status = weir.status();
    assert_eq!(status["plugins"][0]["events_ok"], 50, "totals are still kept: {status:#}");
}

#[test]
fn the_dashboard_works_in_a_real_browser() {
    let python = clients_python();
    let data = tempfile::tempdir().unwrap();
    let weir = WeirProcess::start(&[
        OsStr::new("demo"),
        OsStr::new("--events"),
        OsStr::new("3000"),
        OsStr::new("--http"),
        OsStr::new("127.0.0.1:0"),
        OsStr::new("--pg"),
        OsStr::new("off"),
        OsStr::new("--flight"),
        OsStr::new("off"),
        OsStr::new("--data-dir"),
        data.path().join("demo").as_os_str(),
    ]);
    let events = data.path().join("more-orders.jsonl");
    let more = OrderStream::take_events(99, 10, 250);
    std::fs::write(&events, envelope_lines(&more)).unwrap();
    let produced = more.len();
    assert!(produced > 0);
    let out = std::process::Command::new(python)
        .arg(repo().join("host/server/tests/dashboard/check.py"))
        .arg(format!("http://{}/", weir.http))
        .arg(&weir.token)
        .arg(&events)
        .arg("orders,high-value-orders,order-saga,inventory-service,payment-service,saga-view")
        .arg("orders.orders,orders.customer_revenue,saga-view.sagas,saga-view.saga_events")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the dashboard check failed:\n{text}");
    assert!(text.contains(&format!("while {produced} events were produced")), "{text}");
}
