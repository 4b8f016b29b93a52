//! The pipeline: routes each batch of events to the plugins that want it, applies projections'
//! row changes to their read models, collects handlers' emitted events, counts failures, and
//! publishes read-model snapshots to the query catalog.
//!
//! Each plugin has its own source positions (the next offset per topic and partition). An event
//! below a plugin's position was already applied (before a restart, or before a rebalance handed
//! the partition back) and is skipped for that plugin: this is what makes replays exactly-once.
//!
//! **Invariant:** an event's row changes reach its read model all together or not at all, and a
//! snapshot is published only between batches, so queries never see half an event.
//! **Invariant:** a plugin's position, its read model and its state always describe the same
//! set of events; [`Pipeline::capture`] takes all three at one instant.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::output::{
    DeadLetterBook, JournalRun, OnError, Outgoing, dead_letter, dead_letter_topic, emitted_event, journal_record,
    journal_topic,
};
use crate::status::{PluginState, PluginStatus, RebuildStatus};

use weir_core::event::{Event, PositionMap, StartAt};
use weir_core::meter::LatencyHistogram;
use weir_core::row::{RowChanges, TableSchema};
use weir_core::source::{EventSink, PartitionEnd, Source};
use weir_runtime::{EventError, Failure, KeyedState, Plugin, PluginKind, SharedLogs};
use weir_sql::query::{Catalog, QueryError};
use weir_sql::readmodel::{ReadModel, ReadModelError, ReadModelSnapshot};

/// Each plugin's log ring by name, shared with the admin API.
pub type LogRings = Arc<Mutex<BTreeMap<String, SharedLogs>>>;

/// Failures kept per plugin for reporting.
const RECENT_FAILURES: usize = 100;

/// Per plugin, the end of each partition of a topic of its.
type TopicEnds = BTreeMap<String, Vec<(u32, u64)>>;

/// How often status reads where the dead-letter topics end.
const DEAD_LETTER_ENDS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// A projection's batch goes through its plugin in this many parts when a worker applies one
/// part's row changes while the plugin computes the next; parts are at least [`MIN_PART`] events.
const PIPELINE_PARTS: usize = 8;
const MIN_PART: usize = 64;

/// Fingerprints of earlier versions a plugin accepts checkpoints of (swaps between checkpoints).
pub const MAX_TAKEN_OVER: usize = 16;

struct Slot {
    plugin: Plugin,
    model: Option<ReadModel>,
    ok: u64,
    failed: u64,
    recent_failures: VecDeque<EventError>,
    positions: PositionMap,
    /// Where the plugin starts without a checkpoint of its own.
    start: StartAt,
    /// Topics whose start (not `earliest`) is still to be looked up in the source.
    unresolved: Vec<String>,
    /// Its deploy number under its name.
    deploy: u32,
    /// Paused: skipped by every batch; keeps its position, state and tables.
    paused: bool,
    /// Checkpoint fingerprints, beside its own, whose state is this plugin's (the version it
    /// took over from).
    accepts: Vec<String>,
    /// A reader of its own while it is behind the shared feed (deployed, resumed, or rebuilding
    /// as a shadow): it joins the shared feed once this reader finds nothing more to read.
    catch_up: Option<Box<dyn Source>>,
    /// Another version of it replaying history beside it, not yet visible to queries.
    shadow: Option<Box<Shadow>>,
    /// Why the last rebuild beside it stopped.
    rebuild_error: Option<String>,
    /// What a failed event does.
    on_error: OnError,
    /// Why it stopped (the `stop` policy): it is paused at the event it failed on.
    stopped: Option<String>,
    /// Events sent to its dead-letter topic since it started.
    dead_lettered: u64,
    /// Re-processing journaled batches after a restart (they are not journaled again).
    replaying: bool,
    /// Its batches are journaled (a handler, unless the host runs at least once).
    journal: bool,
    /// Which of its dead letters are settled.
    dead_letters: DeadLetterBook,
    /// What it did, per partition and per batch (when the host is metered).
    meter: SlotMeter,
}

/// What a plugin did since it started serving: per partition, events in and what they produced;
/// failures by kind; the time of each batch. Read by status and `/metrics`.
#[derive(Default)]
struct SlotMeter {
    /// Counted at all (`[server] metrics`).
    on: bool,
    partitions: HashMap<String, BTreeMap<u32, PartitionMeter>>,
    errors: BTreeMap<&'static str, u64>,
    batches: LatencyHistogram,
}

/// One plugin's work on one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PartitionMeter {
    /// Events it processed.
    pub events: u64,
    /// Row changes (a projection) or events emitted (a handler) for them.
    pub produced: u64,
    /// Time of the last event it processed (microseconds since the Unix epoch).
    pub last_time_us: i64,
}

impl SlotMeter {
    /// Count a processed batch: `events` (in partition runs), with what each produced.
    fn count(&mut self, events: &[Event], produced: &[u64]) {
        for (start, end) in partition_runs(events) {
            let position = &events[start].position;
            let partitions = match self.partitions.get_mut(position.topic.as_str()) {
                Some(partitions) => partitions,
                None => self.partitions.entry(position.topic.clone()).or_default(),
            };
            let meter = partitions.entry(position.partition).or_default();
            meter.events += (end - start) as u64;
            meter.produced += produced.get(start..end).map_or(0, |p| p.iter().sum());
            meter.last_time_us = events[end - 1].time_us;
        }
    }
}

/// A version replaying history into tables of its own while the serving version keeps serving.
struct Shadow {
    slot: Slot,
    reason: &'static str,
    started: Instant,
    events: u64,
}

impl Slot {
    fn new(plugin: Plugin, model: Option<ReadModel>) -> Slot {
        Slot {
            plugin,
            model,
            ok: 0,
            failed: 0,
            recent_failures: VecDeque::new(),
            positions: PositionMap::new(),
            start: StartAt::Earliest,
            unresolved: Vec::new(),
            deploy: 1,
            paused: false,
            accepts: Vec::new(),
            catch_up: None,
            shadow: None,
            rebuild_error: None,
            on_error: OnError::default(),
            stopped: None,
            dead_lettered: 0,
            dead_letters: DeadLetterBook::default(),
            replaying: false,
            journal: true,
            meter: SlotMeter::default(),
        }
    }

    /// Whether the shared feed (the host's source) brings it events.
    fn on_shared_feed(&self) -> bool {
        !self.paused && self.catch_up.is_none()
    }

    fn name(&self) -> &str {
        &self.plugin.info().name
    }

