//! Hostile and broken plugins: each failure is contained, reported with plugin, version and
//! position, and neither the host nor a well-behaved plugin beside it notices.

use std::collections::BTreeMap;

use weir_core::row::{RowChange, RowChanges, Value};
use weir_host::sample::OrderStream;
use weir_runtime::{Failure, LoadError, Plugin};

use crate::support::{batch_with, fixture_event, fixture_names, load, runtime, wasm};

/// The `count` column of each successful event's `seen` row.
fn counts(outcomes: &[Result<RowChanges, weir_runtime::EventError>]) -> Vec<i64> {
    outcomes
        .iter()
        .filter_map(|o| o.as_ref().ok())
        .map(|changes| match &changes[..] {
            [RowChange::Upsert { row, .. }] => match row[2] {
                Value::Int64(n) => n,
                ref other => panic!("count is {other:?}"),
            },
            other => panic!("expected one upsert, got {other:?}"),
        })
        .collect()
}

/// Run a batch with one misbehaving event at offset 3 and check containment.
fn misbehaves_at_3(name: &str, event_type: &str) -> (Failure, Plugin) {
    let runtime = runtime();
    let mut plugin = load(&runtime, name);
    let mut orders = load(&runtime, "orders");

    let outcomes = plugin.apply(&batch_with(6, &[(3, event_type)]));
    assert_eq!(outcomes.len(), 6);
    let error = outcomes[3].as_ref().expect_err("offset 3 must fail").clone();
    assert_eq!(&*error.plugin, format!("{name}@0.1.0"));
    assert_eq!(error.position.to_string(), "fixtures/0@3");
    assert!(
        error.to_string().starts_with(&format!("plugin {name}@0.1.0 failed on event fixtures/0@3 ({event_type}): "))
    );
    // The other five went through once each: the state counter was rolled back with the failed
    // batch and replayed exactly once per event.
    assert_eq!(counts(&outcomes), [1, 2, 3, 4, 5], "{outcomes:?}");

    // The plugin keeps working afterwards, with its state intact.
    let after = plugin.apply(&[fixture_event(10, "Normal"), fixture_event(11, "Normal")]);
    assert_eq!(counts(&after), [6, 7]);

    // A well-behaved plugin in the same runtime is unaffected.
    let orders_out = orders.apply(&OrderStream::take_events(1, 10, 100));
    assert!(orders_out.iter().all(Result::is_ok));
    (error.failure, plugin)
}

/// A deleted state key is checked as a written one is: the host does not take 150 keys of 64 KB.
#[test]
fn huge_state_deletes_are_refused_like_huge_writes() {
    let (failure, _) = misbehaves_at_3("huge-deletes", "Misbehave");
    assert!(
        failure.to_string().contains("bytes is over the limit of 4096")
            && failure.to_string().contains("state key of 655"),
        "{failure}"
    );
}

#[test]
fn infinite_loop_is_stopped_by_the_cpu_budget() {
    let (failure, plugin) = misbehaves_at_3("infinite-loop", "Misbehave");
    assert_eq!(failure, Failure::CpuBudget(500));
    assert_eq!(failure.to_string(), "ran past its CPU budget of 500 ms per batch and was stopped");
    assert!(plugin.instances_started() >= 2, "the trapped instance is replaced");
}

/// `std::thread::sleep(60 s)` in a plugin: the sandbox's clock stands still, so a sleep ends at
/// once (before, the batch call, and with it the ingest thread and shutdown, waited a minute).
#[test]
fn a_plugin_that_sleeps_does_not_hold_the_host() {
    let runtime = runtime();
    let mut plugin = load(&runtime, "sleeper");
    let started = std::time::Instant::now();
    let outcomes = plugin.apply(&batch_with(6, &[(3, "Misbehave")]));
    let waited = started.elapsed();
    assert!(waited < std::time::Duration::from_secs(10), "the batch waited {waited:?} for the plugin's sleep");
    assert_eq!(counts(&outcomes), [1, 2, 3, 4, 5, 6], "{outcomes:?}");
}

