//! Hostile plugins a Rust crate cannot be: several linear memories, a table grown without end,
//! output whose strings all point at one region of guest memory. Each is a core module written in
//! WAT that implements the `projection` world's canonical ABI by hand (a fixed `describe`, an
//! `apply` that misbehaves and then answers every event with the same row changes), made a
//! component with wit-component against `wit/weir.wit`, and loaded like any plugin file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use weir_host::sample::OrderStream;
use weir_runtime::{Failure, Plugin};

use crate::support::{fixture_event, load, repo, runtime, test_limits};

/// Where `describe`'s answer and the static row changes live.
const DATA: u32 = 1024;
/// The batch's results: one 12-byte `result<list<row-change>, event-error>` per event.
const RESULTS: u32 = 0x1_0000;
/// The most events one call may carry (the results area's size).
const MAX_EVENTS: u32 = 4096;
/// The (pointer, length) pair `apply` returns.
const RETURN: u32 = RESULTS + MAX_EVENTS * 12;
/// One MiB of guest memory (zeros: valid UTF-8) that the aliasing fixture's strings point at.
const BIG: u32 = 0x10_0000;
const BIG_LEN: u32 = 1 << 20;
/// Where `cabi_realloc` starts handing out memory for the host's arguments; reset after each call.
const HEAP: u32 = 0x20_0000;

/// How the fixture's `apply` misbehaves before answering.
#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    /// It does not: every event gets no row changes (the control).
    None,
    /// Grows a table by 65,536 elements 1,024 times (64M elements, 512 MiB of host memory).
    GrowTable,
    /// Grows three more memories to 24 MiB each: each under a 32 MiB cap, 72 MiB together.
    GrowMemories,
    /// Answers each event with 1,000 upserts whose one value is the same 1 MiB string: 1 GB
    /// for the host to copy per event from 1 MiB of guest memory.
    AliasOutput,
}

/// Guest memory laid out by the test, written as one data segment.
struct Layout {
    bytes: Vec<u8>,
}

impl Layout {
    fn at(&self) -> u32 {
        DATA + self.bytes.len() as u32
    }

    fn align(&mut self, to: usize) {
        while !self.bytes.len().is_multiple_of(to) {
            self.bytes.push(0);
        }
    }

    fn u32s(&mut self, values: &[u32]) -> u32 {
        self.align(4);
        let at = self.at();
        for v in values {
            self.bytes.extend_from_slice(&v.to_le_bytes());
        }
        at
    }

    /// A string's bytes; its (pointer, length).
    fn string(&mut self, s: &str) -> [u32; 2] {
        let at = self.at();
        self.bytes.extend_from_slice(s.as_bytes());
        [at, s.len() as u32]
    }

    /// A `list<string>`; its (pointer, length).
    fn strings(&mut self, items: &[&str]) -> [u32; 2] {
        let pairs: Vec<u32> = items.iter().flat_map(|s| self.string(s)).collect();
        [self.u32s(&pairs), items.len() as u32]
    }

    fn escaped(&self) -> String {
        self.bytes.iter().fold(String::new(), |mut out, b| {
            let _ = write!(out, "\\{b:02x}");
            out
        })
    }
}