    /// Run `events` (a batch in partition runs) through this plugin: skip what it applied
    /// before, advance its positions, apply or collect what it produced, dead-letter what it
    /// failed on (or stop at it, under the `stop` policy).
    fn process(
        &mut self,
        events: &[Event],
        runs: &[(usize, usize)],
        sink: Option<&dyn EventSink>,
        workers: Option<&rayon::ThreadPool>,
        outcome: &mut BatchOutcome,
    ) {
        let info = self.plugin.info();
        let mut fresh_from = Vec::with_capacity(runs.len());
        for &(start, end) in runs {
            let first = &events[start].position;
            if !info.topics.contains(&first.topic) {
                fresh_from.push(u64::MAX);
                continue;
            }
            let next = self.positions.entry((first.topic.clone(), first.partition)).or_insert(0);
            fresh_from.push(*next);
            *next = (*next).max(events[end - 1].position.offset + 1);
        }
        let fresh = |run: usize, e: &Event| e.position.offset >= fresh_from[run] && info.wants(e);
        // Most batches are wanted whole; copy events only when the plugin skips some.
        let all = runs.iter().enumerate().all(|(run, &(s, e))| events[s..e].iter().all(|ev| fresh(run, ev)));
        let wanted: std::borrow::Cow<'_, [Event]> = if all {
            events.into()
        } else {
            let mut picked = Vec::new();
            for (run, &(s, e)) in runs.iter().enumerate() {
                picked.extend(events[s..e].iter().filter(|ev| fresh(run, ev)).cloned());
            }
            picked.into()
        };
        if wanted.is_empty() {
            return;
        }
        // A handler's batches are journaled (before what they emit is written), so that after a
        // crash it re-processes them in the same order and emits the same events again.
        if self.model.is_none() && self.journal && !self.replaying {
            outcome.outgoing.push(Outgoing::Journal(journal_record(&info.name, &journal_runs(&wanted))));
        }
        let mut failures = Vec::new();
        let processed;
        let started = self.meter.on.then(Instant::now);
        let mut produced = Vec::with_capacity(if self.meter.on { wanted.len() } else { 0 });
        match &mut self.model {
            Some(model) => {
                // Two stages: the plugin's calls, and applying what each returned to the read
                // model. With workers, the batch goes through the plugin in parts and a worker
                // applies each part while the plugin works on the next one. Either way every
                // change is applied, in event order, before this returns.
                let (metered, label) = (self.meter.on, self.plugin.info().label());
                let plugin = &mut self.plugin;
                let (ok, failures, produced) = (&mut self.ok, &mut failures, &mut produced);
                let mut apply = |start: usize, results: Vec<Result<RowChanges, EventError>>| {
                    for (event, result) in wanted[start..].iter().zip(results) {
                        if metered {
                            produced.push(result.as_ref().map_or(0, |changes| changes.len() as u64));
                        }
                        match result
                            .and_then(|changes| model.apply(changes).map_err(|e| model_failure(&label, event, e)))
                        {
                            Ok(()) => *ok += 1,
                            Err(e) => failures.push((event.clone(), e)),
                        }
                    }
                };
                let part = (wanted.len() / PIPELINE_PARTS).max(MIN_PART);
                match workers {
                    Some(workers) if wanted.len() > part => {
                        let (results_tx, results_rx) = std::sync::mpsc::channel();
                        let mut called = 0;
                        workers.scope(|scope| {
                            scope.spawn(move |_| {
                                for (start, results) in results_rx {
                                    apply(start, results);
                                }
                            });
                            for (i, events) in wanted.chunks(part).enumerate() {
                                let results = plugin.apply(events);
                                let stopped = results.len() < events.len();
                                called += results.len();
                                if results_tx.send((i * part, results)).is_err() || stopped {
                                    break;
                                }
                            }
                            drop(results_tx);
                        });
                        processed = called;
                    }
                    _ => {
                        let results = plugin.apply(&wanted);
                        processed = results.len();
                        apply(0, results);
                    }
                }
            }
            None => {
                let name = info.name.clone();
                let finish = |cause: &Event, n: usize, out| emit_checked(&name, sink, cause, n, out);
                let results = if wanted.iter().any(is_tick) {
                    handle_with_ticks(&mut self.plugin, &wanted, &finish, &mut outcome.outgoing, &mut failures)
                } else {
                    self.plugin.handle(&wanted, &finish)
                };
                processed = results.len();
                for (event, result) in wanted.iter().zip(results) {
                    match result {
                        Ok(emitted) => {
                            self.ok += u64::from(!is_tick(event));
                            if self.meter.on {
                                produced.push(emitted.len() as u64);
                            }
                            outcome.outgoing.extend(emitted.into_iter().map(Outgoing::Emitted));
                        }
                        Err(e) => {
                            if self.meter.on {
                                produced.push(0);
                            }
                            failures.push((event.clone(), e));
                        }
                    }
                }
            }
        }
        let mut done = processed;
        if processed < wanted.len()
            && let Some((failed, error)) = failures.last()
        {
            // Stopped at it: it is processed again once the plugin resumes.
            done -= 1;
            *self.meter.errors.entry(error.failure.kind()).or_default() += 1;
            self.stop_at(failed, error, events, runs, &fresh_from);
            failures.pop();
        }
        if let Some(started) = started {
            self.meter.batches.observe(started.elapsed());
            self.meter.count(&wanted[..done], &produced[..done.min(produced.len())]);
            for (_, error) in &failures {
                *self.meter.errors.entry(error.failure.kind()).or_default() += 1;
            }
        }
        for (event, failure) in &failures {
            self.failed += 1;
            tracing::warn!(%failure, "event failed; sent to the dead-letter topic");
            self.dead_lettered += 1;
            outcome.outgoing.push(Outgoing::DeadLetter(dead_letter_within(self.name(), event, failure, sink)));
            if self.recent_failures.len() == RECENT_FAILURES {
                self.recent_failures.pop_front();
            }
            self.recent_failures.push_back(failure.clone());
            outcome.failures.push(failure.clone());
        }
    }

    /// The `stop` policy: the plugin failed on `failed`, and ran nothing after it. Its
    /// positions go back to that event (and to where they were for the partitions after it in
    /// the batch), and it stops there until resumed.
    fn stop_at(
        &mut self,
        failed: &Event,
        error: &EventError,
        events: &[Event],
        runs: &[(usize, usize)],
        fresh_from: &[u64],
    ) {
        let Some(at) = runs.iter().position(|&(s, e)| events[s..e].iter().any(|ev| ev.position == failed.position))
        else {
            return;
        };
        let key = (failed.position.topic.clone(), failed.position.partition);
        self.positions.insert(key, failed.position.offset);
        for (run, &(start, _)) in runs.iter().enumerate().skip(at + 1) {
            if fresh_from[run] == u64::MAX {
                continue;
            }
            let p = &events[start].position;
            let position = self.positions.entry((p.topic.clone(), p.partition)).or_insert(0);
            *position = (*position).min(fresh_from[run]);
        }
        self.failed += 1;
        self.paused = true;
        self.stopped = Some(error.to_string());
        tracing::error!(%error, "plugin stopped at the event it failed on (on_error = \"stop\"); resume it once fixed");
        if self.recent_failures.len() == RECENT_FAILURES {
            self.recent_failures.pop_front();
        }
        self.recent_failures.push_back(error.clone());
    }

    /// Events between its positions and the ends of `ends`.
    fn behind(&self, ends: &[PartitionEnd]) -> u64 {
        ends.iter()
            .filter(|e| self.plugin.info().topics.contains(&e.topic))
            .map(|e| e.end.saturating_sub(self.positions.get(&(e.topic.clone(), e.partition)).copied().unwrap_or(0)))
            .sum()
    }
}