#[test]
fn memory_bomb_hits_the_memory_cap() {
    let (failure, _) = misbehaves_at_3("memory-bomb", "Misbehave");
    assert_eq!(failure, Failure::MemoryCap(32 << 20));
}

#[test]
fn panic_is_reported_with_its_message_and_its_state_writes_undone() {
    let (failure, plugin) = misbehaves_at_3("panic", "Misbehave");
    let Failure::Trapped(message) = failure else { panic!("{failure:?}") };
    assert!(message.contains("fixture panic on event at offset 3"), "{message}");
    // The panicking event wrote count = 1000000 before it died; that write is gone.
    assert_eq!(plugin.state().get(b"count"), Some(&b"7"[..]));
}

#[test]
fn huge_output_is_refused_over_the_cap() {
    let (failure, _) = misbehaves_at_3("huge-output", "Misbehave");
    match failure {
        Failure::OutputTooLarge { bytes, cap } => {
            assert_eq!(cap, 1 << 20);
            assert!(bytes > 4 << 20, "{bytes}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_typed_values_and_undeclared_tables_are_refused() {
    let (failure, _) = misbehaves_at_3("bad-output", "Misbehave");
    assert_eq!(failure, Failure::InvalidOutput("table seen: column offset expects int64 but got string".into()));
    let (failure, _) = misbehaves_at_3("bad-output", "MisbehaveTable");
    assert_eq!(failure, Failure::InvalidOutput("table undeclared is not one this plugin declared".into()));
}

#[test]
fn a_component_of_another_world_is_refused_at_load() {
    let err = runtime().load(&wasm("wrong-world"), BTreeMap::new()).err().expect("must not load");
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("wrong-world.wasm implements neither weir world"), "{text}");
    assert!(text.contains("wasi:cli/run@0.2"), "{text}");
}

#[test]
fn files_that_are_not_components_are_refused_at_load() {
    let runtime = runtime();
    let not_wasm = crate::support::fixtures_dir().join("not-wasm.wasm");
    let err = runtime.load(&not_wasm, BTreeMap::new()).err().expect("text file");
    assert!(err.to_string().contains("not-wasm.wasm is not a WebAssembly file (it starts with 74 68 69 73"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let err = runtime.load(&core, BTreeMap::new()).err().expect("core module");
    assert!(matches!(err, LoadError::CoreModule { .. }), "{err}");

    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, b"").unwrap();
    let err = runtime.load(&empty, BTreeMap::new()).err().expect("empty");
    assert!(err.to_string().contains("it starts with nothing: it is empty"), "{err}");

    let err = runtime.load(&dir.path().join("missing.wasm"), BTreeMap::new()).err().expect("missing");
    assert!(
        err.to_string().starts_with("cannot read plugin file ") && err.to_string().contains("missing.wasm"),
        "{err}"
    );

    let truncated = dir.path().join("truncated.wasm");
    let bytes = std::fs::read(wasm("orders")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = runtime.load(&truncated, BTreeMap::new()).err().expect("truncated");
    assert!(matches!(err, LoadError::Invalid { .. }), "{err}");
}

#[test]
fn every_fixture_has_a_test() {
    // Add the test first, then the fixture's name here.
    const TESTED: &[&str] = &[
        "alarm",
        "bad-output",
        "huge-deletes",
        "huge-output",
        "infinite-loop",
        "memory-bomb",
        "panic",
        "relay",
        "sandbox-probe",
        "sleeper",
        "tally",
        "tally-wide",
        "typed-columns",
        "wrong-world",
    ];
    assert_eq!(fixture_names(), TESTED);
}

#[test]
fn handler_emits_with_its_parameters_and_is_not_a_projection() {
    let runtime = runtime();
    let params = BTreeMap::from([("threshold".to_string(), "3000".to_string())]);
    let mut handler = runtime.load(&wasm("high-value-orders"), params).unwrap();
    let events: Vec<_> =
        OrderStream::take_events(3, 50, 5_000).into_iter().filter(|e| handler.info().wants(e)).collect();
    let finish = |cause: &weir_core::event::Event, n, out| Ok(weir_host::output::emitted_event("hvo", cause, n, out));
    let outcomes = handler.handle(&events, &finish);
    let emitted: Vec<_> = outcomes.into_iter().flat_map(|o| o.unwrap()).collect();
    assert!(!emitted.is_empty());
    for e in &emitted {
        assert_eq!((e.position.topic.as_str(), e.event_type.as_str()), ("order-alerts", "HighValueOrderFlagged"));
        let payload: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        assert!(payload["amount"].as_f64().unwrap() >= 3000.0, "{payload}");
        assert_eq!(payload["threshold"], 3000.0);
    }
    let refused = handler.apply(&events[..1]);
    assert!(refused[0].as_ref().unwrap_err().to_string().contains("a handler cannot apply events as a projection"));

    let bad = BTreeMap::from([("threshold".to_string(), "lots".to_string())]);
    let mut handler = runtime.load(&wasm("high-value-orders"), bad).unwrap();
    let err = handler.handle(&events[..1], &finish).remove(0).unwrap_err();
    assert!(err.to_string().contains("refused it: parameter threshold=\"lots\": invalid float literal"), "{err}");
}

#[test]
fn compiled_components_are_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let first = weir_runtime::PluginRuntime::new(crate::support::test_limits(), Some(dir.path())).unwrap();
    first.load(&wasm("orders"), BTreeMap::new()).unwrap();
    let stats = first.compile_cache_stats().unwrap();
    assert_eq!((stats.hits, stats.misses), (0, 1), "the first load compiles");
    assert!(!walk(dir.path()).is_empty(), "the cache directory stays empty");
    // A second runtime (a restart) loads from the same cache without compiling.
    let restarted = weir_runtime::PluginRuntime::new(crate::support::test_limits(), Some(dir.path())).unwrap();
    restarted.load(&wasm("orders"), BTreeMap::new()).unwrap();
    let stats = restarted.compile_cache_stats().unwrap();
    assert_eq!((stats.hits, stats.misses), (1, 0), "the restart reuses the compiled component");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
    }
    out
}

#[test]
fn the_sandbox_gives_no_files_env_network_clock_or_randomness() {
    let runtime = runtime();
    let mut probe = load(&runtime, "sandbox-probe");
    let mut seen = Vec::new();
    for run in 0..2 {
        let outcome = probe.apply(&[fixture_event(run, "Normal")]).remove(0).expect("probe runs");
        let observed: BTreeMap<String, String> = outcome
            .into_iter()
            .map(|change| match change {
                RowChange::Upsert { row, .. } => match (&row[0], &row[1]) {
                    (Value::String(k), Value::String(v)) => (k.clone(), v.clone()),
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(observed["file"].starts_with("Err("), "{observed:?}");
        assert!(observed["dir"].starts_with("Err("), "{observed:?}");
        assert!(observed["tcp"].starts_with("Err("), "{observed:?}");
        assert_eq!(observed["env"], "0");
        assert_eq!(observed["args"], "0");
        assert_eq!(observed["wall_clock_us"], "0", "the wall clock stands at the epoch");
        assert_eq!(observed["monotonic_ns"], "0", "the monotonic clock does not move");
        seen.push(observed["hash_seed"].clone());
    }
    // A fresh instance (after a restart, or a replay) sees the same "random" seed.
    let mut again = load(&runtime, "sandbox-probe");
    let outcome = again.apply(&[fixture_event(0, "Normal")]).remove(0).unwrap();
    let seed = outcome.iter().find_map(|c| match c {
        RowChange::Upsert { row, .. } if row[0] == Value::String("hash_seed".into()) => Some(row[1].to_string()),
        _ => None,
    });
    assert_eq!(seed.unwrap().trim_matches('"'), seen[0]);
}
