//! `weir-bench`: the project's benchmark. Every figure in BENCHMARKS.md comes from one run of
//! this binary, which prints a table and writes the results as JSON with a note of the machine.
//!
//! Each scenario is repeated; a timing is reported as the median with the min–max spread, and a
//! comparison as a ratio of medians measured in the same run. `--quick` (small N, one repeat)
//! keeps the benchmark from rotting in CI; its figures mean nothing.
//!
//! Scenarios so far:
//! - `wasm_vs_native`: the orders projection as a wasm component through the real runtime, and
//!   the same Rust logic compiled natively (weir-sdk's harness), over the same generated events.
//! - `readmodel`: upserts into an orders-shaped read-model table of N rows (inserts, then updates
//!   of existing keys), publishing a snapshot every 100k changes; memory of the table against the
//!   raw Arrow size of its rows; SQL latency (point lookup, group-by) over the published table.
//! - `lifecycle`: a running host's plugin lifecycle over its HTTP admin API: the catch-up rate of
//!   a projection deployed over N events of history, the rate of a side-by-side rebuild over
//!   them, and the pause in processing of hot swaps under load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use weir_core::row::RowChanges;

use clap::Parser;
use weir_host::sample::OrderStream;
use weir_runtime::{Limits, PluginRuntime};

// The same allocator as the `weir` binary, so the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run weir's benchmarks.
#[derive(Debug, Parser)]
#[command(name = "weir-bench", version)]
struct Args {
    /// Small N and one repeat: checks the benchmark runs, measures nothing.
    #[arg(long)]
    quick: bool,
    /// Events per scenario (default 1,000,000; 20,000 with --quick).
    #[arg(long)]
    events: Option<usize>,
    /// Repeats per measurement (default 5; 1 with --quick).
    #[arg(long)]
    repeats: Option<usize>,
    /// Events per plugin call.
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results.json")]
    out: PathBuf,
    /// Run only these scenarios (comma-separated: wasm_vs_native, kafka, readmodel, results, log,
    /// e2e, sql_ingest, plugins, lifecycle, handler, metrics, load; load runs only when named, or
    /// in --quick).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// How long `--only load` runs.
    #[arg(long, default_value_t = 300)]
    load_seconds: u64,
    /// Internal: build the readmodel scenario's table of this many rows in this process and print
    /// its peak memory growth (the readmodel scenario runs it as a child).
    #[arg(long, hide = true)]
    memory_probe: Option<u64>,
}

/// Median and spread of repeated measurements of a rate.
#[derive(Debug, Clone, serde::Serialize)]
struct Rate {
    median: f64,
    min: f64,
    max: f64,
    samples: Vec<f64>,
}

impl Rate {
    fn of(mut samples: Vec<f64>) -> Rate {
        samples.sort_by(f64::total_cmp);
        let median = samples[samples.len() / 2];
        Rate { median, min: samples[0], max: samples[samples.len() - 1], samples }
    }

    fn show(&self) -> String {
        format!("{:>12.0}  ({:.0}–{:.0})", self.median, self.min, self.max)
    }
}

#[derive(Debug, serde::Serialize)]
struct Comparison {
    scenario: &'static str,
    /// What was measured (which plugin).
    what: String,
    unit: &'static str,
    events: usize,
    batch: usize,
    subject: Rate,
    baseline: Rate,
    /// subject median / baseline median.
    ratio: f64,
    goal: f64,
}

/// A single measured quantity (not a comparison).
#[derive(Debug, serde::Serialize)]
struct Figure {
    scenario: &'static str,
    metric: String,
    unit: &'static str,
    median: f64,
    low: f64,
    high: f64,
    /// What `low` and `high` are: min/max over repeats, or p50/p99 over queries.
    spread: &'static str,
    goal: &'static str,
}

#[derive(Debug, serde::Serialize)]
struct Machine {
    cores: usize,
    cpu: String,
    os: String,
    profile: &'static str,
}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu,
        os: std::env::consts::OS.into(),
        profile: if cfg!(debug_assertions) { "debug" } else { "release" },
    }
}

fn to_sdk_event(e: &weir_core::event::Event) -> weir_sdk::Event {
    weir_sdk::Event {
        id: e.id.clone(),
        event_type: e.event_type.clone(),
        key: e.key.clone(),
        payload: e.payload.clone(),
        content_type: e.content_type.clone(),
        time: weir_sdk::Timestamp(e.time_us),
        headers: e.headers.clone(),
        correlation_id: e.correlation_id.clone(),
        causation_id: e.causation_id.clone(),
        position: weir_sdk::Position {
            topic: e.position.topic.clone(),
            partition: e.position.partition,
            offset: e.position.offset,
        },
    }
}

/// A projection, wasm through the runtime vs the same crate compiled natively (driven by
/// weir-sdk's harness, the code path the wasm export runs), over the same events.
fn wasm_vs_native<P: weir_sdk::Projection>(
    plugin: &str,
    host_events: &[weir_core::event::Event],
    repeats: usize,
    batch: usize,
) -> anyhow::Result<Comparison> {
    let wasm = weir_host::build::build_plugin(&weir_host::demo::plugins_dir().join(plugin))?;
    let runtime = PluginRuntime::new(Limits::default(), None)?;
    let events = host_events.len();
    let sdk_events: Vec<weir_sdk::Event> = host_events.iter().map(to_sdk_event).collect();
    let mean_payload = host_events.iter().map(|e| e.payload.len()).sum::<usize>() / events.max(1);
    eprintln!("wasm_vs_native ({plugin}): {events} events, mean payload {mean_payload} bytes, batches of {batch}");

    let (mut wasm_rates, mut native_rates) = (Vec::new(), Vec::new());
    for repeat in 0..repeats {
        // Fresh state for each run; loading is not timed.
        let mut plugin = runtime.load(&wasm, BTreeMap::new())?;
        let started = Instant::now();
        let mut changes = 0usize;
        for chunk in host_events.chunks(batch) {
            for outcome in plugin.apply(chunk) {
                changes += outcome.map_or(0, |c| c.len());
            }
        }
        let wasm_rate = events as f64 / started.elapsed().as_secs_f64();

        let mut harness = weir_sdk::testing::ProjectionHarness::<P>::new();
        let started = Instant::now();
        let mut native_changes = 0usize;
        for chunk in sdk_events.chunks(batch) {
            for outcome in harness.apply(chunk.iter().cloned()) {
                native_changes += outcome.map_or(0, |c| c.len());
            }
        }
        let native_rate = events as f64 / started.elapsed().as_secs_f64();
        anyhow::ensure!(changes == native_changes, "wasm made {changes} row changes, native {native_changes}");
        eprintln!("  repeat {}: wasm {wasm_rate:.0} events/s, native {native_rate:.0} events/s", repeat + 1);
        wasm_rates.push(wasm_rate);
        native_rates.push(native_rate);
    }
    let (subject, baseline) = (Rate::of(wasm_rates), Rate::of(native_rates));
    Ok(Comparison {
        scenario: "wasm_vs_native",
        what: format!("{plugin} projection"),
        unit: "events/s",
        events,
        batch,
        ratio: subject.median / baseline.median,
        subject,
        baseline,
        goal: 0.8,
    })
}

fn orders_schema() -> weir_core::row::TableSchema {
    use weir_core::row::{Column, ColumnType, TableSchema};
    let column = |name: &str, kind, nullable| Column { name: name.into(), kind, nullable };
    TableSchema {
        name: "orders".into(),
        description: String::new(),
        columns: vec![
            column("order_id", ColumnType::String, false),
            column("customer_id", ColumnType::String, false),
            column("status", ColumnType::String, false),
            column("amount", ColumnType::Float64, false),
            column("placed_at", ColumnType::Timestamp, false),
            column("shipped_at", ColumnType::Timestamp, true),
        ],
        primary_key: vec!["order_id".into()],
    }
}