/// What a turn of the catch-up readers did.
#[derive(Debug, Default)]
pub struct CatchUp {
    /// Emitted events and failures, as from a batch of the shared feed.
    pub outcome: BatchOutcome,
    /// Plugins that reached the end of their partitions and now join the shared feed: the source
    /// must read these topics from these positions at the latest.
    pub joined: Vec<(Vec<String>, PositionMap)>,
    /// Plugins whose shadow version caught up and now serves: (name, deploy).
    pub switched: Vec<(String, u32)>,
    /// Whether any reader had events (more may follow at once).
    pub busy: bool,
}

/// One plugin's progress, tables and state at one instant, for a checkpoint.
#[derive(Debug, Clone)]
pub struct PluginCapture {
    /// Plugin name.
    pub name: String,
    /// `name@version`.
    pub label: String,
    /// The plugin's fingerprint (component bytes and parameters).
    pub fingerprint: String,
    /// Tables as declared (empty for a handler).
    pub tables: Vec<TableSchema>,
    /// The tables' rows (projections only).
    pub snapshot: Option<ReadModelSnapshot>,
    /// Committed keyed state.
    pub state: Vec<(Vec<u8>, Vec<u8>)>,
    /// Next offset per topic and partition.
    pub positions: PositionMap,
    /// Which of its dead letters are settled.
    pub dead_letters: DeadLetterBook,
}

/// How far one plugin has got, for lag reporting.
#[derive(Debug, Clone)]
pub struct PluginProgress {
    /// `name@version`.
    pub label: String,
    /// Topics it reads.
    pub topics: Vec<String>,
    /// Next offset per topic and partition.
    pub positions: PositionMap,
    /// The ends of its partitions as its own reader sees them, while it catches up on one.
    pub own_ends: Option<Vec<PartitionEnd>>,
    /// What it did per topic and partition (empty when the host is not metered).
    pub meters: HashMap<String, BTreeMap<u32, PartitionMeter>>,
}

/// Ranges `[start, end)` of consecutive events from one topic and partition.
fn partition_runs(events: &[Event]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=events.len() {
        if i == events.len()
            || events[i].position.partition != events[start].position.partition
            || events[i].position.topic != events[start].position.topic
        {
            runs.push((start, i));
            start = i;
        }
    }
    runs
}
/// Plugins, their read models, and the catalog queries read.
pub struct Pipeline {
    slots: Vec<Slot>,
    catalog: Arc<Catalog>,
    logs: LogRings,
    /// Where emitted events and dead letters go: checked against it before a plugin's state for
    /// the event is kept.
    sink: Option<Arc<dyn EventSink>>,
    /// Whether handlers' batches are journaled (effectively-once output).
    journal: bool,
    /// The ends of the dead-letter topics, as last read, and when.
    dead_letter_ends: Mutex<(Option<Instant>, TopicEnds)>,
    /// Whether plugins' work is counted per partition and batches timed (`[server] metrics`).
    metered: bool,
    /// The threads plugins process a batch on side by side (`[server] plugin_threads`); none:
    /// one after another on the caller's thread.
    workers: Option<Arc<rayon::ThreadPool>>,
}

/// What one batch produced beyond the read models.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// What to write for the plugins (emitted events, journal records, dead letters), ready to
    /// append: `position.topic` is the destination; the partition and offset are assigned when
    /// written.
    pub outgoing: Vec<Outgoing>,
    /// Events that failed, per plugin.
    pub failures: Vec<EventError>,
}

impl Pipeline {
    /// An empty pipeline publishing to `catalog`.
    pub fn new(catalog: Arc<Catalog>) -> Self {
        Pipeline {
            slots: Vec::new(),
            catalog,
            logs: LogRings::default(),
            sink: None,
            journal: true,
            dead_letter_ends: Mutex::default(),
            metered: true,
            workers: None,
        }
    }

