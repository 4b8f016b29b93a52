//! `weir demo`: build the example plugins, run a generated order stream through them into Arrow
//! read models, print SQL answers, then serve the API until Ctrl-C.
//!
//! Everything is the real path: the generated events are written to the embedded log of a fresh
//! data directory, and the host's ingest loop reads them through the plugins into read models.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use std::time::Duration;

use crate::config::{Config, PluginConfig};
use crate::server::Host;
use weir_core::event::{Event, Position};
use weir_runtime::PluginKind;
use weir_sql::query::SqlEngine;

/// The example plugins' directory: `./plugins` when run from the repository root, else the one
/// this binary was built from.
pub fn plugins_dir() -> PathBuf {
    let here = Path::new("plugins");
    if here.join("orders").join("Cargo.toml").is_file() {
        return here.to_owned();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join("plugins")
}

/// Three events the orders projection must refuse, appended after the generated stream to show
/// what an error looks like.
pub fn bad_events(next_offset: u64) -> Vec<Event> {
    let event = |i: u64, event_type: &str, payload: &str| Event {
        id: format!("bad-{i}"),
        event_type: event_type.to_string(),
        key: Some("o-999999999".into()),
        payload: payload.as_bytes().to_vec(),
        content_type: "application/json".into(),
        time_us: 0,
        position: Position { topic: crate::sample::ORDERS_TOPIC.into(), partition: 0, offset: next_offset + i },
        ..Event::default()
    };
    vec![
        event(0, "OrderPaid", r#"{"order_id":"o-999999999"}"#),
        event(1, "OrderPlaced", r#"{"order_id":"o-1","customer_id":42"#),
        event(2, "OrderPlaced", r#"{"order_id":"o-000000001","customer_id":"c-1","amount":"12"}"#),
    ]
}

/// Print `rows` under `header` as an aligned table. A closed stdout (`| head`) is not an error.
pub fn print_table(title: &str, header: &[&str], rows: &[Vec<String>]) {
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(table_text(title, header, rows).as_bytes());
}

/// What [`print_table`] prints.
pub fn table_text(title: &str, header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!(" {c:<w$} ")).collect();
        padded.join("|").trim_end().to_string()
    };
    let mut lines = vec![String::new(), title.to_string()];
    lines.push(line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>()));
    lines.push(widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("+"));
    lines.extend(rows.iter().map(|row| line(row)));
    lines.push(format!("({} rows)\n", rows.len()));
    lines.join("\n")
}

/// The questions the demo asks of the orders read model.
pub const DEMO_QUERIES: &[&str] = &[
    "SELECT status, count(*) AS orders, round(sum(amount), 2) AS amount FROM orders GROUP BY status ORDER BY status",
    "SELECT customer_id, round(revenue, 2) AS revenue, orders_paid FROM customer_revenue ORDER BY revenue DESC, customer_id LIMIT 5",
    "SELECT (SELECT round(sum(amount), 2) FROM orders WHERE status IN ('paid', 'shipped')) AS paid_order_amount, (SELECT round(sum(revenue), 2) FROM customer_revenue) AS revenue",
];

/// The order saga's plugins in `plugins/`, with the demo's parameters: a saga for every 20th
/// order, steps that time out after 2 s.
const SAGA_PLUGINS: &[(&str, &[(&str, &str)])] = &[
    ("order-saga", &[("every", "20"), ("timeout_ms", "2000")]),
    ("inventory-service", &[]),
    ("payment-service", &[]),
    ("saga-view", &[]),
];

/// What the demo asks about the sagas.
pub const SAGA_QUERIES: &[&str] = &[
    "SELECT status, count(*) AS sagas, sum(charges) AS charges, sum(refunds) AS refunds FROM sagas GROUP BY status ORDER BY status",
    "SELECT order_id, step, reason FROM sagas WHERE status <> 'confirmed' ORDER BY order_id LIMIT 5",
    "SELECT event_type, topic, causation_id FROM saga_events WHERE correlation_id = (SELECT min(correlation_id) FROM sagas WHERE reason LIKE 'payment did not answer%') ORDER BY seq",
];

/// Run a query and print it with its answer.
fn print_query(runtime: &tokio::runtime::Runtime, engine: &SqlEngine, sql: &str) -> anyhow::Result<()> {
    let answer = runtime.block_on(engine.query(sql))?;
    println!("\n{sql};\n{}", weir_sql::query::to_table(&answer)?);
    Ok(())
}

/// Options of `weir demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Events to generate.
    pub events: usize,
    /// Events per plugin call.
    pub batch_size: usize,
    /// The demo's data directory (emptied first): embedded log, checkpoints, compiled plugins.
    pub data_dir: PathBuf,
    /// HTTP address the host will serve on (recorded in its config).
    pub http: std::net::SocketAddr,
    /// Postgres wire address, if any.
    pub pg: Option<std::net::SocketAddr>,
    /// Arrow Flight SQL address, if any.
    pub flight: Option<std::net::SocketAddr>,
    /// More plugins to run beside the examples: crate directories (built first) or `.wasm` files.
    pub extra_plugins: Vec<PathBuf>,
}

