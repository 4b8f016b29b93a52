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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use weir_host::plugin::{Limits, PluginRuntime};
use weir_host::sample::OrderStream;

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
    unit: &'static str,
    events: usize,
    batch: usize,
    subject: Rate,
    baseline: Rate,
    /// subject median / baseline median.
    ratio: f64,
    goal: f64,
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
        .and_then(|text| text.lines().find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())))
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu,
        os: std::env::consts::OS.into(),
        profile: if cfg!(debug_assertions) { "debug" } else { "release" },
    }
}

fn to_sdk_event(e: &weir_host::event::Event) -> weir_sdk::Event {
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

/// The orders projection, wasm through the runtime vs the same logic natively.
fn wasm_vs_native(events: usize, repeats: usize, batch: usize) -> anyhow::Result<Comparison> {
    let orders_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/orders");
    let wasm = weir_host::build::build_plugin(&orders_dir)?;
    let runtime = PluginRuntime::new(Limits::default(), None)?;
    let host_events = OrderStream::take_events(1, 10_000, events);
    let sdk_events: Vec<weir_sdk::Event> = host_events.iter().map(to_sdk_event).collect();
    let mean_payload = host_events.iter().map(|e| e.payload.len()).sum::<usize>() / events.max(1);
    eprintln!("wasm_vs_native: {events} events, mean payload {mean_payload} bytes, batches of {batch}");

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

        let mut harness = weir_sdk::testing::ProjectionHarness::<orders::Orders>::new();
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
        unit: "events/s",
        events,
        batch,
        ratio: subject.median / baseline.median,
        subject,
        baseline,
        goal: 0.8,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let events = args.events.unwrap_or(if args.quick { 20_000 } else { 1_000_000 });
    let repeats = args.repeats.unwrap_or(if args.quick { 1 } else { 5 }).max(1);
    let machine = machine();
    eprintln!("weir-bench on {} cores, {} ({} build)", machine.cores, machine.cpu, machine.profile);

    let comparisons = vec![wasm_vs_native(events, repeats, args.batch)?];

    println!("\n{:<16} {:<10} {:>34} {:>34} {:>7} {:>6}", "scenario", "unit", "weir (median, min–max)", "baseline (median, min–max)", "ratio", "goal");
    for c in &comparisons {
        println!(
            "{:<16} {:<10} {:>34} {:>34} {:>7.2} {:>6}",
            c.scenario,
            c.unit,
            c.subject.show(),
            c.baseline.show(),
            c.ratio,
            format!("≥{}", c.goal)
        );
    }
    let report = serde_json::json!({
        "machine": machine,
        "quick": args.quick,
        "comparisons": comparisons,
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    eprintln!("\nresults written to {}", args.out.display());
    Ok(())
}