fn order_row(i: u64, round: u64) -> Vec<weir_core::row::Value> {
    use weir_core::row::Value;
    let status = ["placed", "paid", "shipped", "cancelled"][((i + round) % 4) as usize];
    vec![
        Value::String(format!("o-{i:09}")),
        Value::String(format!("c-{:06}", i % 10_000)),
        Value::String(status.into()),
        Value::Float64((i % 100_000) as f64 / 100.0 + round as f64),
        Value::Timestamp(1_767_225_600_000_000 + i as i64),
        if round > 0 { Value::Timestamp(1_767_225_600_000_000 + (i + round) as i64) } else { Value::Null },
    ]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A field of `/proc/self/status` in kB (`VmRSS`, `VmHWM`), where there is one.
fn proc_status_kb(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// Reset the process's peak resident memory to its current value (Linux `clear_refs`).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// An orders-shaped read model of `rows` rows: inserted, then every row updated in scattered
/// order, with a snapshot every 100k changes. Returns it with the insert and update rates.
fn build_orders_model(rows: u64) -> anyhow::Result<(weir_sql::readmodel::ReadModel, f64, f64)> {
    let schema = [orders_schema()];
    let mut model = weir_sql::readmodel::ReadModel::new("bench", &schema);
    let mut rates = [0.0; 2];
    for round in 0..2 {
        let started = Instant::now();
        for i in 0..rows {
            // Updates touch keys in a scattered order, as real traffic does.
            let key = if round == 0 { i } else { (i * 7_919) % rows };
            let change = weir_core::row::RowChange::Upsert { table: "orders".into(), row: order_row(key, round) };
            model.apply(RowChanges::check(&schema, vec![change]).map_err(anyhow::Error::msg)?)?;
            if i % 100_000 == 99_999 {
                model.snapshot()?;
            }
        }
        model.snapshot()?;
        rates[round as usize] = rows as f64 / started.elapsed().as_secs_f64();
    }
    Ok((model, rates[0], rates[1]))
}

/// `weir-bench --memory-probe ROWS`: build the table in this fresh process and print how far its
/// peak resident memory (`VmHWM`) rose above the resident memory before, in bytes.
fn memory_probe(rows: u64) -> anyhow::Result<()> {
    let before = proc_status_kb("VmRSS").ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/self/status"))?;
    let model = build_orders_model(rows)?;
    let peak = proc_status_kb("VmHWM").ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/self/status"))?;
    drop(model);
    println!("{}", peak.saturating_sub(before) * 1024);
    Ok(())
}

/// Run [`memory_probe`] in a child process; `None` where `/proc` has no such figures.
fn memory_probe_in_child(rows: u64) -> anyhow::Result<Option<u64>> {
    let output = std::process::Command::new(std::env::current_exe()?)
        .args(["--memory-probe", &rows.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !output.status.success() {
        eprintln!("readmodel: the memory probe failed ({}); peak RSS not measured", output.status);
        return Ok(None);
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().parse().ok())
}

/// Upserts into a read-model table, its memory, and SQL latency over it.
fn readmodel(rows: u64, repeats: usize) -> anyhow::Result<Vec<Figure>> {
    use std::sync::Arc;
    use weir_sql::query::{Catalog, QueryLimits, SqlEngine};
    use weir_sql::readmodel::ReadModel;

    let (mut insert_rates, mut update_rates) = (Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..repeats {
        let (model, insert, update) = build_orders_model(rows)?;
        insert_rates.push(insert);
        update_rates.push(update);
        last = Some(model);
    }
    // Peak resident memory while the table is built, in a process of its own: here, memory that
    // earlier scenarios freed stays with the allocator and would be reused, not counted.
    let peak_growth = memory_probe_in_child(rows)?;
    let Some(mut model) = last else { anyhow::bail!("no repeat ran") };

    let table_bytes: usize = model.tables().map(|t| t.arrow_bytes()).sum();
    let snapshot = model.snapshot()?;
    let raw = weir_sql::readmodel::raw_arrow_bytes(&snapshot.tables[0])?;
    eprintln!("readmodel: {rows} rows, table holds {table_bytes} bytes of Arrow buffers, raw Arrow of its rows {raw}");

    // Checkpoint write (Arrow IPC file, synced) and restore (read back, key index rebuilt).
    let dir = std::env::temp_dir().join(format!("weir-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("orders.arrow");
    let (mut writes, mut restores) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        let started = Instant::now();
        weir_sql::readmodel::write_table_file(&snapshot.tables[0], &file)?;
        writes.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        let mut restored = ReadModel::new("bench", &[orders_schema()]);
        let n = restored.load_table_file("orders", &file)?;
        restores.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(n as u64 == rows, "restored {n} rows of {rows}");
    }
    let _ = std::fs::remove_dir_all(&dir);

    let catalog = Arc::new(Catalog::default());
    catalog.register("bench", &[orders_schema()])?;
    catalog.publish(snapshot);
    let engine = SqlEngine::new(catalog, QueryLimits::default())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let latency = |sql: &dyn Fn(u64) -> String| -> anyhow::Result<Vec<f64>> {
        let mut samples = Vec::new();
        for q in 0..(20 * repeats as u64) {
            let text = sql(q);
            let started = Instant::now();
            let answer = runtime.block_on(engine.query(&text))?;
            anyhow::ensure!(answer.rows() > 0, "{text} found nothing");
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        samples.sort_by(f64::total_cmp);
        Ok(samples)
    };
    let point = latency(&|q| format!("SELECT * FROM orders WHERE order_id = 'o-{:09}'", (q * 104_729) % rows))?;
    let group = latency(&|_| "SELECT status, count(*), sum(amount) FROM orders GROUP BY status".to_string())?;

    // The same queries while another thread upserts 100,000 rows/s into the table and publishes a
    // snapshot every 100 ms, as the ingest loop does.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ingest = {
        let (stop, catalog) = (stop.clone(), engine.catalog().clone());
        std::thread::spawn(move || -> anyhow::Result<f64> {
            let schema = [orders_schema()];
            let started = Instant::now();
            let mut applied = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let tick = Instant::now();
                for _ in 0..10_000 {
                    let key = (applied * 7_919) % rows;
                    let row = order_row(key, 2 + applied / rows);
                    let change = weir_core::row::RowChange::Upsert { table: "orders".into(), row };
                    model.apply(RowChanges::check(&schema, vec![change]).map_err(anyhow::Error::msg)?)?;
                    applied += 1;
                }
                catalog.publish(model.snapshot()?);
                std::thread::sleep(std::time::Duration::from_millis(100).saturating_sub(tick.elapsed()));
            }
            Ok(applied as f64 / started.elapsed().as_secs_f64())
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let point_ingest = latency(&|q| format!("SELECT * FROM orders WHERE order_id = 'o-{:09}'", (q * 104_729) % rows))?;
    let group_ingest = latency(&|_| "SELECT status, count(*), sum(amount) FROM orders GROUP BY status".to_string())?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ingest_rate = ingest.join().map_err(|_| anyhow::anyhow!("ingest thread panicked"))??;
    eprintln!("readmodel: ingest during the queries ran at {ingest_rate:.0} row upserts/s");

    let rate = |metric: &str, samples: Vec<f64>, goal| {
        let r = Rate::of(samples);
        Figure {
            scenario: "readmodel",
            metric: metric.into(),
            unit: "rows/s",
            median: r.median,
            low: r.min,
            high: r.max,
            spread: "min–max",
            goal,
        }
    };
    let ms = |metric: &str, s: &[f64], goal| latency_figure("readmodel", metric.into(), s, goal);
    Ok(vec![
        rate(&format!("upsert, insert {rows} rows"), insert_rates, ""),
        rate(&format!("upsert, update {rows} rows"), update_rates, ""),
        Figure {
            scenario: "readmodel",
            metric: format!("memory of {rows} rows / raw Arrow"),
            unit: "ratio",
            median: table_bytes as f64 / raw as f64,
            low: table_bytes as f64 / raw as f64,
            high: table_bytes as f64 / raw as f64,
            spread: "one value",
            goal: "≤ 2",
        },
        Figure {
            scenario: "readmodel",
            metric: format!(
                "peak RSS growth ({:.0} MB), {rows} rows inserted + updated / raw Arrow",
                peak_growth.map_or(f64::NAN, |b| b as f64 / 1e6)
            ),
            unit: "ratio",
            median: peak_growth.map_or(f64::NAN, |b| b as f64 / raw as f64),
            low: peak_growth.map_or(f64::NAN, |b| b as f64 / raw as f64),
            high: peak_growth.map_or(f64::NAN, |b| b as f64 / raw as f64),
            spread: "one value",
            goal: "",
        },
        ms(&format!("SQL point lookup over {rows} rows (no ingest)"), &point, ""),
        ms(&format!("SQL group-by over {rows} rows (no ingest)"), &group, ""),
        ms(&format!("SQL point lookup, {rows} rows, {:.0}k upserts/s ingest", ingest_rate / 1000.0), &point_ingest, ""),
        ms(
            &format!("SQL group-by, {rows} rows, {:.0}k upserts/s ingest", ingest_rate / 1000.0),
            &group_ingest,
            "p99 < 50",
        ),
        {
            let r = Rate::of(writes);
            Figure {
                scenario: "checkpoint",
                metric: format!("write {rows} rows (Arrow IPC, fsync)"),
                unit: "ms",
                median: r.median,
                low: r.min,
                high: r.max,
                spread: "min–max",
                goal: "",
            }
        },
        {
            let r = Rate::of(restores);
            Figure {
                scenario: "checkpoint",
                metric: format!("restore {rows} rows (read + key index)"),
                unit: "ms",
                median: r.median,
                low: r.min,
                high: r.max,
                spread: "min–max",
                goal: "< 2000",
            }
        },
    ])
}

/// What one front end took to hand over a whole answer: rows, time to the first row, to the last.
struct Transfer {
    rows: u64,
    first: f64,
    total: f64,
}

impl Transfer {
    fn done(started: Instant, rows: u64, first: Option<f64>) -> Transfer {
        Transfer { rows, first: first.unwrap_or(0.0), total: started.elapsed().as_secs_f64() * 1000.0 }
    }

    fn count(started: Instant, rows: &mut u64, first: &mut Option<f64>, n: usize) {
        if n > 0 && first.is_none() {
            *first = Some(started.elapsed().as_secs_f64() * 1000.0);
        }
        *rows += n as u64;
    }
}

/// A tokio-postgres client of the listener on `port`, its connection driven on the runtime.
async fn pg_connect(port: u16) -> anyhow::Result<tokio_postgres::Client> {
    let config = format!("host=127.0.0.1 port={port} user=bench dbname=weir");
    let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// One query's whole answer (`SELECT * FROM orders`, `rows` rows of 6 columns) over each SQL front
/// end, side by side against one table: the Postgres wire protocol in text (simple query) and
/// binary (extended query) formats, HTTP as an Arrow IPC stream, and Flight SQL. Each client only
/// counts what it receives (no decoding into its own types).
fn results(rows: u64, repeats: usize) -> anyhow::Result<Vec<Figure>> {
    use futures::StreamExt;
    use std::sync::Arc;
    use weir_sql::query::{Catalog, QueryLimits, SqlEngine};
    use weir_sql::readmodel::ReadModel;

    let schema = [orders_schema()];
    let mut model = ReadModel::new("bench", &schema);
    for i in 0..rows {
        let change = weir_core::row::RowChange::Upsert { table: "orders".into(), row: order_row(i, 1) };
        model.apply(RowChanges::check(&schema, vec![change]).map_err(anyhow::Error::msg)?)?;
    }
    let catalog = Arc::new(Catalog::default());
    catalog.register("bench", &schema)?;
    catalog.publish(model.snapshot()?);
    drop(model);
    let limits = QueryLimits { timeout_ms: 600_000, ..QueryLimits::default() };
    let engine = Arc::new(SqlEngine::new(catalog, limits)?);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let loopback: std::net::SocketAddr = "127.0.0.1:0".parse()?;
    let (pg, flight) = runtime.block_on(async {
        let pg = weir_sql::postgres::start(loopback, engine.clone()).await?;
        let flight = weir_sql::flight::start(loopback, engine.clone()).await?;
        anyhow::Ok((pg, flight))
    })?;
    let state = Arc::new(weir_host::api::ApiState {
        status: Arc::new(std::sync::RwLock::new(weir_host::status::Status::default())),
        sql: engine.clone(),
        sink: None,
        token: None,
        reads_need_token: false,
        admin: None,
        hosts: weir_host::api::AllowedHosts::loopback(),
    });
    let (http, stop_tx, http_server) = serve_http(&runtime, loopback, state)?;
    const SQL: &str = "SELECT * FROM orders";

    let pg_text = || -> anyhow::Result<Transfer> {
        runtime.block_on(async {
            let client = pg_connect(pg.addr().port()).await?;
            let (started, mut count, mut first) = (Instant::now(), 0, None);
            let stream = client.simple_query_raw(SQL).await?;
            futures::pin_mut!(stream);
            while let Some(message) = stream.next().await {
                if let tokio_postgres::SimpleQueryMessage::Row(_) = message? {
                    Transfer::count(started, &mut count, &mut first, 1);
                }
            }
            Ok(Transfer::done(started, count, first))
        })
    };
    let pg_binary = || -> anyhow::Result<Transfer> {
        runtime.block_on(async {
            let client = pg_connect(pg.addr().port()).await?;
            let (started, mut count, mut first) = (Instant::now(), 0, None);
            let no_params: [&(dyn tokio_postgres::types::ToSql + Sync); 0] = [];
            let stream = client.query_raw(SQL, no_params).await?;
            futures::pin_mut!(stream);
            while let Some(row) = stream.next().await {
                row?;
                Transfer::count(started, &mut count, &mut first, 1);
            }
            Ok(Transfer::done(started, count, first))
        })
    };
    let http_arrow = || -> anyhow::Result<Transfer> {
        let (started, mut count, mut first) = (Instant::now(), 0, None);
        let body = serde_json::to_vec(&serde_json::json!({ "sql": SQL }))?;
        let response = ureq::post(&format!("http://{http}/v1/sql"))
            .header("content-type", "application/json")
            .header("accept", weir_host::api::ARROW_STREAM)
            .send(&body[..])?;
        let reader = response.into_body().into_with_config().limit(u64::MAX).reader();
        for batch in arrow_ipc::reader::StreamReader::try_new(reader, None)? {
            Transfer::count(started, &mut count, &mut first, batch?.num_rows());
        }
        Ok(Transfer::done(started, count, first))
    };
    let flight_sql = || -> anyhow::Result<Transfer> {
        runtime.block_on(async {
            let channel =
                tonic::transport::Channel::from_shared(format!("http://{}", flight.addr()))?.connect().await?;
            let mut client = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
            let (started, mut count, mut first) = (Instant::now(), 0, None);
            let info = client.execute(SQL.to_string(), None).await?;
            for endpoint in info.endpoint {
                let ticket = endpoint.ticket.ok_or_else(|| anyhow::anyhow!("an endpoint without a ticket"))?;
                let mut stream = client.do_get(ticket).await?;
                while let Some(batch) = stream.next().await {
                    Transfer::count(started, &mut count, &mut first, batch?.num_rows());
                }
            }
            Ok(Transfer::done(started, count, first))
        })
    };

    let fronts: [(&str, &dyn Fn() -> anyhow::Result<Transfer>); 4] = [
        ("pg wire, text (simple query)", &pg_text),
        ("pg wire, binary (extended query)", &pg_binary),
        ("HTTP, Arrow IPC stream", &http_arrow),
        ("Flight SQL", &flight_sql),
    ];
    let mut samples: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); fronts.len()];
    // Alternate the front ends within each repeat, so drift hits them alike.
    for _ in 0..repeats {
        for ((_, run), (rates, firsts)) in fronts.iter().zip(samples.iter_mut()) {
            let transfer = run()?;
            anyhow::ensure!(transfer.rows == rows, "received {} rows of {rows}", transfer.rows);
            rates.push(rows as f64 / (transfer.total / 1000.0));
            firsts.push(transfer.first);
        }
    }
    let _ = stop_tx.send(());
    let _ = runtime.block_on(http_server);

    let mut figures = Vec::new();
    for ((name, _), (rates, firsts)) in fronts.iter().zip(samples) {
        let rate = Rate::of(rates);
        figures.push(Figure {
            scenario: "results",
            metric: format!("{name}: {rows}-row answer"),
            unit: "rows/s",
            median: rate.median,
            low: rate.min,
            high: rate.max,
            spread: "min–max",
            goal: "",
        });
        let first = Rate::of(firsts);
        figures.push(Figure {
            scenario: "results",
            metric: format!("{name}: first row of {rows}"),
            unit: "ms",
            median: first.median,
            low: first.min,
            high: first.max,
            spread: "min–max",
            goal: "",
        });
    }
    Ok(figures)
}

/// The embedded log: append and read rates of ~200-byte events in batches of 1,000.
fn embedded_log(events: usize, repeats: usize) -> anyhow::Result<Vec<Figure>> {
    use weir_log::{EmbeddedLog, FsyncPolicy, LogConfig};
    let sample = weir_host::sample::OrderStream::take_events(42, 1_000, events);
    let mut figures = Vec::new();
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Never] {
        let (mut appends, mut reads) = (Vec::new(), Vec::new());
        for _ in 0..repeats {
            let dir = std::env::temp_dir().join(format!("weir-bench-log-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let log = EmbeddedLog::open(&dir, LogConfig { partitions: 4, fsync, ..LogConfig::default() })?;
            let started = Instant::now();
            for chunk in sample.chunks(1_000) {
                log.append("orders", chunk.to_vec())?;
            }
            appends.push(events as f64 / started.elapsed().as_secs_f64());
            let started = Instant::now();
            let mut read = 0;
            for range in log.ranges("orders")? {
                let mut next = range.start;
                while next < range.end {
                    let batch = log.read("orders", range.partition, next, 1 << 20)?;
                    next = batch.last().map_or(range.end, |e| e.position.offset + 1);
                    read += batch.len();
                }
            }
            reads.push(read as f64 / started.elapsed().as_secs_f64());
            anyhow::ensure!(read == events, "read {read} of {events}");
            drop(log);
            let _ = std::fs::remove_dir_all(&dir);
        }
        let name = match fsync {
            FsyncPolicy::Always => "fsync=always",
            FsyncPolicy::Never => "fsync=never",
        };
        for (metric, samples, goal) in [("append", appends, "≥ 500000"), ("read", reads, "")] {
            let r = Rate::of(samples);
            figures.push(Figure {
                scenario: "log",
                metric: format!("{metric} {events} events, batches of 1000, {name}"),
                unit: "events/s",
                median: r.median,
                low: r.min,
                high: r.max,
                spread: "min–max",
                goal: if metric == "append" && fsync == FsyncPolicy::Always { goal } else { "" },
            });
        }
    }
    Ok(figures)
}

/// A host configuration for a scenario: a fresh data directory (returned, for removal), no
/// Postgres listener, no checkpoint while timed, and the `orders` component.
fn host_config(scenario: &str, wasm: &Path) -> (PathBuf, weir_host::config::Config) {
    let dir = std::env::temp_dir().join(format!("weir-bench-{scenario}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = weir_host::config::Config::default();
    config.server.data_dir = dir.clone();
    config.server.pg = None;
    config.server.flight = None;
    config.checkpoint.interval_ms = 60_000;
    config.plugins.push(weir_host::config::PluginConfig {
        path: wasm.to_owned(),
        params: Default::default(),
        ..Default::default()
    });
    (dir, config)
}

/// What the end-to-end scenarios run: a projection and the events it reads.
struct Workload {
    plugin: &'static str,
    topic: &'static str,
    events: Vec<weir_core::event::Event>,
    /// BENCHMARKS.md's goal for its end-to-end rate.
    goal: &'static str,
}

impl Workload {
    /// The orders projection over the generated order stream.
    fn orders(events: usize) -> Workload {
        Workload {
            plugin: "orders",
            topic: weir_host::sample::ORDERS_TOPIC,
            events: weir_host::sample::OrderStream::take_events(42, 1_000, events),
            goal: "≥ 500000",
        }
    }

    /// The minimal projection (one state read, one upsert per event) over 100k accounts.
    fn minimal(events: usize) -> Workload {
        Workload {
            plugin: "account-balances",
            topic: weir_host::sample::TRANSACTIONS_TOPIC,
            events: weir_host::sample::TransactionStream::take_events(42, 100_000, events),
            goal: "≥ 1000000",
        }
    }

    fn wasm(&self) -> anyhow::Result<PathBuf> {
        Ok(weir_host::build::build_plugin(&weir_host::demo::plugins_dir().join(self.plugin))?)
    }

    /// Start `host`, write every event to its log in batches of 10,000, and return the rate from
    /// the first write until every event is processed by every plugin and published.
    fn run(&self, config: &weir_host::config::Config) -> anyhow::Result<f64> {
        let host = weir_host::server::Host::start(config)?;
        let started = Instant::now();
        for chunk in self.events.chunks(10_000) {
            host.sink.append(self.topic, chunk.to_vec())?;
        }
        let n = self.events.len() as u64;
        anyhow::ensure!(host.wait_caught_up(n, std::time::Duration::from_secs(600)), "never caught up");
        let rate = n as f64 / started.elapsed().as_secs_f64();
        host.shutdown();
        Ok(rate)
    }
}

/// End to end on the embedded log: a host running the workload's projection; its events written
/// to its log in batches of 10,000; the time from the first write until every event is in the
/// read model (and published to queries).
fn end_to_end_embedded(workload: &Workload, repeats: usize) -> anyhow::Result<Figure> {
    let wasm = workload.wasm()?;
    let mut rates = Vec::new();
    for _ in 0..repeats {
        let (dir, config) = host_config("e2e", &wasm);
        rates.push(workload.run(&config)?);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let r = Rate::of(rates);
    Ok(Figure {
        goal: workload.goal,
        ..rate_figure(
            "e2e",
            format!("embedded log → {} (wasm) → Arrow, {} events", workload.plugin, workload.events.len()),
            &r,
        )
    })
}

/// Several plugins on one topic: the two minimal projections of the transactions topic
/// (`account-balances` and `merchant-totals`) in one host, run one after another on the ingest
/// thread (`[server] plugin_threads = 1`) and side by side (the default: one thread per plugin
/// and core), alternating which goes first.
fn plugins_side_by_side(workload: &Workload, repeats: usize) -> anyhow::Result<Vec<Figure>> {
    let wasm = workload.wasm()?;
    let second = weir_host::build::build_plugin(&weir_host::demo::plugins_dir().join("merchant-totals"))?;
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for repeat in 0..repeats {
        for side_by_side in [repeat % 2 == 0, repeat % 2 == 1] {
            let (dir, mut config) = host_config("plugins", &wasm);
            config.plugins.push(weir_host::config::PluginConfig { path: second.clone(), ..Default::default() });
            config.server.plugin_threads = if side_by_side { 0 } else { 1 };
            let rate = workload.run(&config)?;
            let how = if side_by_side { "side by side" } else { "one after another" };
            eprintln!("  2 plugins {how}: {rate:.0} events/s");
            rates[usize::from(side_by_side)].push(rate);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let (sequential, parallel) = (Rate::of(std::mem::take(&mut rates[0])), Rate::of(std::mem::take(&mut rates[1])));
    let metric =
        |how: &str| format!("account-balances + merchant-totals on one topic, {how}, {} events", workload.events.len());
    Ok(vec![
        rate_figure("plugins", metric("one after another"), &sequential),
        rate_figure("plugins", metric("side by side"), &parallel),
        Figure {
            goal: "≥ 1.7",
            ..ratio_figure("plugins", "2 plugins side by side / one after another", &parallel, &sequential)
        },
    ])
}

/// A figure measured once.
fn single_figure(scenario: &'static str, metric: String, unit: &'static str, value: f64, goal: &'static str) -> Figure {
    Figure { scenario, metric, unit, median: value, low: value, high: value, spread: "one run", goal }
}

/// A latency figure: p50 and p99 of `sorted` (milliseconds, sorted ascending).
fn latency_figure(scenario: &'static str, metric: String, sorted: &[f64], goal: &'static str) -> Figure {
    Figure {
        scenario,
        metric,
        unit: "ms",
        median: percentile(sorted, 0.5),
        low: percentile(sorted, 0.5),
        high: percentile(sorted, 0.99),
        spread: "p50–p99",
        goal,
    }
}

/// A rate figure: median and min–max of `r`.
fn rate_figure(scenario: &'static str, metric: String, r: &Rate) -> Figure {
    Figure {
        scenario,
        metric,
        unit: "events/s",
        median: r.median,
        low: r.min,
        high: r.max,
        spread: "min–max",
        goal: "",
    }
}

/// `a / b` of two rates' medians, with the worst and best pairing.
fn ratio_figure(scenario: &'static str, metric: &str, a: &Rate, b: &Rate) -> Figure {
    Figure {
        scenario,
        metric: metric.into(),
        unit: "ratio",
        median: a.median / b.median,
        low: a.min / b.max,
        high: a.max / b.min,
        spread: "worst–best",
        goal: "",
    }
}

/// What metrics cost: the end-to-end run of [`end_to_end_embedded`] with metrics on (every
/// plugin's work counted per partition, its batches timed, and `/metrics` rendered every second
/// as a Prometheus scrape would) and off (`[server] metrics = false`: totals only), alternating
/// which goes first, `repeats` each.
fn metrics_cost(events: usize, repeats: usize) -> anyhow::Result<Vec<Figure>> {
    let wasm = weir_host::build::build_plugin(&weir_host::demo::plugins_dir().join("orders"))?;
    let sample = weir_host::sample::OrderStream::take_events(42, 1_000, events);
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut scrapes = 0;
    for repeat in 0..repeats {
        // On first in even repeats, off first in odd ones: neither mode always runs second.
        let order = if repeat % 2 == 0 { [0, 1] } else { [1, 0] };
        for mode in order {
            let metered = mode == 0;
            let (dir, mut config) = host_config("metrics", &wasm);
            config.server.metrics = metered;
            let host = weir_host::server::Host::start(&config)?;
            let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let scraper = metered.then(|| {
                let (status, sql, done) = (host.status.clone(), host.sql.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut rendered = 0;
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        let status = status.read().unwrap_or_else(|e| e.into_inner()).clone();
                        let scrape = weir_host::metrics::Scrape {
                            status,
                            tables: sql.catalog().tables(),
                            sql: sql.stats().snapshot(),
                            now_ms: weir_host::registry::now_ms(),
                        };
                        std::hint::black_box(weir_host::metrics::render(scrape));
                        rendered += 1;
                        std::thread::sleep(std::time::Duration::from_secs(1));
                    }
                    rendered
                })
            });
            let started = Instant::now();
            for chunk in sample.chunks(10_000) {
                host.sink.append("orders", chunk.to_vec())?;
            }
            anyhow::ensure!(host.wait_caught_up(events as u64, std::time::Duration::from_secs(600)), "never caught up");
            rates[mode].push(events as f64 / started.elapsed().as_secs_f64());
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(scraper) = scraper {
                scrapes += scraper.join().unwrap_or(0);
            }
            host.shutdown();
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    // The pipeline alone (no log, no fsync, no other thread): the same plugin over the same
    // events in memory, metered and not, alternating, five times at least.
    let runtime = PluginRuntime::new(Limits::default(), None)?;
    let mut pipeline_rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for repeat in 0..repeats.max(5) {
        let order = if repeat % 2 == 0 { [0, 1] } else { [1, 0] };
        for mode in order {
            let mut pipeline = weir_host::pipeline::Pipeline::new(std::sync::Arc::default());
            pipeline.add(runtime.load(&wasm, BTreeMap::new())?)?;
            pipeline.set_metered(mode == 0);
            let started = Instant::now();
            for chunk in sample.chunks(1024) {
                std::hint::black_box(pipeline.process(chunk));
            }
            pipeline.publish()?;
            pipeline_rates[mode].push(events as f64 / started.elapsed().as_secs_f64());
        }
    }
    let [on, off] = rates.map(Rate::of);
    let [pipeline_on, pipeline_off] = pipeline_rates.map(Rate::of);
    let figure = |metric: String, r: &Rate| rate_figure("metrics", metric, r);
    let ratio = |metric: &str, a: &Rate, b: &Rate| ratio_figure("metrics", metric, a, b);
    Ok(vec![
        figure(format!("{events} events end to end, metrics on ({scrapes} scrapes)"), &on),
        figure(format!("{events} events end to end, metrics off"), &off),
        ratio("end to end: metrics on / off (medians)", &on, &off),
        figure(format!("{events} events, pipeline alone, metered"), &pipeline_on),
        figure(format!("{events} events, pipeline alone, not metered"), &pipeline_off),
        ratio("pipeline alone: metered / not (medians)", &pipeline_on, &pipeline_off),
    ])
}

/// SQL beside a projection ingesting at its full rate (issue 17's last goal). A host running the
/// minimal projection reads 2N transactions over 1.2N accounts, so its table holds about 0.8N
/// rows (the figure names the count). Then N more transactions on the same accounts (mostly updates) are written at once, and
/// while the host works through them one client asks a group-by over the whole table back to
/// back, through `SqlEngine` (the code behind `POST /v1/sql`). Reports the group-by's p50/p99
/// while ingesting, and the rate the projection kept meanwhile.
fn sql_beside_full_ingest(events: usize) -> anyhow::Result<Vec<Figure>> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let wasm = Workload::minimal(0).wasm()?;
    let (dir, config) = host_config("sql-ingest", &wasm);
    let host = weir_host::server::Host::start(&config)?;
    let topic = weir_host::sample::TRANSACTIONS_TOPIC;
    let accounts = (events as u64 * 6 / 5).max(1);
    let mut stream = weir_host::sample::TransactionStream::new(46, accounts);
    let mut write = |n: usize| -> anyhow::Result<u64> {
        let mut left = n;
        while left > 0 {
            let chunk: Vec<_> = stream.by_ref().take(left.min(10_000)).collect();
            left -= chunk.len();
            host.sink.append(topic, chunk)?;
        }
        Ok(n as u64)
    };
    let mut written = write(2 * events)?;
    anyhow::ensure!(host.wait_caught_up(written, std::time::Duration::from_secs(900)), "never caught up");
    let rows: usize = host.sql.catalog().tables().iter().filter(|t| t.name == "balances").map(|t| t.rows).sum();
    let sql = "SELECT transactions, count(*) AS accounts, sum(balance) AS total FROM balances GROUP BY transactions";
    let done = Arc::new(AtomicBool::new(false));
    let client = {
        let (engine, done) = (host.sql.clone(), done.clone());
        std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let mut latencies = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let sent = Instant::now();
                runtime.block_on(engine.query(sql)).map_err(|e| anyhow::anyhow!("{e}"))?;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            Ok(latencies)
        })
    };
    let started = Instant::now();
    let before = written;
    written += write(events)?;
    let caught_up = host.wait_caught_up(written, std::time::Duration::from_secs(900));
    let ingest_rate = (written - before) as f64 / started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let mut latencies = client.join().map_err(|_| anyhow::anyhow!("the query client panicked"))??;
    host.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(caught_up, "never caught up");
    anyhow::ensure!(!latencies.is_empty(), "no query finished while the projection ingested");
    latencies.sort_by(f64::total_cmp);
    eprintln!(
        "sql_ingest: {rows} rows, {} group-bys answered while {} events were applied at {ingest_rate:.0} events/s",
        latencies.len(),
        written - before
    );
    Ok(vec![
        latency_figure(
            "sql_ingest",
            format!("SQL group-by over {rows} rows beside the minimal projection at full rate"),
            &latencies,
            "p99 < 50",
        ),
        single_figure(
            "sql_ingest",
            format!("minimal projection's rate meanwhile, {events} events"),
            "events/s",
            ingest_rate,
            "",
        ),
    ])
}

/// SQL under load (issue 14): for `seconds`, `rate` order events/s appended to the embedded log
/// of a host running the orders projection, while `qps` queries/s in all go to the read model,
/// half over HTTP (`POST /v1/sql`, one thread each of 8) and half over the Postgres wire (8
/// tokio-postgres connections), alternating a point lookup and a small group-by on
/// `customer_revenue`. Each client sends on a fixed schedule (if an answer is late the next is
/// sent at once, never skipped). Reports queries answered per second and p50/p99 per front end,
/// errors, the ingest rate kept, and peak RSS.
fn load(seconds: u64, rate: usize, qps: usize) -> anyhow::Result<Vec<Figure>> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    let wasm = weir_host::build::build_plugin(&weir_host::demo::plugins_dir().join("orders"))?;
    let (dir, config) = host_config("load", &wasm);
    let host = weir_host::server::Host::start(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let loopback: std::net::SocketAddr = "127.0.0.1:0".parse()?;
    let pg = runtime.block_on(weir_sql::postgres::start(loopback, host.sql.clone()))?;
    let (http, stop_http, server) = serve_http(&runtime, loopback, host.api_state(loopback))?;
    reset_peak_rss();
    let done = Arc::new(AtomicBool::new(false));
    let query = |n: u64| {
        if n.is_multiple_of(2) {
            format!("SELECT orders_paid, revenue FROM customer_revenue WHERE customer_id = 'c-{:06}'", n % 10_000)
        } else {
            "SELECT orders_paid, count(*) AS customers FROM customer_revenue GROUP BY orders_paid ORDER BY orders_paid"
                .to_string()
        }
    };
    const CLIENTS: usize = 8;
    let every = Duration::from_secs_f64(CLIENTS as f64 * 2.0 / qps.max(1) as f64);
    let started = Instant::now();
    // HTTP clients: blocking threads.
    let http_clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let done = done.clone();
            let url = format!("http://{http}/v1/sql");
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                let (mut latencies, mut errors, mut n) = (Vec::new(), 0u64, c as u64);
                let mut next = Instant::now();
                while !done.load(Ordering::Relaxed) {
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    next += every;
                    let body = serde_json::json!({ "sql": query(n) }).to_string();
                    let sent = Instant::now();
                    let answered = agent
                        .post(&url)
                        .header("content-type", "application/json")
                        .send(body.as_bytes())
                        .is_ok_and(|mut r| r.status().as_u16() == 200 && r.body_mut().read_to_vec().is_ok());
                    if answered {
                        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        errors += 1;
                    }
                    n += CLIENTS as u64;
                }
                (latencies, errors)
            })
        })
        .collect();
    // Postgres clients: tasks on the runtime.
    let pg_port = pg.addr().port();
    let pg_clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let done = done.clone();
            runtime.spawn(async move {
                let (mut latencies, mut errors, mut n) = (Vec::new(), 0u64, c as u64);
                let Ok(client) = pg_connect(pg_port).await else { return (latencies, u64::MAX) };
                let mut ticks = tokio::time::interval(every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                while !done.load(Ordering::Relaxed) {
                    ticks.tick().await;
                    let sent = Instant::now();
                    match client.simple_query(&query(n)).await {
                        Ok(_) => latencies.push(sent.elapsed().as_secs_f64() * 1000.0),
                        Err(_) => errors += 1,
                    }
                    n += CLIENTS as u64;
                }
                (latencies, errors)
            })
        })
        .collect();
    // Ingest on this thread: rate/100 events every 10 ms, generated as they go.
    let mut stream = weir_host::sample::OrderStream::new(44, 10_000);
    let per_tick = (rate / 100).max(1);
    let mut appended = 0usize;
    let ticks = seconds * 100;
    for tick in 0..ticks {
        let due = started + Duration::from_millis(10 * tick);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let batch: Vec<_> = stream.by_ref().take(per_tick).collect();
        appended += batch.len();
        host.sink.append("orders", batch)?;
    }
    let appending = started.elapsed().as_secs_f64();
    // Applied by the projection when the queries stop (it may be behind: that is a figure too).
    let elapsed = started.elapsed().as_secs_f64();
    let applied_at_end: u64 = {
        let status = host.status.read().unwrap_or_else(|e| e.into_inner());
        status.lag.iter().map(|l| l.position).sum()
    };
    done.store(true, Ordering::Relaxed);
    let mut http_latencies = Vec::new();
    let mut http_errors = 0;
    for client in http_clients {
        let (latencies, errors) = client.join().map_err(|_| anyhow::anyhow!("an HTTP client panicked"))?;
        http_latencies.extend(latencies);
        http_errors += errors;
    }
    let mut pg_latencies = Vec::new();
    let mut pg_errors = 0;
    for client in pg_clients {
        let (latencies, errors) = runtime.block_on(client)?;
        pg_latencies.extend(latencies);
        pg_errors += errors;
    }
    let peak_mb = proc_status_kb("VmHWM").unwrap_or(0) as f64 / 1024.0;
    let _ = stop_http.send(());
    let _ = runtime.block_on(server);
    drop(pg);
    host.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "load: {appended} events appended in {appending:.1} s ({seconds} s asked), {applied_at_end} applied when the \
         queries stopped; HTTP {} answered, {http_errors} errors; Postgres {} answered, {pg_errors} errors; peak RSS {peak_mb:.0} MB",
        http_latencies.len(),
        pg_latencies.len()
    );
    http_latencies.sort_by(f64::total_cmp);
    pg_latencies.sort_by(f64::total_cmp);
    let front = |name: &str, latencies: &[f64]| {
        vec![
            Figure {
                scenario: "load",
                metric: format!("{name} queries answered per second"),
                unit: "queries/s",
                median: latencies.len() as f64 / elapsed,
                low: latencies.len() as f64 / elapsed,
                high: latencies.len() as f64 / elapsed,
                spread: "one run",
                goal: "",
            },
            latency_figure("load", format!("{name} query latency under ingest"), latencies, ""),
        ]
    };
    let mut figures = front("HTTP", &http_latencies);
    figures.extend(front("Postgres", &pg_latencies));
    let one = |metric: String, unit: &'static str, value: f64, goal: &'static str| {
        single_figure("load", metric, unit, value, goal)
    };
    figures.push(one(format!("appended, {rate} events/s asked"), "events/s", appended as f64 / appending, "≥ 50000"));
    figures.push(one("applied under the query load".into(), "events/s", applied_at_end as f64 / elapsed, "≥ 50000"));
    figures.push(one("failed queries (HTTP + Postgres)".into(), "queries", (http_errors + pg_errors) as f64, "0"));
    figures.push(Figure {
        scenario: "load",
        metric: "peak RSS of the process".into(),
        unit: "MB",
        median: peak_mb,
        low: peak_mb,
        high: peak_mb,
        spread: "one run",
        goal: "",
    });
    Ok(figures)
}

/// A handler with state on the embedded log: `high-value-orders` with threshold 0, so every
/// `OrderPlaced` (a third of the stream) is flagged with the customer's running count (a state
/// read and write) and emitted to `order-alerts`. `events` written in batches of 10,000; timed
/// from the first write until every event is handled and every emitted one written. Once with
/// effectively-once output (the default: each batch journaled before its output is written), once
/// at least once (`effectively_once = false`), alternating, `repeats` each.
fn handler(events: usize, repeats: usize) -> anyhow::Result<Vec<Figure>> {
    let wasm = weir_host::build::build_plugin(&weir_host::demo::plugins_dir().join("high-value-orders"))?;
    let sample = weir_host::sample::OrderStream::take_events(45, 1_000, events);
    let handled = sample.iter().filter(|e| e.event_type == "OrderPlaced").count();
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..repeats {
        for (mode, effectively_once) in [true, false].into_iter().enumerate() {
            let (dir, mut config) = host_config("handler", &wasm);
            config.plugins[0].params.insert("threshold".into(), "0".into());
            config.server.effectively_once = effectively_once;
            let host = weir_host::server::Host::start(&config)?;
            let started = Instant::now();
            for chunk in sample.chunks(10_000) {
                host.sink.append("orders", chunk.to_vec())?;
            }
            anyhow::ensure!(host.wait_caught_up(events as u64, std::time::Duration::from_secs(600)), "never caught up");
            rates[mode].push(handled as f64 / started.elapsed().as_secs_f64());
            let emitted: u64 = host
                .log
                .as_ref()
                .map(|log| log.ranges("order-alerts").unwrap_or_default().iter().map(|r| r.end).sum())
                .unwrap_or(0);
            anyhow::ensure!(emitted == handled as u64, "{emitted} emitted for {handled} handled");
            host.shutdown();
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let [exactly, at_least] = rates.map(Rate::of);
    Ok(vec![
        rate_figure("handler", format!("{handled} in = out, effectively once (journaled)"), &exactly),
        rate_figure("handler", format!("{handled} in = out, at least once"), &at_least),
        ratio_figure("handler", "effectively once / at least once (medians)", &exactly, &at_least),
    ])
}

/// Produce→visible latency on the embedded log: `rate` events/s written in batches every 10 ms
/// for `seconds`, each batch timed from just before its append until `/v1/status` (rewritten after
/// every snapshot publish) shows the orders projection past all of its events. p50 and p99 over
/// batches, for one `publish_interval_ms`.
fn latency_at_rate(rate: usize, seconds: u64, publish_ms: u64) -> anyhow::Result<Figure> {
    use std::collections::VecDeque;
    use std::time::Duration;
    let wasm = weir_host::build::build_plugin(&weir_host::demo::plugins_dir().join("orders"))?;
    let per_batch = (rate / 100).max(1);
    let batches = (seconds * 100) as usize;
    let sample = weir_host::sample::OrderStream::take_events(43, 1_000, per_batch * batches);
    let (dir, mut config) = host_config("latency", &wasm);
    config.server.publish_interval_ms = publish_ms;
    let host = weir_host::server::Host::start(&config)?;
    // Batches sent and not yet visible: (highest offset + 1 per partition, sent at).
    type Sent = (Vec<((String, u32), u64)>, Instant);
    let mut waiting: VecDeque<Sent> = VecDeque::new();
    let mut latencies = Vec::with_capacity(batches);
    let started = Instant::now();
    let visible = |waiting: &mut VecDeque<Sent>, latencies: &mut Vec<f64>| {
        let status = host.status.read().unwrap_or_else(|e| e.into_inner());
        while let Some((needs, sent)) = waiting.front() {
            let done = needs.iter().all(|((topic, partition), next)| {
                status.lag.iter().any(|l| l.topic == *topic && l.partition == *partition && l.position >= *next)
            });
            if !done {
                break;
            }
            latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
            waiting.pop_front();
        }
    };
    for (n, chunk) in sample.chunks(per_batch).enumerate() {
        let due = started + Duration::from_millis(10 * n as u64);
        while Instant::now() < due {
            visible(&mut waiting, &mut latencies);
            std::thread::sleep(Duration::from_micros(200));
        }
        let sent = Instant::now();
        let positions = host.sink.append("orders", chunk.to_vec())?;
        let mut needs: Vec<((String, u32), u64)> = Vec::new();
        for p in positions {
            match needs.iter_mut().find(|(k, _)| k.0 == p.topic && k.1 == p.partition) {
                Some(entry) => entry.1 = entry.1.max(p.offset + 1),
                None => needs.push(((p.topic, p.partition), p.offset + 1)),
            }
        }
        waiting.push_back((needs, sent));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !waiting.is_empty() && Instant::now() < deadline {
        visible(&mut waiting, &mut latencies);
        std::thread::sleep(Duration::from_micros(200));
    }
    anyhow::ensure!(waiting.is_empty(), "{} batches never became visible", waiting.len());
    host.shutdown();
    latencies.sort_by(f64::total_cmp);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(latency_figure(
        "e2e",
        format!("produce→visible at {rate} events/s, publish every {publish_ms} ms"),
        &latencies,
        "",
    ))
}

/// The HTTP API over `state` on `addr` (port 0: any): the bound address, what stops it, its task.
fn serve_http(
    runtime: &tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    state: std::sync::Arc<weir_host::api::ApiState>,
) -> anyhow::Result<(
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = runtime.spawn(weir_host::api::serve(
        addr,
        state,
        move |addr| {
            let _ = bound_tx.send(addr);
        },
        async {
            let _ = stop_rx.await;
        },
    ));
    Ok((bound_rx.recv_timeout(std::time::Duration::from_secs(10))?, stop_tx, task))
}

/// The plugin lifecycle over a running host's HTTP admin API (the real path: upload, compile,
/// checks, applied by the ingest loop between batches). `events` orders are written to the
/// embedded log of a host with no plugin; then the orders projection is deployed (a new plugin:
/// it catches up on a reader of its own), rebuilt (a shadow replays the same history beside it
/// and takes over when caught up), and hot-swapped `swaps` times (`take_over`, parameters
/// alternating) while 20,000 events/s arrive. The pause is the time the ingest loop stopped
/// between two batches to apply a swap, as the host reports it.
fn lifecycle(events: usize, swaps: usize) -> anyhow::Result<Vec<Figure>> {
    use std::time::Duration;
    let wasm = weir_host::build::build_plugin(&weir_host::demo::plugins_dir().join("orders"))?;
    let component = std::fs::read(&wasm)?;
    let (dir, mut config) = host_config("lifecycle", &wasm);
    config.plugins.clear();
    let host = weir_host::server::Host::start(&config)?;
    let mut stream = OrderStream::new(44, 1_000);
    let mut written = 0;
    while written < events {
        let chunk: Vec<_> = stream.by_ref().take((events - written).min(100_000)).collect();
        written += chunk.len();
        host.sink.append("orders", chunk)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let loopback: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    let state = host.api_state(loopback);
    let (http, stop_tx, server) = serve_http(&runtime, loopback, state)?;
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let auth = format!("Bearer {}", host.token.secret());
    let admin = |path: &str, body: &[u8]| -> anyhow::Result<weir_host::status::AdminOutcome> {
        let mut response = agent
            .post(&format!("http://{http}{path}"))
            .header("authorization", &auth)
            .header("content-type", "application/wasm")
            .send(body)?;
        let text = response.body_mut().read_to_string()?;
        anyhow::ensure!(response.status().is_success(), "{path}: {text}");
        Ok(serde_json::from_str(&text)?)
    };
    let detail = || host.status.read().unwrap_or_else(|e| e.into_inner()).plugins.first().cloned();

    let started = Instant::now();
    let outcome = admin("/v1/plugins", &component)?;
    anyhow::ensure!(outcome.action == "deployed", "deploy: {}", outcome.message);
    anyhow::ensure!(host.wait_caught_up(events as u64, Duration::from_secs(3_600)), "the deploy never caught up");
    let catch_up = events as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let outcome = admin("/v1/plugins/orders/rebuild", b"")?;
    anyhow::ensure!(outcome.action == "rebuilding", "rebuild: {}", outcome.message);
    loop {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(plugin) = detail()
            && plugin.rebuild.is_none()
        {
            anyhow::ensure!(plugin.rebuild_error.is_none(), "rebuild: {:?}", plugin.rebuild_error);
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(3_600), "the rebuild never finished");
    }
    let rebuild_seconds = started.elapsed().as_secs_f64();

    // Swaps while 20,000 events/s arrive (200 every 10 ms).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (sink, stop) = (host.sink.clone(), stop.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sink.append("orders", stream.by_ref().take(200).collect())?;
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        })
    };
    let mut pauses = Vec::with_capacity(swaps);
    let mut round_trips = Vec::with_capacity(swaps);
    for n in 0..swaps {
        std::thread::sleep(Duration::from_millis(100));
        let sent = Instant::now();
        let outcome = admin(&format!("/v1/plugins?take_over=true&param=round%3D{}", n % 2), &component)?;
        round_trips.push(sent.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(outcome.action == "swapped", "swap {n}: {}", outcome.message);
        pauses.push(outcome.applied_ms);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producer.join().map_err(|_| anyhow::anyhow!("the producer panicked"))??;
    let _ = stop_tx.send(());
    let _ = runtime.block_on(server);
    host.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    pauses.sort_by(f64::total_cmp);
    round_trips.sort_by(f64::total_cmp);
    let single = |metric: String, unit: &'static str, value: f64, goal: &'static str| {
        single_figure("lifecycle", metric, unit, value, goal)
    };
    Ok(vec![
        single(format!("deploy orders over {events} events: catch-up rate"), "events/s", catch_up, ""),
        single(format!("rebuild orders side by side over {events} events"), "s", rebuild_seconds, "< 20 for 10M"),
        single(format!("rebuild rate over {events} events"), "events/s", events as f64 / rebuild_seconds, "≥ 500000"),
        latency_figure(
            "lifecycle",
            format!("hot swap under load: pause in processing ({swaps} swaps)"),
            &pauses,
            "< 100",
        ),
        latency_figure(
            "lifecycle",
            "hot swap: deploy request round trip (upload, compile, apply)".into(),
            &round_trips,
            "",
        ),
    ])
}

/// A tansu broker for the Kafka scenario, killed on drop.
struct Broker(std::process::Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// End to end through Kafka: the workload's events produced to a 4-partition topic of a tansu
/// broker; then, in the same run, a raw rdkafka consumer reading them all (the baseline), a real
/// `Host` with the workload's projection reading them all in a consumer group (weir), and, when
/// `WEIR_PEERS_PYTHON` names a Python with quixstreams, the same projection in quixstreams (the
/// peer). Needs `WEIR_TANSU`.
fn kafka_vs_raw(workload: &Workload, repeats: usize) -> anyhow::Result<Vec<Comparison>> {
    let events = workload.events.len();
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let Some(tansu) = std::env::var_os("WEIR_TANSU").filter(|p| std::path::Path::new(p).is_file()) else {
        eprintln!("kafka: skipped (set WEIR_TANSU to the tansu broker binary; ./test.sh installs it)");
        return Ok(Vec::new());
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("tcp://127.0.0.1:{port}");
    let _broker = Broker(
        std::process::Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let brokers = format!("127.0.0.1:{port}");
    let started = Instant::now();
    while std::net::TcpStream::connect(&brokers).is_err() {
        anyhow::ensure!(started.elapsed().as_secs() < 20, "tansu did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let kafka = weir_kafka::KafkaConfig {
        brokers: brokers.clone(),
        group_id: "bench".into(),
        start: weir_kafka::StartPosition::Earliest,
        session_timeout_ms: Some(6000),
        type_field: "type".into(),
        id_field: "id".into(),
        idempotent_producer: false,
        properties: Default::default(),
    };
    {
        let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &brokers).create()?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        // Retention set explicitly: quixstreams reads it from the topic's config to size its
        // changelog topics, and tansu reports only what the topic was created with.
        let topic = rdkafka::admin::NewTopic::new(workload.topic, 4, rdkafka::admin::TopicReplication::Fixed(1))
            .set("retention.ms", "-1")
            .set("retention.bytes", "-1");
        for r in runtime.block_on(admin.create_topics(&[topic], &rdkafka::admin::AdminOptions::new()))? {
            r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
        }
    }
    let sink = weir_kafka::KafkaSink::new(&kafka)?;
    for chunk in workload.events.chunks(10_000) {
        use weir_core::source::EventSink;
        sink.append(workload.topic, chunk.to_vec())?;
    }
    let wasm = workload.wasm()?;
    let peer = std::env::var_os("WEIR_PEERS_PYTHON").filter(|p| Path::new(p).is_file());
    if peer.is_none() {
        eprintln!("kafka: the quixstreams peer is skipped (set WEIR_PEERS_PYTHON; ./test.sh installs it)");
    }
    let (mut raw, mut weir, mut quix) = (Vec::new(), Vec::new(), Vec::new());
    for repeat in 0..repeats {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("raw-{repeat}"))
            .set("enable.auto.commit", "false")
            .create()?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..4 {
            assignment.add_partition_offset(workload.topic, p, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let started = Instant::now();
        let (mut n, mut bytes) = (0usize, 0usize);
        while n < events {
            anyhow::ensure!(started.elapsed().as_secs() < 600, "raw consumer stalled at {n}");
            if let Some(message) = consumer.poll(std::time::Duration::from_secs(1)) {
                bytes += rdkafka::Message::payload(&message?).map_or(0, <[u8]>::len);
                n += 1;
            }
        }
        raw.push(n as f64 / started.elapsed().as_secs_f64());
        anyhow::ensure!(bytes > 0, "empty payloads");

        let (dir, mut config) = host_config("kafka", &wasm);
        config.kafka = Some(weir_kafka::KafkaConfig { group_id: format!("weir-{repeat}"), ..kafka.clone() });
        let host = weir_host::server::Host::start(&config)?;
        // Timed from the first event read, so the group join (seconds on tansu) is not counted.
        let read = || host.status.read().map(|s| s.events_read).unwrap_or(0);
        let wait = Instant::now();
        while read() == 0 {
            anyhow::ensure!(wait.elapsed().as_secs() < 120, "weir never read from kafka");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let started = Instant::now();
        let first = read();
        while read() < events as u64 {
            anyhow::ensure!(started.elapsed().as_secs() < 600, "weir stalled at {}", read());
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        weir.push((events as u64 - first) as f64 / started.elapsed().as_secs_f64());
        host.shutdown();
        let _ = std::fs::remove_dir_all(&dir);

        if let Some(python) = &peer {
            let rate = quixstreams_rate(python, &brokers, workload.topic, &format!("quix-{repeat}"), events)?;
            eprintln!("  repeat {}: quixstreams {rate:.0} events/s", repeat + 1);
            quix.push(rate);
        }
    }
    let weir = Rate::of(weir);
    let mut comparisons = Vec::new();
    if !quix.is_empty() {
        let baseline = Rate::of(quix);
        comparisons.push(Comparison {
            scenario: "kafka_vs_peer",
            what: format!("{} vs quixstreams", workload.plugin),
            unit: "events/s",
            events,
            batch: 1024,
            ratio: weir.median / baseline.median,
            subject: weir.clone(),
            baseline,
            goal: 10.0,
        });
    }
    let (subject, baseline) = (weir, Rate::of(raw));
    comparisons.insert(
        0,
        Comparison {
            scenario: "kafka_vs_raw",
            what: format!("{} projection", workload.plugin),
            unit: "events/s",
            events,
            batch: 1024,
            ratio: subject.median / baseline.median,
            subject,
            baseline,
            goal: 0.8,
        },
    );
    Ok(comparisons)
}

/// The peer: quixstreams (`bench/peers/quixstreams_balances.py`, run by `python`) doing the
/// minimal projection over `topic` in a consumer group of its own; events/s from its first event
/// to its last, as it reports them.
fn quixstreams_rate(
    python: &std::ffi::OsStr,
    brokers: &str,
    topic: &str,
    group: &str,
    events: usize,
) -> anyhow::Result<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/quixstreams_balances.py");
    let state = tempfile_dir(group)?;
    let output = std::process::Command::new(python)
        .args(["-W", "ignore"])
        .arg(&script)
        .args([brokers, topic, group, &events.to_string()])
        .arg(&state)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let _ = std::fs::remove_dir_all(&state);
    anyhow::ensure!(output.status.success(), "{} failed: {}", script.display(), output.status);
    #[derive(serde::Deserialize)]
    struct Report {
        events: usize,
        seconds: f64,
    }
    let report: Report = serde_json::from_slice(&output.stdout).map_err(|e| {
        anyhow::anyhow!("{} printed {:?}: {e}", script.display(), String::from_utf8_lossy(&output.stdout))
    })?;
    anyhow::ensure!(report.events == events, "quixstreams processed {} of {events} events", report.events);
    Ok(events as f64 / report.seconds)
}

/// A fresh scratch directory for `what`.
fn tempfile_dir(what: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("weir-bench-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(rows) = args.memory_probe {
        return memory_probe(rows);
    }
    let events = args.events.unwrap_or(if args.quick { 20_000 } else { 1_000_000 });
    let repeats = args.repeats.unwrap_or(if args.quick { 1 } else { 5 }).max(1);
    let machine = machine();
    eprintln!("weir-bench on {} cores, {} ({} build)", machine.cores, machine.cpu, machine.profile);

    let run = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let mut comparisons = Vec::new();
    if run("wasm_vs_native") {
        let orders = weir_host::sample::OrderStream::take_events(1, 10_000, events);
        comparisons.push(wasm_vs_native::<orders::Orders>("orders", &orders, repeats, args.batch)?);
        let transactions = weir_host::sample::TransactionStream::take_events(1, 100_000, events);
        comparisons.push(wasm_vs_native::<account_balances::AccountBalances>(
            "account-balances",
            &transactions,
            repeats,
            args.batch,
        )?);
    }
    if run("kafka") {
        comparisons.extend(kafka_vs_raw(&Workload::minimal(events), repeats)?);
    }
    let mut figures = Vec::new();
    if run("readmodel") {
        figures.extend(readmodel(events as u64, repeats)?);
    }
    if run("results") {
        figures.extend(results(events as u64, repeats)?);
    }
    if run("log") {
        figures.extend(embedded_log(events, repeats)?);
    }
    if run("lifecycle") {
        figures.extend(lifecycle(events, if args.quick { 3 } else { 40 })?);
    }
    if run("handler") {
        figures.extend(handler(events, repeats)?);
    }
    if args.only.iter().any(|o| o == "load") || (args.quick && args.only.is_empty()) {
        // Not in a full run by default: it takes `--load-seconds` (5 minutes unless set).
        let seconds = if args.quick { 2 } else { args.load_seconds };
        figures.extend(load(seconds, if args.quick { 5_000 } else { 50_000 }, if args.quick { 100 } else { 1_000 })?);
    }
    if run("metrics") {
        figures.extend(metrics_cost(events, repeats)?);
    }
    if run("plugins") {
        figures.extend(plugins_side_by_side(&Workload::minimal(events), repeats)?);
    }
    if run("e2e") {
        figures.push(end_to_end_embedded(&Workload::minimal(events), repeats)?);
        figures.push(end_to_end_embedded(&Workload::orders(events), repeats)?);
        let seconds = if args.quick { 1 } else { 5 };
        for publish_ms in [100, 10] {
            figures.push(latency_at_rate(20_000, seconds, publish_ms)?);
        }
    }
    if run("sql_ingest") {
        figures.extend(sql_beside_full_ingest(events)?);
    }

    println!(
        "\n{:<16} {:<30} {:<10} {:>34} {:>34} {:>7} {:>6}",
        "scenario", "what", "unit", "weir (median, min–max)", "baseline (median, min–max)", "ratio", "goal"
    );
    for c in &comparisons {
        println!(
            "{:<16} {:<30} {:<10} {:>34} {:>34} {:>7.2} {:>6}",
            c.scenario,
            c.what,
            c.unit,
            c.subject.show(),
            c.baseline.show(),
            c.ratio,
            format!("≥{}", c.goal)
        );
    }
    println!("\n{:<10} {:<52} {:>12} {:>26} {:<8} goal", "scenario", "metric", "median", "spread", "unit");
    for f in &figures {
        println!(
            "{:<10} {:<52} {:>12.2} {:>26} {:<8} {}",
            f.scenario,
            f.metric,
            f.median,
            format!("{:.2}–{:.2} ({})", f.low, f.high, f.spread),
            f.unit,
            f.goal
        );
    }
    let report = serde_json::json!({
        "machine": machine,
        "quick": args.quick,
        "comparisons": comparisons,
        "figures": figures,
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    eprintln!("\nresults written to {}", args.out.display());
    Ok(())
}
