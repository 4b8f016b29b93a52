//! `weir demo`: build the example plugins, run a generated order stream through them with the
//! real runtime, print what they produced, then serve the API until Ctrl-C.
//!
//! Until the read-model and source work lands, the rows are kept in a plain in-memory map here
//! and the event feed is in-process; the plugins, the runtime and the sandbox are the real ones.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::api::PluginStatus;
use crate::event::{Event, OutgoingEvent, Position};
use crate::plugin::{EventError, Plugin, PluginKind};
use crate::row::{RowChange, TableSchema, Value};

/// The example plugins' directory: `./plugins` when run from the repository root, else the one
/// this binary was built from.
pub fn plugins_dir() -> PathBuf {
    let here = Path::new("plugins");
    if here.join("orders").join("Cargo.toml").is_file() {
        return here.to_owned();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("plugins")
}

/// What running a feed through the plugins produced.
#[derive(Debug, Default)]
pub struct FeedReport {
    /// Rows per table, by primary key.
    pub tables: HashMap<String, Table>,
    /// Events emitted by handlers.
    pub emitted: Vec<OutgoingEvent>,
    /// Events that failed, with why.
    pub errors: Vec<EventError>,
    /// Per plugin: (events ok, events failed).
    pub counts: BTreeMap<String, (u64, u64)>,
}

/// An in-memory table: rows by the display form of their key.
#[derive(Debug, Clone)]
pub struct Table {
    /// The declared schema.
    pub schema: TableSchema,
    /// Rows by key.
    pub rows: BTreeMap<String, Vec<Value>>,
}

impl Table {
    fn new(schema: TableSchema) -> Self {
        Table { schema, rows: BTreeMap::new() }
    }

    fn key_of(values: &[Value]) -> String {
        values.iter().map(ToString::to_string).collect::<Vec<_>>().join("|")
    }

    fn apply(&mut self, change: RowChange) {
        match change {
            RowChange::Upsert { row, .. } => {
                let key: Vec<Value> = self
                    .schema
                    .primary_key
                    .iter()
                    .filter_map(|k| self.schema.columns.iter().position(|c| &c.name == k))
                    .map(|i| row[i].clone())
                    .collect();
                self.rows.insert(Self::key_of(&key), row);
            }
            RowChange::Delete { key, .. } => {
                self.rows.remove(&Self::key_of(&key));
            }
        }
    }

    /// The index of a column.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.schema.columns.iter().position(|c| c.name == name)
    }
}

/// Run `events` through every plugin that wants them, `batch_size` at a time.
pub fn run_feed(plugins: &mut [Plugin], events: &[Event], batch_size: usize) -> FeedReport {
    let mut report = FeedReport::default();
    for plugin in plugins.iter() {
        if let PluginKind::Projection { tables } = &plugin.info().kind {
            for schema in tables {
                report.tables.insert(schema.name.clone(), Table::new(schema.clone()));
            }
        }
    }
    for chunk in events.chunks(batch_size.max(1)) {
        for plugin in plugins.iter_mut() {
            let wanted: Vec<Event> = chunk.iter().filter(|e| plugin.info().wants(e)).cloned().collect();
            let label = plugin.info().label();
            let (mut ok, mut failed) = (0, 0);
            match plugin.info().kind {
                PluginKind::Projection { .. } => {
                    for outcome in plugin.apply(&wanted) {
                        match outcome {
                            Ok(changes) => {
                                ok += 1;
                                for change in changes {
                                    if let Some(table) = report.tables.get_mut(change.table()) {
                                        table.apply(change);
                                    }
                                }
                            }
                            Err(e) => {
                                failed += 1;
                                report.errors.push(e);
                            }
                        }
                    }
                }
                PluginKind::Handler { .. } => {
                    for outcome in plugin.handle(&wanted) {
                        match outcome {
                            Ok(emitted) => {
                                ok += 1;
                                report.emitted.extend(emitted);
                            }
                            Err(e) => {
                                failed += 1;
                                report.errors.push(e);
                            }
                        }
                    }
                }
            }
            let counts = report.counts.entry(label).or_default();
            counts.0 += ok;
            counts.1 += failed;
        }
    }
    report
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

/// Print the demo's answers from the in-memory tables.
pub fn print_answers(report: &FeedReport) {
    if let Some(orders) = report.tables.get("orders")
        && let (Some(status), Some(amount)) = (orders.column("status"), orders.column("amount"))
    {
        let mut by_status: BTreeMap<String, (u64, f64)> = BTreeMap::new();
        for row in orders.rows.values() {
            if let (Value::String(s), Value::Float64(a)) = (&row[status], &row[amount]) {
                let e = by_status.entry(s.clone()).or_default();
                e.0 += 1;
                e.1 += a;
            }
        }
        let rows: Vec<Vec<String>> =
            by_status.into_iter().map(|(s, (n, sum))| vec![s, n.to_string(), format!("{sum:.2}")]).collect();
        print_table(
            "SELECT status, count(*) AS orders, sum(amount) AS amount FROM orders GROUP BY status ORDER BY status;",
            &["status", "orders", "amount"],
            &rows,
        );
    }
    if let Some(revenue) = report.tables.get("customer_revenue")
        && let (Some(id), Some(rev), Some(paid)) =
            (revenue.column("customer_id"), revenue.column("revenue"), revenue.column("orders_paid"))
    {
        let mut rows: Vec<(f64, Vec<String>)> = revenue
            .rows
            .values()
            .filter_map(|row| match (&row[id], &row[rev], &row[paid]) {
                (Value::String(c), Value::Float64(r), Value::Int64(p)) => {
                    Some((*r, vec![c.clone(), format!("{r:.2}"), p.to_string()]))
                }
                _ => None,
            })
            .collect();
        rows.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1[0].cmp(&b.1[0])));
        let top: Vec<Vec<String>> = rows.into_iter().take(5).map(|(_, r)| r).collect();
        print_table(
            "SELECT customer_id, revenue, orders_paid FROM customer_revenue ORDER BY revenue DESC LIMIT 5;",
            &["customer_id", "revenue", "orders_paid"],
            &top,
        );
    }
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