    /// Run the plugins a batch goes to side by side on `threads` threads (0: one per core), or
    /// one after another on the caller's thread (1).
    pub fn set_threads(&mut self, threads: usize) -> Result<(), std::io::Error> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        self.workers = if threads > 1 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("weir-plugins-{i}"))
                .build()
                .map_err(std::io::Error::other)?;
            Some(Arc::new(pool))
        } else {
            None
        };
        Ok(())
    }

    /// Count plugins' work per partition and time their batches (the default), or not.
    pub fn set_metered(&mut self, metered: bool) {
        self.metered = metered;
        for slot in &mut self.slots {
            slot.meter.on = metered;
        }
    }

    /// Journal handlers' batches (the default), or not (at-least-once output).
    pub fn set_journal(&mut self, journal: bool) {
        self.journal = journal;
        for slot in &mut self.slots {
            slot.journal = journal;
        }
    }

    /// Check emitted events and dead letters against `sink` (its topic names, record limit).
    pub fn set_sink(&mut self, sink: Arc<dyn EventSink>) {
        self.sink = Some(sink);
    }

    /// What plugin `name` does with an event it fails on.
    pub fn set_on_error(&mut self, name: &str, on_error: OnError) {
        if let Some(slot) = self.slot_mut(name) {
            slot.on_error = on_error;
            slot.plugin.set_stop_at_failure(on_error == OnError::Stop);
            if let Some(shadow) = &mut slot.shadow {
                shadow.slot.on_error = on_error;
                shadow.slot.plugin.set_stop_at_failure(on_error == OnError::Stop);
            }
        }
    }

    /// Plugin `name`'s dead-letter book.
    pub fn dead_letters(&self, name: &str) -> Option<&DeadLetterBook> {
        self.slot(name).map(|s| &s.dead_letters)
    }

    /// Whether some plugin reads the host's ticks (a handler with timers).
    pub fn reads_ticks(&self) -> bool {
        self.slots.iter().any(|s| s.plugin.info().topics.iter().any(|t| t == weir_runtime::TICKS_TOPIC))
    }

    /// The ends of every plugin's dead-letter topic, read from the sink at most every
    /// [`DEAD_LETTER_ENDS_EVERY`] (on Kafka each read is a round trip per partition).
    fn dead_letter_ends(&self) -> TopicEnds {
        let mut cached = self.dead_letter_ends.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = cached.0.is_some_and(|t| t.elapsed() < DEAD_LETTER_ENDS_EVERY);
        let known = self.slots.iter().all(|s| cached.1.contains_key(s.name()));
        if let Some(sink) = &self.sink
            && !(fresh && known)
        {
            let mut ends = BTreeMap::new();
            for slot in &self.slots {
                if let Ok(e) = sink.ends(&dead_letter_topic(slot.name())) {
                    ends.insert(slot.name().to_string(), e);
                }
            }
            *cached = (Some(Instant::now()), ends);
        }
        cached.1.clone()
    }

    /// Every plugin's dead-letter book, by name.
    pub fn dead_letter_books(&self) -> BTreeMap<String, DeadLetterBook> {
        self.slots.iter().map(|s| (s.name().to_string(), s.dead_letters.clone())).collect()
    }

    /// Change plugin `name`'s dead-letter book (purge, resolve).
    pub fn dead_letters_mut(&mut self, name: &str) -> Option<&mut DeadLetterBook> {
        self.slot_mut(name).map(|s| &mut s.dead_letters)
    }

    /// Every topic the host writes to for its plugins: handlers' outputs and dead-letter topics.
    pub fn output_topics(&self) -> std::collections::BTreeSet<String> {
        let mut topics = std::collections::BTreeSet::new();
        for slot in &self.slots {
            topics.insert(dead_letter_topic(slot.name()));
            if let PluginKind::Handler { emits_to } = &slot.plugin.info().kind {
                topics.extend(emits_to.iter().cloned());
                topics.insert(journal_topic(slot.name()));
            }
        }
        topics
    }

    /// Re-run dead letters (originals, in order) through plugin `name`'s current version, outside
    /// its positions. Returns per event whether it succeeded now, and what it emitted.
    pub fn redrive(&mut self, name: &str, events: &[Event]) -> (Vec<bool>, Vec<Outgoing>) {
        let sink = self.sink.clone();
        let Some(slot) = self.slot_mut(name) else { return (vec![false; events.len()], Vec::new()) };
        let mut emitted = Vec::new();
        let mut done = Vec::with_capacity(events.len());
        // One at a time: one failing again must not hold back the rest.
        for event in events {
            let batch = std::slice::from_ref(event);
            let ok = match &mut slot.model {
                Some(model) => match slot.plugin.apply(batch).pop() {
                    Some(Ok(changes)) => model.apply(changes).is_ok(),
                    _ => false,
                },
                None => {
                    let label = slot.plugin.info().name.clone();
                    let finish = |cause: &Event, n: usize, out| emit_checked(&label, sink.as_deref(), cause, n, out);
                    match slot.plugin.handle(batch, &finish).pop() {
                        Some(Ok(out)) => {
                            emitted.extend(out.into_iter().map(Outgoing::Emitted));
                            true
                        }
                        _ => false,
                    }
                }
            };
            if ok {
                slot.ok += 1;
            }
            done.push(ok);
        }
        (done, emitted)
    }

    /// Each plugin's log ring, by name (shared: it follows the plugins as they come and go).
    pub fn log_rings(&self) -> LogRings {
        self.logs.clone()
    }

    /// The catalog snapshots are published to.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Add a plugin; its name must be new, and a projection's table names must not clash with
    /// another plugin's.
    pub fn add(&mut self, plugin: Plugin) -> Result<(), QueryError> {
        let name = plugin.info().name.clone();
        if self.slot(&name).is_some() {
            return Err(QueryError::NameClash {
                table: format!("(plugin name {name})"),
                first: name.clone(),
                second: name,
            });
        }
        let model = match &plugin.info().kind {
            PluginKind::Projection { tables } => {
                self.catalog.register(&name, tables)?;
                Some(ReadModel::new(&name, tables))
            }
            PluginKind::Handler { .. } => None,
        };
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).insert(name, plugin.logs());
        let mut slot = Slot::new(plugin, model);
        slot.journal = self.journal;
        slot.meter.on = self.metered;
        self.slots.push(slot);
        Ok(())
    }

    fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.name() == name)
    }

    fn slot_mut(&mut self, name: &str) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.name() == name)
    }

    /// Record plugin `name`'s deploy number and the fingerprints of versions it took over from.
    pub fn set_deploy(&mut self, name: &str, deploy: u32, accepts: Vec<String>) {
        if let Some(slot) = self.slot_mut(name) {
            slot.deploy = deploy;
            slot.accepts = accepts;
        }
    }

    /// The fingerprints of the versions plugin `name` took over from.
    pub fn taken_over(&self, name: &str) -> Vec<String> {
        self.slot(name).map(|s| s.accepts.clone()).unwrap_or_default()
    }

    /// Whether a checkpoint with `fingerprint` holds plugin `name`'s own state.
    pub fn accepts(&self, name: &str, fingerprint: &str) -> bool {
        self.slot(name)
            .is_some_and(|s| s.plugin.fingerprint() == fingerprint || s.accepts.iter().any(|f| f == fingerprint))
    }

    /// Pause or resume plugin `name`. Returns whether it exists.
    pub fn set_paused(&mut self, name: &str, paused: bool) -> bool {
        match self.slot_mut(name) {
            Some(slot) => {
                slot.paused = paused;
                if !paused {
                    slot.stopped = None;
                }
                true
            }
            None => false,
        }
    }

    /// Whether plugin `name` is paused.
    pub fn is_paused(&self, name: &str) -> bool {
        self.slot(name).is_some_and(|s| s.paused)
    }

    /// Whether a version of `name` is being rebuilt beside it.
    pub fn is_rebuilding(&self, name: &str) -> bool {
        self.slot(name).is_some_and(|s| s.shadow.is_some())
    }

    /// Feed plugin `name` from `reader` (which starts at its positions) until it has read
    /// everything there is; it then joins the shared feed.
    pub fn set_catch_up(&mut self, name: &str, reader: Box<dyn Source>) {
        if let Some(slot) = self.slot_mut(name) {
            slot.catch_up = Some(reader);
        }
    }

    /// Plugin `name`'s next offset per partition.
    pub fn positions_of(&self, name: &str) -> Option<PositionMap> {
        self.slot(name).map(|s| s.positions.clone())
    }

    /// Remove plugin `name` (and any rebuild beside it) and drop its tables.
    pub fn remove(&mut self, name: &str) -> Option<Plugin> {
        let index = self.slots.iter().position(|s| s.name() == name)?;
        let slot = self.slots.remove(index);
        if slot.model.is_some() {
            self.catalog.remove(name);
        }
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        Some(slot.plugin)
    }

    /// Replace plugin `name` by `next` at this batch boundary: `next` continues from exactly the
    /// positions, state and tables the running version reached. The caller has checked that a
    /// projection's tables are the same.
    pub fn swap(&mut self, name: &str, mut next: Plugin, deploy: u32) -> Option<Plugin> {
        let slot = self.slot_mut(name)?;
        next.restore_state(slot.plugin.take_state());
        next.share_logs(slot.plugin.logs());
        let previous = slot.plugin.fingerprint().to_string();
        let old = std::mem::replace(&mut slot.plugin, next);
        slot.deploy = deploy;
        slot.accepts.push(previous);
        let excess = slot.accepts.len().saturating_sub(MAX_TAKEN_OVER);
        slot.accepts.drain(..excess);
        slot.recent_failures.clear();
        Some(old)
    }

    /// Start `next` replaying history from its start into tables of its own beside plugin
    /// `name`, fed by `reader`; queries switch to its tables when it has caught up. Replaces a
    /// rebuild already running. The caller has checked its table names.
    pub fn start_shadow(
        &mut self,
        name: &str,
        mut next: Plugin,
        deploy: u32,
        reason: &'static str,
        reader: Box<dyn Source>,
    ) {
        let metered = self.metered;
        let Some(slot) = self.slot_mut(name) else { return };
        next.share_logs(slot.plugin.logs());
        let model = match &next.info().kind {
            PluginKind::Projection { tables } => Some(ReadModel::new(name, tables)),
            PluginKind::Handler { .. } => None,
        };
        let mut shadow = Slot::new(next, model);
        shadow.deploy = deploy;
        shadow.meter.on = metered;
        shadow.catch_up = Some(reader);
        slot.rebuild_error = None;
        if let Some(old) =
            slot.shadow.replace(Box::new(Shadow { slot: shadow, reason, started: Instant::now(), events: 0 }))
        {
            tracing::info!(plugin = %old.slot.plugin.info().label(), "rebuild replaced by a newer one");
        }
    }

    /// Stop a rebuild beside plugin `name`, saying why.
    pub fn abandon_shadow(&mut self, name: &str, why: String) {
        if let Some(slot) = self.slot_mut(name) {
            slot.shadow = None;
            slot.rebuild_error = Some(why);
        }
    }

    /// One batch from each catch-up reader (plugins behind the shared feed, shadows rebuilding),
    /// run through its plugin only. A plugin whose reader has nothing more joins the shared feed;
    /// a shadow that has caught up takes its plugin's place and its tables are published in one
    /// swap.
    pub fn catch_up(&mut self, max: usize) -> CatchUp {
        let mut result = CatchUp::default();
        let sink = self.sink.clone();
        let workers = self.workers.clone();
        let workers = workers.as_deref();
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            if !slot.paused
                && let Some(reader) = &mut slot.catch_up
            {
                match reader.poll(max, std::time::Duration::ZERO) {
                    Ok(events) if !events.is_empty() => {
                        result.busy = true;
                        slot.process(&events, &partition_runs(&events), sink.as_deref(), workers, &mut result.outcome);
                    }
                    Ok(_) => {
                        slot.catch_up = None;
                        tracing::info!(plugin = %slot.plugin.info().label(), "caught up; joins the shared feed");
                        result.joined.push((slot.plugin.info().topics.clone(), slot.positions.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(plugin = %slot.plugin.info().label(), error = %e, "catching up failed; retrying")
                    }
                }
            }
            let Some(shadow) = &mut slot.shadow else { continue };
            let Some(reader) = &mut shadow.slot.catch_up else { continue };
            match reader.poll(max, std::time::Duration::ZERO) {
                Ok(events) if !events.is_empty() => {
                    result.busy = true;
                    shadow.events += events.len() as u64;
                    shadow.slot.process(
                        &events,
                        &partition_runs(&events),
                        sink.as_deref(),
                        workers,
                        &mut result.outcome,
                    );
                }
                Ok(_) => {
                    let name = slot.name().to_string();
                    if let Err(e) = self.switch_to_shadow(index) {
                        tracing::error!(plugin = %name, error = %e, "switching to the rebuilt version failed; it is abandoned");
                        self.abandon_shadow(&name, e.to_string());
                        continue;
                    }
                    let slot = &self.slots[index];
                    result.joined.push((slot.plugin.info().topics.clone(), slot.positions.clone()));
                    result.switched.push((name, slot.deploy));
                }
                Err(e) => {
                    tracing::warn!(plugin = %slot.plugin.info().label(), error = %e, "rebuilding failed to read; retrying")
                }
            }
        }
        result
    }

    /// The shadow of slot `index` has caught up: it serves from now on.
    fn switch_to_shadow(&mut self, index: usize) -> Result<(), ReadModelError> {
        let slot = &mut self.slots[index];
        let Some(mut shadow) = slot.shadow.take() else { return Ok(()) };
        let mut next = shadow.slot;
        next.catch_up = None;
        next.paused = slot.paused;
        next.dead_letters = std::mem::take(&mut slot.dead_letters);
        next.dead_lettered += slot.dead_lettered;
        if let Some(model) = &mut next.model {
            model.set_positions(&next.positions);
            self.catalog.replace(model.snapshot()?);
        } else if slot.model.is_some() {
            self.catalog.remove(slot.name());
        }
        tracing::info!(
            plugin = %next.plugin.info().label(), deploy = next.deploy, events = shadow.events,
            seconds = shadow.started.elapsed().as_secs_f64(), reason = shadow.reason,
            "rebuilt version caught up; queries now read its tables"
        );
        shadow.events = 0;
        *slot = next;
        Ok(())
    }

    /// Where plugin `name` starts while it has no checkpoint of its own. Call before restoring.
    pub fn set_start(&mut self, name: &str, start: StartAt) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.plugin.info().name == name) {
            slot.start = start;
            slot.unresolved = if start == StartAt::Earliest { Vec::new() } else { slot.plugin.info().topics.clone() };
        }
    }

    /// Plugin `name` starts at `start`, which is at `positions` (looked up already).
    pub fn place(&mut self, name: &str, start: StartAt, positions: PositionMap) {
        if let Some(slot) = self.slot_mut(name) {
            slot.start = start;
            slot.positions = positions;
            slot.unresolved.clear();
        }
    }

    /// The (topic, start) pairs plugins without a checkpoint still need looked up in the source
    /// before the first event is processed.
    pub fn starts_to_resolve(&self) -> Vec<(String, StartAt)> {
        let mut wanted: Vec<(String, StartAt)> = Vec::new();
        for pair in self.slots.iter().flat_map(|s| s.unresolved.iter().map(move |t| (t.clone(), s.start))) {
            if !wanted.contains(&pair) {
                wanted.push(pair);
            }
        }
        wanted
    }

    /// Events of these partitions before these offsets were applied already (a consumer group's
    /// committed positions): every plugin reading a partition moves up to its floor.
    pub fn raise_positions(&mut self, floors: &PositionMap) {
        for ((topic, partition), floor) in floors {
            for slot in self.slots.iter_mut().filter(|s| s.plugin.info().topics.iter().any(|t| t == topic)) {
                let position = slot.positions.entry((topic.clone(), *partition)).or_insert(0);
                if *position < *floor {
                    tracing::info!(plugin = %slot.plugin.info().label(), topic, partition, from = *position, to = *floor, "plugin moves up to the group's position");
                    *position = *floor;
                }
            }
        }
    }

    /// `start` on `topic` is at `offsets` (per partition): plugins waiting on it start there.
    pub fn resolve_start(&mut self, topic: &str, start: StartAt, offsets: &[(u32, u64)]) {
        for slot in self.slots.iter_mut().filter(|s| s.start == start && s.unresolved.iter().any(|t| t == topic)) {
            slot.unresolved.retain(|t| t != topic);
            for &(partition, offset) in offsets {
                slot.positions.insert((topic.to_string(), partition), offset);
            }
            tracing::info!(plugin = %slot.plugin.info().label(), topic, %start, ?offsets, "plugin starts at");
        }
    }

    /// Handlers (by name) whose batches are journaled.
    pub fn handlers(&self) -> Vec<String> {
        self.slots.iter().filter(|s| s.model.is_none()).map(|s| s.name().to_string()).collect()
    }

    /// Re-process one journaled batch of handler `name` (the events its runs name, in order),
    /// as it was processed before a restart.
    pub fn replay(&mut self, name: &str, events: &[Event]) -> BatchOutcome {
        let mut outcome = BatchOutcome::default();
        let sink = self.sink.clone();
        let workers = self.workers.as_deref();
        if let Some(slot) = self.slots.iter_mut().find(|s| s.name() == name) {
            slot.replaying = true;
            slot.process(events, &partition_runs(events), sink.as_deref(), workers, &mut outcome);
            slot.replaying = false;
        }
        outcome
    }

    /// Run one batch of the shared feed through every plugin on it that wants some of it: side
    /// by side, one thread per plugin, when there are workers and more than one wants it. What
    /// they produce is gathered in plugin order either way, so the outcome does not depend on
    /// which finished first.
    pub fn process(&mut self, events: &[Event]) -> BatchOutcome {
        let mut outcome = BatchOutcome::default();
        let runs = partition_runs(events);
        let sink = self.sink.as_deref();
        // Every plugin reading a topic of the batch (even one that wants none of its events
        // moves its positions past them).
        let topics: Vec<&str> = runs.iter().map(|&(start, _)| events[start].position.topic.as_str()).collect();
        let mut busy: Vec<&mut Slot> = self
            .slots
            .iter_mut()
            .filter(|s| s.on_shared_feed() && s.plugin.info().topics.iter().any(|t| topics.contains(&t.as_str())))
            .collect();
        match &self.workers {
            Some(workers) if busy.len() > 1 => {
                let mut outcomes: Vec<BatchOutcome> = busy.iter().map(|_| BatchOutcome::default()).collect();
                let span = tracing::Span::current();
                workers.scope(|scope| {
                    for (slot, slot_outcome) in busy.iter_mut().zip(outcomes.iter_mut()) {
                        let (runs, span) = (&runs, &span);
                        scope.spawn(move |_| {
                            let _entered = span.enter();
                            slot.process(events, runs, sink, Some(workers), slot_outcome);
                        });
                    }
                });
                for slot_outcome in outcomes {
                    outcome.outgoing.extend(slot_outcome.outgoing);
                    outcome.failures.extend(slot_outcome.failures);
                }
            }
            _ => {
                for slot in busy {
                    slot.process(events, &runs, sink, self.workers.as_deref(), &mut outcome);
                }
            }
        }
        outcome
    }

    /// Publish every read model's current state to the catalog: side by side, one thread per
    /// read model, when there are workers and more than one read model.
    pub fn publish(&mut self) -> Result<(), ReadModelError> {
        let catalog = &self.catalog;
        let publish = |slot: &mut Slot| {
            if let Some(model) = &mut slot.model {
                model.set_positions(&slot.positions);
                catalog.publish(model.snapshot()?);
            }
            Ok(())
        };
        match &self.workers {
            Some(workers) if self.slots.iter().filter(|s| s.model.is_some()).count() > 1 => {
                use rayon::iter::{IntoParallelRefMutIterator, ParallelIterator};
                workers.install(|| self.slots.par_iter_mut().try_for_each(publish))
            }
            _ => self.slots.iter_mut().try_for_each(publish),
        }
    }

    /// Every plugin's positions, tables and state at this instant (and publish the tables).
    pub fn capture(&mut self) -> Result<Vec<PluginCapture>, ReadModelError> {
        let mut captures = Vec::with_capacity(self.slots.len());
        for slot in &mut self.slots {
            let info = slot.plugin.info();
            let (tables, snapshot) = match (&info.kind, &mut slot.model) {
                (PluginKind::Projection { tables }, Some(model)) => {
                    model.set_positions(&slot.positions);
                    let snapshot = model.snapshot()?;
                    self.catalog.publish(snapshot.clone());
                    (tables.clone(), Some(snapshot))
                }
                _ => (Vec::new(), None),
            };
            captures.push(PluginCapture {
                name: info.name.clone(),
                label: info.label(),
                fingerprint: slot.plugin.fingerprint().to_string(),
                tables,
                snapshot,
                state: slot.plugin.state().entries().map(|(k, v)| (k.to_vec(), v.to_vec())).collect(),
                positions: slot.positions.clone(),
                dead_letters: slot.dead_letters.clone(),
            });
        }
        Ok(captures)
    }

    /// Put one plugin back where a checkpoint left it: positions, state and table rows.
    /// Returns the rows loaded. On error the plugin is left empty, at the start.
    pub fn restore_plugin(
        &mut self,
        name: &str,
        positions: PositionMap,
        state: KeyedState,
        dead_letters: DeadLetterBook,
        table_files: &[(String, PathBuf)],
    ) -> Result<usize, ReadModelError> {
        let Some(slot) = self.slots.iter_mut().find(|s| s.plugin.info().name == name) else {
            return Ok(0);
        };
        let mut rows = 0;
        if let Some(model) = &mut slot.model {
            for (table, path) in table_files {
                match model.load_table_file(table, path) {
                    Ok(n) => rows += n,
                    Err(e) => {
                        *model = ReadModel::new(name, model_tables(&slot.plugin));
                        return Err(e);
                    }
                }
            }
            model.set_positions(&positions);
        }
        slot.plugin.restore_state(state);
        slot.positions = positions;
        slot.dead_letters = dead_letters;
        slot.unresolved.clear();
        Ok(rows)
    }

    /// Undo [`Pipeline::restore_plugin`]: the plugin back at its start with empty tables and
    /// state, as when it was added.
    pub fn reset_plugin(&mut self, name: &str) {
        let Some(slot) = self.slots.iter_mut().find(|s| s.plugin.info().name == name) else {
            return;
        };
        if let Some(model) = &mut slot.model {
            *model = ReadModel::new(name, model_tables(&slot.plugin));
        }
        slot.plugin.restore_state(KeyedState::default());
        slot.positions = PositionMap::new();
        slot.dead_letters = DeadLetterBook::default();
        slot.unresolved = if slot.start == StartAt::Earliest { Vec::new() } else { slot.plugin.info().topics.clone() };
    }

    /// Where to start reading a partition: the lowest position of the plugins that read it.
    pub fn start_offset(&self, topic: &str, partition: u32) -> u64 {
        self.slots
            .iter()
            .filter(|s| s.on_shared_feed() && s.plugin.info().topics.iter().any(|t| t == topic))
            .map(|s| s.positions.get(&(topic.to_string(), partition)).copied().unwrap_or(0))
            .min()
            .unwrap_or(0)
    }

    /// For every partition some plugin has a position on: the lowest position over the plugins
    /// that read its topic (a plugin without one counts as 0). Partitions nobody has read are
    /// absent.
    pub fn known_positions(&self) -> PositionMap {
        let mut keys: Vec<(String, u32)> =
            self.slots.iter().filter(|s| s.on_shared_feed()).flat_map(|s| s.positions.keys().cloned()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|(topic, partition)| {
                let start = self.start_offset(&topic, partition);
                ((topic, partition), start)
            })
            .collect()
    }

    /// Topics some plugin on the shared feed reads.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> =
            self.slots.iter().filter(|s| s.on_shared_feed()).flat_map(|s| s.plugin.info().topics.clone()).collect();
        topics.sort();
        topics.dedup();
        topics
    }

    /// The lowest position a version rebuilding beside a plugin still needs on this partition.
    pub fn shadow_floor(&self, topic: &str, partition: u32) -> Option<u64> {
        self.slots
            .iter()
            .filter_map(|s| s.shadow.as_ref())
            .filter(|shadow| shadow.slot.plugin.info().topics.iter().any(|t| t == topic))
            .map(|shadow| shadow.slot.positions.get(&(topic.to_string(), partition)).copied().unwrap_or(0))
            .min()
    }

    /// Each plugin's positions (with no ends).
    pub fn positions(&self) -> Vec<PluginProgress> {
        self.slots
            .iter()
            .map(|s| PluginProgress {
                label: s.plugin.info().label(),
                topics: s.plugin.info().topics.clone(),
                positions: s.positions.clone(),
                own_ends: None,
                meters: HashMap::new(),
            })
            .collect()
    }

    /// Each plugin's positions, with the ends its own reader sees while it catches up.
    pub fn progress(&mut self) -> Vec<PluginProgress> {
        self.slots
            .iter_mut()
            .map(|s| PluginProgress {
                label: s.plugin.info().label(),
                topics: s.plugin.info().topics.clone(),
                positions: s.positions.clone(),
                own_ends: s.catch_up.as_mut().map(|r| r.ends()),
                meters: s.meter.partitions.clone(),
            })
            .collect()
    }

    /// The plugins, with their counts, states and rebuilds.
    pub fn statuses(&mut self) -> Vec<PluginStatus> {
        let ends = self.dead_letter_ends();
        self.slots
            .iter_mut()
            .map(|slot| {
                let rebuild = slot.shadow.as_mut().map(|shadow| {
                    let ends = shadow.slot.catch_up.as_mut().map(|r| r.ends()).unwrap_or_default();
                    let elapsed = shadow.started.elapsed();
                    RebuildStatus {
                        label: shadow.slot.plugin.info().label(),
                        deploy: shadow.slot.deploy,
                        component: shadow.slot.plugin.component().to_string(),
                        reason: shadow.reason.to_string(),
                        events_done: shadow.events,
                        events_left: shadow.slot.behind(&ends),
                        rate: shadow.events as f64 / elapsed.as_secs_f64().max(1e-3),
                        elapsed_ms: elapsed.as_millis() as u64,
                    }
                });
                let dead_letters = ends.get(slot.name()).map_or(0, |ends| slot.dead_letters.count(ends));
                let state = if slot.stopped.is_some() {
                    PluginState::Failed
                } else if slot.paused {
                    PluginState::Paused
                } else if rebuild.is_some() {
                    PluginState::Rebuilding
                } else {
                    PluginState::Running
                };
                PluginStatus {
                    info: slot.plugin.info().clone(),
                    path: slot.plugin.path().display().to_string(),
                    component: slot.plugin.component().to_string(),
                    deploy: slot.deploy,
                    state,
                    params: slot.plugin.params().clone(),
                    start: slot.start,
                    events_ok: slot.ok,
                    events_failed: slot.failed,
                    instances_started: slot.plugin.instances_started(),
                    recent_failures: slot
                        .recent_failures
                        .iter()
                        .rev()
                        .take(10)
                        .rev()
                        .map(ToString::to_string)
                        .collect(),
                    rebuild,
                    rebuild_error: slot.rebuild_error.clone(),
                    on_error: slot.on_error,
                    stopped: slot.stopped.clone(),
                    dead_lettered: slot.dead_lettered,
                    dead_letters,
                    errors: slot.meter.errors.iter().map(|(kind, n)| (kind.to_string(), *n)).collect(),
                    batches: slot.meter.batches.snapshot(),
                    memory_bytes: slot.plugin.memory_bytes(),
                    busy_seconds: slot.plugin.busy().as_secs_f64(),
                    cpu_budget_used: {
                        let (longest, budget) = slot.plugin.take_longest_call();
                        longest.as_secs_f64() / budget.as_secs_f64().max(1e-3)
                    },
                }
            })
            .collect()
    }

    /// The plugin named `name`.
    pub fn plugin(&self, name: &str) -> Option<&Plugin> {
        self.slots.iter().map(|s| &s.plugin).find(|p| p.info().name == name)
    }

    /// The plugins.
    pub fn plugins(&self) -> impl Iterator<Item = &Plugin> {
        self.slots.iter().map(|s| &s.plugin)
    }
}