/// Build the fixture `name` and write it as a component file.
fn component(name: &str, misbehaviour: Misbehaviour, dir: &std::path::Path) -> PathBuf {
    let mut data = Layout { bytes: Vec::new() };
    // describe: projection-info { name, version, description, subscription { topics, event-types },
    // tables: [ table-schema { name "t", description, columns [ k: string ], primary-key [k] } ] }
    let [name_ptr, name_len] = data.string(name);
    let [version_ptr, version_len] = data.string("0.1.0");
    let [about_ptr, about_len] = data.string("a hostile fixture written in WAT");
    let [topics_ptr, topics_len] = data.strings(&["fixtures"]);
    let [column_ptr, column_len] = data.string("k");
    let [pk_ptr, pk_len] = data.strings(&["k"]);
    let [table_ptr, table_len] = data.string("t");
    // column { name: string, kind: column-type (u8), nullable: bool (u8) }: 12 bytes.
    let columns = data.u32s(&[column_ptr, column_len, 0]);
    let tables = data.u32s(&[table_ptr, table_len, about_ptr, about_len, columns, 1, pk_ptr, pk_len]);
    let info = data.u32s(&[
        name_ptr,
        name_len,
        version_ptr,
        version_len,
        about_ptr,
        about_len,
        topics_ptr,
        topics_len,
        topics_ptr,
        0,
        tables,
        1,
    ]);
    // The row changes every event gets: none, or 1,000 upserts into `t` of one value, a
    // `value::string` (case 1, payload at offset 8) pointing at BIG.
    let (rows, rows_len) = match misbehaviour {
        Misbehaviour::AliasOutput => {
            data.align(8);
            let value = data.u32s(&[1, 0, BIG, BIG_LEN]);
            // row-change::upsert (case 0) { table: string, row: list<value> }: 20 bytes.
            let one = [0, table_ptr, table_len, value, 1];
            let all: Vec<u32> = std::iter::repeat_n(one, 1_000).flatten().collect();
            (data.u32s(&all), 1_000)
        }
        _ => (data.u32s(&[]), 0),
    };
    assert!(data.at() < RESULTS, "the fixture's data overlaps its results");

    let (declarations, misbehave) = match misbehaviour {
        Misbehaviour::None | Misbehaviour::AliasOutput => (String::new(), String::new()),
        Misbehaviour::GrowTable => (
            "(table $t 1 funcref)".to_string(),
            "(block $grown (loop $grow
               (br_if $grown (i32.ge_u (local.get $i) (i32.const 1024)))
               (drop (table.grow $t (ref.null func) (i32.const 65536)))
               (local.set $i (i32.add (local.get $i) (i32.const 1)))
               (br $grow)))
             (local.set $i (i32.const 0))"
                .to_string(),
        ),
        Misbehaviour::GrowMemories => (
            "(memory $m1 1) (memory $m2 1) (memory $m3 1)".to_string(),
            "(drop (memory.grow $m1 (i32.const 383)))
             (drop (memory.grow $m2 (i32.const 383)))
             (drop (memory.grow $m3 (i32.const 383)))"
                .to_string(),
        ),
    };
    let pages = HEAP / 65536 + 1;
    let data_text = data.escaped();
    let wat = format!(
        r#"(module
  (memory (export "memory") {pages})
  {declarations}
  (global $heap (mut i32) (i32.const {HEAP}))
  (data (i32.const {DATA}) "{data_text}")

  ;; A bump allocator for the host's arguments, emptied after each call.
  (func (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
    (local $ptr i32) (local $end i32) (local $have i32)
    (if (local.get $old) (then unreachable))
    (local.set $ptr (i32.and (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
                             (i32.sub (i32.const 0) (local.get $align))))
    (local.set $end (i32.add (local.get $ptr) (local.get $size)))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq (memory.grow (i32.shr_u (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535))
                                            (i32.const 16)))
                    (i32.const -1))
          (then unreachable))))
    (global.set $heap (local.get $end))
    (local.get $ptr))

  (func (export "weir:plugin/projector@0.1.0#describe") (result i32)
    (i32.const {info}))

  (func (export "weir:plugin/projector@0.1.0#apply") (param $events i32) (param $len i32) (result i32)
    (local $i i32) (local $at i32)
    {misbehave}
    (if (i32.gt_u (local.get $len) (i32.const {MAX_EVENTS})) (then unreachable))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
      (local.set $at (i32.add (i32.const {RESULTS}) (i32.mul (local.get $i) (i32.const 12))))
      (i32.store8 (local.get $at) (i32.const 0))
      (i32.store offset=4 (local.get $at) (i32.const {rows}))
      (i32.store offset=8 (local.get $at) (i32.const {rows_len}))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (global.set $heap (i32.const {HEAP}))
    (i32.store (i32.const {RETURN}) (i32.const {RESULTS}))
    (i32.store offset=4 (i32.const {RETURN}) (local.get $len))
    (i32.const {RETURN}))
)"#
    );
    let mut module = wat::parse_str(&wat).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_path(repo().join("wit")).expect("wit/weir.wit");
    let world = resolve.select_world(&[package], Some("projection")).expect("the projection world");
    wit_component::embed_component_metadata(&mut module, &resolve, world, wit_component::StringEncoding::UTF8)
        .expect("component metadata");
    let bytes = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .and_then(|mut encoder| encoder.encode())
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Load the fixture into a runtime with the test limits (32 MiB of memory, 1 MiB of output per
/// event), run two batches through it, and check a well-behaved plugin beside it is unaffected.
fn run(name: &str, misbehaviour: Misbehaviour) -> (Vec<Option<Failure>>, Plugin) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let mut plugin = runtime
        .load(&component(name, misbehaviour, dir.path()), BTreeMap::new())
        .unwrap_or_else(|e| panic!("loading {name}: {e}"));
    let mut orders = load(&runtime, "orders");
    let mut failures = Vec::new();
    for batch in
        [vec![fixture_event(0, "A"), fixture_event(1, "B"), fixture_event(2, "C")], vec![fixture_event(3, "D")]]
    {
        let outcomes = plugin.apply(&batch);
        assert_eq!(outcomes.len(), batch.len(), "{name}");
        for (outcome, event) in outcomes.into_iter().zip(&batch) {
            failures.push(match outcome {
                Ok(changes) => {
                    assert!(changes.is_empty(), "{name}: {changes:?}");
                    None
                }
                Err(error) => {
                    assert_eq!(error.position, event.position, "{name}");
                    assert_eq!(&*error.plugin, format!("{name}@0.1.0"));
                    Some(error.failure)
                }
            });
        }
    }
    let orders_out = orders.apply(&OrderStream::take_events(1, 10, 100));
    assert!(orders_out.iter().all(Result::is_ok), "a plugin beside {name} failed: {orders_out:?}");
    (failures, plugin)
}