/// Build and load the example plugins, run the feed, print the results. Returns the plugins'
/// statuses for the API.
pub fn run(options: &DemoOptions) -> anyhow::Result<Vec<PluginStatus>> {
    let dir = plugins_dir();
    println!("weir demo: building the example plugins in {} for wasm32-wasip2 ...", dir.display());
    let orders_wasm = crate::build::build_plugin(&dir.join("orders"))?;
    let alerts_wasm = crate::build::build_plugin(&dir.join("high-value-orders"))?;

    let runtime = crate::plugin::PluginRuntime::new(crate::plugin::Limits::default(), Some(&options.cache_dir))?;
    let started = Instant::now();
    let mut plugins = vec![
        runtime.load(&orders_wasm, BTreeMap::new())?,
        runtime.load(&alerts_wasm, BTreeMap::from([("threshold".to_string(), "2500".to_string())]))?,
    ];
    for path in &options.extra_plugins {
        let wasm = if path.is_dir() { crate::build::build_plugin(path)? } else { path.clone() };
        plugins.push(runtime.load(&wasm, BTreeMap::new())?);
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

    let mut events = crate::sample::OrderStream::take_events(42, 1_000, options.events);
    events.extend(bad_events(events.len() as u64));
    let started = Instant::now();
    let report = run_feed(&mut plugins, &events, options.batch_size);
    let elapsed = started.elapsed();
    println!(
        "\nfed {} events through both plugins in {:.2?} ({:.0} events/s per plugin pass)",
        events.len(),
        elapsed,
        events.len() as f64 / elapsed.as_secs_f64()
    );
    for (label, (ok, failed)) in &report.counts {
        println!("  {label}: {ok} ok, {failed} failed");
    }

    print_answers(&report);
    for plugin in &plugins[2..] {
        if let PluginKind::Projection { tables } = &plugin.info().kind {
            for schema in tables {
                let Some(table) = report.tables.get(&schema.name) else { continue };
                let header: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
                let rows: Vec<Vec<String>> =
                    table.rows.values().take(3).map(|r| r.iter().map(ToString::to_string).collect()).collect();
                print_table(
                    &format!("{}: table {} has {} rows; the first three:", plugin.info().label(), schema.name, table.rows.len()),
                    &header,
                    &rows,
                );
            }
        }
    }

    let flagged: Vec<Vec<String>> = report
        .emitted
        .iter()
        .take(3)
        .map(|e| vec![e.topic.clone(), e.event_type.clone(), String::from_utf8_lossy(&e.payload).into_owned()])
        .collect();
    print_table(
        &format!("high-value-orders emitted {} events; the first three:", report.emitted.len()),
        &["topic", "type", "payload"],
        &flagged,
    );

    println!("\nrefused events ({}), each with plugin, position and reason:", report.errors.len());
    for e in report.errors.iter().take(5) {
        println!("  {e}");
    }

    Ok(plugins
        .iter()
        .map(|p| {
            let (ok, failed) = report.counts.get(&p.info().label()).copied().unwrap_or_default();
            PluginStatus {
                info: p.info().clone(),
                path: p.path().display().to_string(),
                events_ok: ok,
                events_failed: failed,
                instances_started: p.instances_started(),
            }
        })
        .collect())
}
