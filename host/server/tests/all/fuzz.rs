//! Fuzzing the decoders that take outside bytes (issue 14): event JSON lines and their headers
//! (`POST /v1/topics/{t}/events`, `weir produce`), config files, log segments on disk, and
//! checkpoints on disk (manifest, plugin state, Arrow table files). Each target mutates the seeds
//! in its corpus directory (`tests/fuzz/<target>/`, kept in the repository) and inputs it builds
//! itself from real files, and checks that the decoder answers with a value or an error and never
//! panics. An input that panics is written into the corpus (`crash-<hash>`), so every later run
//! replays it; the test names the file. An input that aborts the process (a failed allocation)
//! is left in `$TMPDIR/weir-fuzz-<target>.input`.
//!
//! Budget: `WEIR_FUZZ_SECONDS` per target (default 2, what `./test.sh` runs);
//! `host/server/tests/fuzz/run.sh SECONDS` runs every target for longer.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weir_core::event::{Event, ProduceOptions, parse_events};
use weir_host::checkpoint::CheckpointStore;
use weir_host::config::Config;
use weir_host::pipeline::Pipeline;
use weir_log::{EmbeddedLog, LogConfig};

use crate::support::{Rng, load, repo, runtime};

/// A deterministic mutator.
struct Mutator(Rng);

impl Mutator {
    fn below(&mut self, n: usize) -> usize {
        self.0.below(n)
    }

    /// Bytes the decoders care about.
    fn interesting(&mut self) -> Vec<u8> {
        const TOKENS: &[&[u8]] = &[
            b"\"",
            b"{",
            b"}",
            b"[",
            b"]",
            b":",
            b",",
            b"\n",
            b"\\",
            b"\\u",
            b"\xff",
            b"\x00",
            b"\xc3",
            b"\xe2\x82",
            b"-1",
            b"0",
            b"1e999",
            b"18446744073709551615",
            b"9223372036854775808",
            b"null",
            b"true",
            b"=",
            b"[[",
            b"\"\"\"",
            b"'",
            b"#",
            b"\xf0\x9f\x98",
            b"\x7f\xff\xff\xff",
            b"\xff\xff\xff\xff\xff\xff\xff\xff",
        ];
        TOKENS[self.below(TOKENS.len())].to_vec()
    }

    /// `seed` changed in one to four places: bytes flipped, set, inserted, deleted, duplicated,
    /// or the input cut short.
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut out = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            let at = self.below(out.len() + 1);
            match self.below(7) {
                0 if at < out.len() => out[at] ^= 1 << self.below(8),
                1 if at < out.len() => out[at] = self.below(256) as u8,
                2 => {
                    let token = self.interesting();
                    out.splice(at..at, token);
                }
                3 if at < out.len() => {
                    let end = (at + 1 + self.below(16)).min(out.len());
                    out.drain(at..end);
                }
                4 if at < out.len() => {
                    let end = (at + 1 + self.below(64)).min(out.len());
                    let copy = out[at..end].to_vec();
                    out.splice(at..at, copy);
                }
                5 => out.truncate(at),
                _ => {
                    let n = 1 + self.below(8);
                    let junk: Vec<u8> = (0..n).map(|_| self.below(256) as u8).collect();
                    out.splice(at..at, junk);
                }
            }
        }
        out
    }
}

fn corpus_dir(target: &str) -> PathBuf {
    repo().join("host/server/tests/fuzz").join(target)
}

/// Run `check` on mutations of `seeds` and the corpus of `target` for the budget; every corpus
/// file is also run as it is first.
fn fuzz(target: &str, mut seeds: Vec<Vec<u8>>, check: impl Fn(&[u8])) {
    let budget = std::env::var("WEIR_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let dir = corpus_dir(target);
    let mut corpus: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .flatten()
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
        .collect();
    corpus.sort();
    // An input that aborts the process (an allocation that fails) cannot be caught: the one
    // being checked is kept here until the next.
    let current = std::env::temp_dir().join(format!("weir-fuzz-{target}.input"));
    let run = |input: &[u8], origin: &str| {
        let _ = std::fs::write(&current, input);
        CHECKING.with(|c| c.set(true));
        let outcome = catch_unwind(AssertUnwindSafe(|| check(input)));
        CHECKING.with(|c| c.set(false));
        if outcome.is_err() {
            let name = format!("crash-{:016x}", fxhash(input));
            let path = dir.join(&name);
            std::fs::write(&path, input).unwrap();
            let said = LAST_PANIC.with(|last| last.borrow().clone());
            panic!("fuzz target {target}: {origin} panicked the decoder ({said}); the input is in {}", path.display());
        }
    };
    for (path, bytes) in &corpus {
        run(bytes, &format!("corpus file {}", path.display()));
    }
    seeds.extend(corpus.into_iter().map(|(_, bytes)| bytes));
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut mutator = Mutator(Rng(seed));
    let started = Instant::now();
    let mut runs = 0u64;
    while started.elapsed() < Duration::from_secs_f64(budget) {
        let pick = mutator.below(seeds.len());
        let input = mutator.mutate(&seeds[pick]);
        run(&input, "a mutated input");
        runs += 1;
    }
    eprintln!("fuzz target {target}: {runs} inputs in {budget} s, no panic (mutator seed {seed})");
}

fn fxhash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

thread_local! {
    /// Inside a decoder call: a panic is the fuzzer's finding, reported by it, not printed.
    static CHECKING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// What the last panic in a decoder call said.
    static LAST_PANIC: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CHECKING.with(std::cell::Cell::get) {
                LAST_PANIC.with(|last| *last.borrow_mut() = info.to_string());
            } else {
                default(info);
            }
        }));
    });
}