fn model_tables(plugin: &Plugin) -> &[TableSchema] {
    match &plugin.info().kind {
        PluginKind::Projection { tables } => tables,
        PluginKind::Handler { .. } => &[],
    }
}

fn model_failure(label: &str, event: &Event, error: ReadModelError) -> EventError {
    EventError {
        plugin: label.into(),
        position: event.position.clone(),
        event_type: event.event_type.as_str().into(),
        failure: Failure::InvalidOutput(error.to_string()),
        attempts: 1,
    }
}

/// The `n`th event plugin `name` emitted for `cause`, as it will be written, checked against the
/// sink (the runtime's `Finish`).
fn emit_checked(
    name: &str,
    sink: Option<&dyn EventSink>,
    cause: &Event,
    n: usize,
    out: weir_core::event::OutgoingEvent,
) -> Result<Event, String> {
    let event = emitted_event(name, cause, n, out);
    if let Some(sink) = sink {
        sink.check(&event.position.topic, &event).map_err(|e| e.to_string())?;
    }
    Ok(event)
}

/// The runs of `events` for a journal record: consecutive events of one partition, first and
/// last offset.
fn journal_runs(events: &[Event]) -> Vec<JournalRun> {
    let mut runs: Vec<JournalRun> = Vec::new();
    for event in events {
        let p = &event.position;
        match runs.last_mut() {
            Some((topic, partition, _, last)) if *topic == p.topic && *partition == p.partition => *last = p.offset,
            _ => runs.push((p.topic.clone(), p.partition, p.offset, p.offset)),
        }
    }
    runs
}