/// The control: the hand-written ABI is right, so what the others fail on is their misbehaviour.
#[test]
fn a_plugin_written_in_wat_runs_like_any_other() {
    let (failures, plugin) = run("wat-control", Misbehaviour::None);
    assert_eq!(failures, [None, None, None, None]);
    assert_eq!(plugin.info().name, "wat-control");
    assert_eq!(plugin.instances_started(), 2, "one to describe, one to run");
}

/// A table grown without end stops at the element limit (before: 64M elements, 512 MiB of the
/// host's memory, were granted per call).
#[test]
fn table_growth_stops_at_the_element_limit() {
    let (failures, plugin) = run("table-bomb", Misbehaviour::GrowTable);
    for failure in &failures {
        assert_eq!(failure.as_ref(), Some(&Failure::TableLimit(100_000)), "{failures:?}");
    }
    assert_eq!(failures[0].as_ref().unwrap().to_string(), "tried to grow its tables past the limit of 100000 elements");
    assert!(plugin.instances_started() >= 3, "the trapped instance is replaced");
}

/// Several memories share the memory cap (before: each of three extra memories could take 24
/// MiB under a 32 MiB cap, 72 MiB in all).
#[test]
fn several_memories_share_one_memory_cap() {
    let (failures, _) = run("memory-split", Misbehaviour::GrowMemories);
    for failure in &failures {
        assert_eq!(failure.as_ref(), Some(&Failure::MemoryCap(test_limits().memory_bytes)), "{failures:?}");
    }
}

/// Output pointing a thousand times at one MiB of guest memory is refused once the host has copied
/// its limit for the call, not after copying a gigabyte per event (before: wasmtime's default of
/// 128 MiB per call stopped it, as a trap that did not name the output cap).
#[test]
fn aliased_output_is_stopped_before_it_is_copied() {
    let (failures, _) = run("alias-output", Misbehaviour::AliasOutput);
    let limit = 16 << 20;
    for failure in &failures {
        assert_eq!(failure.as_ref(), Some(&Failure::CopyLimit { limit, cap: 1 << 20 }), "{failures:?}");
    }
    let text = failures[0].as_ref().unwrap().to_string();
    assert!(
        text.contains("more than 16777216 bytes in one call") && text.contains("1048576 bytes of output per event")
    );
    assert_eq!(failures[0].as_ref().unwrap().kind(), "output_too_large");
}