#[test]
fn fuzz_event_lines() {
    quiet_panics();
    let seeds = vec![
        br#"{"type": "OrderPlaced", "key": "o-1", "id": "e-1", "time": "2026-11-01T10:00:00Z", "data": {"amount": 12.5}}"#
            .to_vec(),
        b"{\"type\": \"T\", \"data\": {}, \"headers\": {\"a\": \"b\"}, \"correlation_id\": \"c\", \"causation_id\": \"d\"}\n{\"type\": \"U\", \"data\": [1, 2]}\n".to_vec(),
        b"[{\"type\": \"T\", \"data\": 1}, {\"type\": \"T\", \"data\": \"x\", \"time\": \"2026-13-45T99:00:00+25:00\"}]".to_vec(),
    ];
    let bare = ProduceOptions { event_type: Some("Bare".into()), key: Some("id".into()) };
    fuzz("event-lines", seeds, |input| {
        for options in [ProduceOptions::default(), bare.clone()] {
            if let Err(e) = parse_events("orders", input, &options) {
                assert!(e.line >= 1, "an error names no line: {e}");
            }
        }
    });
}

#[test]
fn fuzz_config_files() {
    quiet_panics();
    let seeds = vec![
        std::fs::read(repo().join("config/weir.toml")).unwrap(),
        std::fs::read(repo().join("config/redpanda.toml")).unwrap(),
    ];
    let path = Path::new("/weir/fuzz.toml");
    fuzz("config", seeds, |input| {
        let text = String::from_utf8_lossy(input);
        let _ = Config::parse(path, &text);
    });
}

/// Events for a log or a checkpoint to hold.
fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| Event {
            id: format!("e-{i}"),
            event_type: "Tick".into(),
            key: Some(format!("k{}", i % 5)),
            payload: format!("{{\"n\": {i}, \"text\": \"{}\"}}", "é".repeat(i % 7)).into_bytes(),
            content_type: "application/json".into(),
            time_us: 1_700_000_000_000_000 + i as i64,
            headers: vec![("h".into(), vec![i as u8])],
            ..Event::default()
        })
        .collect()
}

/// Every event in every partition of `topic`.
fn read_everything(log: &EmbeddedLog, topic: &str) {
    for range in log.ranges(topic).unwrap_or_default() {
        let mut next = range.start;
        while let Ok(batch) = log.read(topic, range.partition, next, 1 << 16) {
            let Some(last) = batch.last() else { break };
            next = last.position.offset + 1;
        }
    }
}

#[test]
fn fuzz_log_segments() {
    quiet_panics();
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { partitions: 1, ..LogConfig::default() };
    let log_dir = dir.path().join("log");
    {
        let log = EmbeddedLog::open(&log_dir, config.clone()).unwrap();
        log.append("events", events(40)).unwrap();
    }
    let segment =
        find_files(&log_dir).into_iter().max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).unwrap();
    let original = std::fs::read(&segment).unwrap();
    let counter = std::sync::atomic::AtomicU64::new(0);
    fuzz("log-segment", vec![original], |input| {
        // A copy of the log with this segment; opening it either refuses, naming the file, or
        // gives a log every event of which can be read.
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let copy = dir.path().join(format!("copy-{n}"));
        copy_dir(&log_dir, &copy);
        let relative = segment.strip_prefix(&log_dir).unwrap();
        std::fs::write(copy.join(relative), input).unwrap();
        match EmbeddedLog::open(&copy, config.clone()) {
            Ok(log) => read_everything(&log, "events"),
            Err(e) => assert!(e.to_string().contains("events") || e.to_string().contains('/'), "{e}"),
        }
        let _ = std::fs::remove_dir_all(&copy);
    });
}

#[test]
fn fuzz_checkpoint_files() {
    quiet_panics();
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("checkpoints");
    {
        let store = CheckpointStore::open(&checkpoints, 2).unwrap();
        let mut pipeline = Pipeline::new(std::sync::Arc::default());
        pipeline.add(load(&runtime, "tally")).unwrap();
        let batch: Vec<Event> = events(30)
            .into_iter()
            .enumerate()
            .map(|(i, mut e)| {
                e.position = weir_core::event::Position { topic: "events".into(), partition: 0, offset: i as u64 };
                e
            })
            .collect();
        pipeline.process(&batch);
        let captures = pipeline.capture().unwrap();
        let seq = store.next_seq().unwrap();
        store.write(seq, &captures, &Default::default()).unwrap();
    }
    let files = find_files(&checkpoints);
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let counter = std::sync::atomic::AtomicU64::new(0);
    let plugin = std::sync::Mutex::new(Some(load(&runtime, "tally")));
    fuzz("checkpoint", seeds, |input| {
        // The input replaces one of the checkpoint's files (the one its seed most likely came
        // from: the same first byte, else any); restoring either works, sets the checkpoint aside
        // as corrupt, or fails naming what, and never panics.
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let copy = dir.path().join(format!("copy-{n}"));
        copy_dir(&checkpoints, &copy);
        let target = files
            .iter()
            .find(|f| std::fs::read(f).ok().and_then(|b| b.first().copied()) == input.first().copied())
            .unwrap_or(&files[n as usize % files.len()]);
        std::fs::write(copy.join(target.strip_prefix(&checkpoints).unwrap()), input).unwrap();
        let store = CheckpointStore::open(&copy, 2).unwrap();
        let mut pipeline = Pipeline::new(std::sync::Arc::default());
        let taken = plugin.lock().unwrap().take().unwrap_or_else(|| load(&runtime, "tally"));
        pipeline.add(taken).unwrap();
        let _ = store.restore(&mut pipeline);
        if let Some(slot) = pipeline.remove("tally") {
            *plugin.lock().unwrap() = Some(slot);
        }
        let _ = std::fs::remove_dir_all(&copy);
    });
}

fn find_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(find_files(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