/// Build the example plugins, start a host on a fresh data directory, write the generated order
/// stream to its embedded log, wait until the read models reflect all of it, and print SQL
/// answers. Returns the running host, for the API.
pub fn run(options: &DemoOptions, runtime: &tokio::runtime::Runtime) -> anyhow::Result<Host> {
    let dir = plugins_dir();
    println!("weir demo: building the example plugins in {} for wasm32-wasip2 ...", dir.display());
    let orders_wasm = crate::build::build_plugin(&dir.join("orders"))?;
    let alerts_wasm = crate::build::build_plugin(&dir.join("high-value-orders"))?;
    let mut saga_wasm = Vec::new();
    for (name, params) in SAGA_PLUGINS {
        let params = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        saga_wasm.push((crate::build::build_plugin(&dir.join(name))?, params));
    }

    if options.data_dir.exists() {
        // Never empty a directory a running host holds.
        crate::server::ensure_unlocked(&options.data_dir)?;
        std::fs::remove_dir_all(&options.data_dir)
            .map_err(|e| anyhow::anyhow!("emptying the demo's data directory {}: {e}", options.data_dir.display()))?;
    }
    let mut config = Config::default();
    config.server.data_dir = options.data_dir.clone();
    config.server.http = options.http;
    config.server.pg = options.pg;
    config.server.flight = options.flight;
    config.server.batch_size = options.batch_size;
    config.server.tick_ms = 250;
    config.plugins.push(PluginConfig { path: orders_wasm, params: BTreeMap::new(), ..Default::default() });
    config.plugins.push(PluginConfig {
        path: alerts_wasm,
        params: BTreeMap::from([("threshold".to_string(), "2500".to_string())]),
        ..Default::default()
    });
    for (path, params) in saga_wasm {
        config.plugins.push(PluginConfig { path, params, ..Default::default() });
    }
    for path in &options.extra_plugins {
        config.plugins.push(PluginConfig { path: path.clone(), params: BTreeMap::new(), ..Default::default() });
    }

    let started = Instant::now();
    let host = Host::start(&config)?;
    let statuses = host.status.read().map(|s| s.plugins.clone()).unwrap_or_default();
    println!(
        "loaded {} plugins in {:.0?}; data directory {}:",
        statuses.len(),
        started.elapsed(),
        options.data_dir.display()
    );
    for p in &statuses {
        let what = match &p.info.kind {
            PluginKind::Projection { tables } => {
                format!("projection writing {}", tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", "))
            }
            PluginKind::Handler { emits_to } => {
                format!("handler emitting to {}", emits_to.join(", "))
            }
        };
        println!("  {} ({what}) from {}", p.info.label(), p.path);
    }

    let mut events = crate::sample::OrderStream::take_events(42, 1_000, options.events);
    events.extend(bad_events(0));
    let total = events.len();
    let started = Instant::now();
    for chunk in events.chunks(10_000) {
        host.sink.append(crate::sample::ORDERS_TOPIC, chunk.to_vec())?;
    }
    let written = started.elapsed();
    if !host.wait_caught_up(total as u64, Duration::from_secs(600)) {
        anyhow::bail!("the plugins did not catch up with the log within 10 minutes");
    }
    // Sagas waiting on a service that never answers end when their timers fire.
    let waiting = "SELECT count(*) AS running FROM sagas WHERE status = 'running'";
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let answer = runtime.block_on(host.sql.query(waiting))?;
        if weir_sql::query::to_csv(&answer)? == b"running\n0\n" {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    host.wait_caught_up(total as u64, Duration::from_secs(60));
    let elapsed = started.elapsed();
    println!(
        "\nwrote {total} events to the embedded log (topic {}) in {written:.2?}; the plugins applied them all to Arrow read models {elapsed:.2?} after the first write ({:.0} events/s end to end)",
        crate::sample::ORDERS_TOPIC,
        total as f64 / elapsed.as_secs_f64()
    );
    if cfg!(debug_assertions) {
        println!(
            "  (a debug build of the host, as `cargo run` makes it: `cargo run --release -p weir-host -- demo` shows weir's real speed, and BENCHMARKS.md has the measured figures)"
        );
    }
    let status = host.status.read().map(|s| s.clone()).unwrap_or_default();
    for plugin in &status.plugins {
        println!("  {}: {} ok, {} failed", plugin.info.label(), plugin.events_ok, plugin.events_failed);
    }

    for sql in DEMO_QUERIES {
        print_query(runtime, &host.sql, sql)?;
    }
    println!("\nthe order saga (plugins order-saga, inventory-service, payment-service, saga-view; every 20th order):");
    for sql in SAGA_QUERIES {
        print_query(runtime, &host.sql, sql)?;
    }
    for plugin in status.plugins.iter().skip(2 + SAGA_PLUGINS.len()) {
        if let PluginKind::Projection { tables } = &plugin.info.kind {
            for table in tables {
                let name = format!("{}.{}", plugin.info.name, table.name);
                print_query(runtime, &host.sql, &format!("SELECT count(*) AS rows FROM {name}"))?;
                print_query(runtime, &host.sql, &format!("SELECT * FROM {name} LIMIT 3"))?;
            }
        }
    }

    if let Some(log) = &host.log {
        let mut alerts = Vec::new();
        let mut count = 0;
        for range in log.ranges("order-alerts").unwrap_or_default() {
            count += range.end - range.start;
            if alerts.len() < 3 {
                alerts.extend(
                    log.read("order-alerts", range.partition, range.start, 4096)?.into_iter().take(3 - alerts.len()),
                );
            }
        }
        let flagged: Vec<Vec<String>> = alerts
            .iter()
            .map(|e| {
                vec![e.position.to_string(), e.event_type.clone(), String::from_utf8_lossy(&e.payload).into_owned()]
            })
            .collect();
        print_table(
            &format!("high-value-orders emitted {count} events to topic order-alerts; the first three:"),
            &["position", "type", "payload"],
            &flagged,
        );
    }

    println!("\nrefused events, each with plugin, position and reason:");
    for plugin in &status.plugins {
        for failure in plugin.recent_failures.iter().take(5) {
            println!("  {failure}");
        }
    }
    Ok(host)
}