/// Whether `event` is a tick (see the WIT `timers` interface).
fn is_tick(event: &Event) -> bool {
    event.position.topic == weir_runtime::TICKS_TOPIC
}

/// How far past the host's clock a tick may be: a tick from later than that (written by
/// something else than this host's ingest loop) would fire every timer and move handlers'
/// clocks ahead for ever.
const TICK_AHEAD_US: i64 = 60_000_000;

/// Whether a record of the ticks topic is a tick the host could have written.
fn check_tick(tick: &Event) -> Result<(), String> {
    if tick.event_type != "weir.tick" {
        return Err(format!("its type is {:?}", tick.event_type));
    }
    let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    if tick.time_us > now_us.saturating_add(TICK_AHEAD_US) {
        return Err(format!("its time is {} s ahead of the host's clock", (tick.time_us - now_us) / 1_000_000));
    }
    Ok(())
}

/// A handler's batch with ticks in it: the events between ticks in one call each; at each tick,
/// the timers due fire, one call each. Returns one result per event of `wanted` (a tick's holds
/// nothing: what its timers emitted goes to `emitted`, their failures to `failures`), fewer when
/// the `stop` policy ended the batch.
fn handle_with_ticks(
    plugin: &mut Plugin,
    wanted: &[Event],
    finish: &weir_runtime::Finish<'_>,
    outgoing: &mut Vec<Outgoing>,
    failures: &mut Vec<(Event, EventError)>,
) -> Vec<Result<Vec<Event>, EventError>> {
    let mut results = Vec::with_capacity(wanted.len());
    let mut start = 0;
    while start < wanted.len() {
        if is_tick(&wanted[start]) {
            if let Err(why) = check_tick(&wanted[start]) {
                tracing::warn!(tick = %wanted[start].position, "a record on the ticks topic is not a tick the host wrote and is ignored: {why}");
                results.push(Ok(Vec::new()));
                start += 1;
                continue;
            }
            for (timer, result) in plugin.fire_timers(&wanted[start], finish) {
                match result {
                    Ok(out) => outgoing.extend(out.into_iter().map(Outgoing::Emitted)),
                    Err(e) => failures.push((timer, e)),
                }
            }
            results.push(Ok(Vec::new()));
            start += 1;
            continue;
        }
        let end = wanted[start..].iter().position(is_tick).map_or(wanted.len(), |n| start + n);
        let segment = plugin.handle(&wanted[start..end], finish);
        let stopped = segment.len() < end - start;
        results.extend(segment);
        if stopped {
            break;
        }
        start = end;
    }
    results
}

/// The dead letter of `event`; when it would be over the sink's record limit (the original was
/// near it), without its payload, and the error says so.
fn dead_letter_within(name: &str, event: &Event, error: &EventError, sink: Option<&dyn EventSink>) -> Event {
    let dead = dead_letter(name, event, error);
    let Some(sink) = sink else { return dead };
    match sink.check(&dead.position.topic, &dead) {
        Ok(()) => dead,
        Err(why) => {
            let mut error = error.clone();
            error.failure =
                Failure::Refused(format!("{} (the dead letter carries no payload: with it, {why})", error.failure));
            let mut bare = event.clone();
            bare.payload = Vec::new();
            dead_letter(name, &bare, &error)
        }
    }
}
