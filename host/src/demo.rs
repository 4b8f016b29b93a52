//! `weir demo`: build the example plugins, run a generated order stream through them into Arrow
//! read models, print SQL answers, then serve the API until Ctrl-C.
//!
//! Until the event-source work lands, the feed is in-process; the plugins, the runtime, the
//! sandbox, the read models and the SQL engine are the real ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::api::PluginStatus;
use crate::event::{Event, Position};
use crate::pipeline::Pipeline;
use crate::plugin::PluginKind;
use crate::query::{Catalog, QueryLimits, SqlEngine};

/// The example plugins' directory: `./plugins` when run from the repository root, else the one
/// this binary was built from.
pub fn plugins_dir() -> PathBuf {
    let here = Path::new("plugins");
    if here.join("orders").join("Cargo.toml").is_file() {
        return here.to_owned();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("plugins")
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

/// Print `rows` under `header` as an aligned table.
pub fn print_table(title: &str, header: &[&str], rows: &[Vec<String>]) {
    println!("\n{title}");
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!(" {c:<w$} ")).collect();
        println!("{}", padded.join("|").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    println!("{}", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("+"));
    for row in rows {
        line(row.clone());
    }
    println!("({} rows)", rows.len());
}

/// The questions the demo asks of the orders read model.
pub const DEMO_QUERIES: &[&str] = &[
    "SELECT status, count(*) AS orders, round(sum(amount), 2) AS amount FROM orders GROUP BY status ORDER BY status",
    "SELECT customer_id, round(revenue, 2) AS revenue, orders_paid FROM customer_revenue ORDER BY revenue DESC, customer_id LIMIT 5",
    "SELECT (SELECT round(sum(amount), 2) FROM orders WHERE status IN ('paid', 'shipped')) AS paid_order_amount, (SELECT round(sum(revenue), 2) FROM customer_revenue) AS revenue",
];

/// Run a query and print it with its answer.
fn print_query(runtime: &tokio::runtime::Runtime, engine: &SqlEngine, sql: &str) -> anyhow::Result<()> {
    let answer = runtime.block_on(engine.query(sql))?;
    println!("\n{sql};\n{}", crate::query::to_table(&answer)?);
    Ok(())
}

/// Options of `weir demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Events to generate.
    pub events: usize,
    /// Events per plugin call.
    pub batch_size: usize,
    /// Where the compiled-plugin cache lives.
    pub cache_dir: PathBuf,
    /// More plugins to run beside the examples: crate directories (built first) or `.wasm` files.
    pub extra_plugins: Vec<PathBuf>,
}

/// Build and load the example plugins, run the feed into read models, print SQL answers. Returns
/// the plugins' statuses and the SQL engine over the read models, for the API.
pub fn run(options: &DemoOptions, runtime: &tokio::runtime::Runtime) -> anyhow::Result<(Vec<PluginStatus>, Arc<SqlEngine>)> {
    let dir = plugins_dir();
    println!("weir demo: building the example plugins in {} for wasm32-wasip2 ...", dir.display());
    let orders_wasm = crate::build::build_plugin(&dir.join("orders"))?;
    let alerts_wasm = crate::build::build_plugin(&dir.join("high-value-orders"))?;

    let plugin_runtime = crate::plugin::PluginRuntime::new(crate::plugin::Limits::default(), Some(&options.cache_dir))?;
    let started = Instant::now();
    let mut plugins = vec![
        plugin_runtime.load(&orders_wasm, BTreeMap::new())?,
        plugin_runtime.load(&alerts_wasm, BTreeMap::from([("threshold".to_string(), "2500".to_string())]))?,
    ];
    for path in &options.extra_plugins {
        let wasm = if path.is_dir() { crate::build::build_plugin(path)? } else { path.clone() };
        plugins.push(plugin_runtime.load(&wasm, BTreeMap::new())?);
    }
    println!("loaded {} plugins in {:.0?}:", plugins.len(), started.elapsed());
    for p in &plugins {
        let what = match &p.info().kind {
            PluginKind::Projection { tables } => {
                format!("projection writing {}", tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", "))
            }
            PluginKind::Handler { emits_to } => format!("handler emitting to {}", emits_to.join(", ")),
        };
        println!("  {} ({what}) from {}", p.info().label(), p.path().display());
    }

    let catalog = Arc::new(Catalog::default());
    let engine = Arc::new(SqlEngine::new(catalog.clone(), QueryLimits::default())?);
    let mut pipeline = Pipeline::new(catalog);
    for plugin in plugins {
        pipeline.add(plugin)?;
    }

    let mut events = crate::sample::OrderStream::take_events(42, 1_000, options.events);
    events.extend(bad_events(events.len() as u64));
    let started = Instant::now();
    let mut emitted = Vec::new();
    let mut failures = Vec::new();
    for batch in events.chunks(options.batch_size.max(1)) {
        let outcome = pipeline.process(batch);
        emitted.extend(outcome.emitted);
        failures.extend(outcome.failures);
    }
    pipeline.publish()?;
    let elapsed = started.elapsed();
    println!(
        "\nfed {} events through the plugins into Arrow read models in {:.2?} ({:.0} events/s)",
        events.len(),
        elapsed,
        events.len() as f64 / elapsed.as_secs_f64()
    );
    for status in pipeline.statuses() {
        println!("  {}: {} ok, {} failed", status.info.label(), status.events_ok, status.events_failed);
    }

    for sql in DEMO_QUERIES {
        print_query(runtime, &engine, sql)?;
    }
    for plugin in pipeline.plugins().skip(2) {
        if let PluginKind::Projection { tables } = &plugin.info().kind {
            for table in tables {
                let name = format!("{}.{}", plugin.info().name, table.name);
                print_query(runtime, &engine, &format!("SELECT count(*) AS rows FROM {name}"))?;
                print_query(runtime, &engine, &format!("SELECT * FROM {name} LIMIT 3"))?;
            }
        }
    }

    let flagged: Vec<Vec<String>> = emitted
        .iter()
        .take(3)
        .map(|e| vec![e.topic.clone(), e.event_type.clone(), String::from_utf8_lossy(&e.payload).into_owned()])
        .collect();
    print_table(
        &format!("high-value-orders emitted {} events; the first three:", emitted.len()),
        &["topic", "type", "payload"],
        &flagged,
    );

    println!("\nrefused events ({}), each with plugin, position and reason:", failures.len());
    for e in failures.iter().take(5) {
        println!("  {e}");
    }
    Ok((pipeline.statuses(), engine))
}
