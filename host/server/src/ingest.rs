//! The ingest loop: source → pipeline (plugins, read models) → sink for emitted events →
//! snapshots for queries → checkpoints. It runs on a thread of its own; queries and the API only
//! read what it publishes.
//!
//! **Architecture Invariant:** a checkpoint is taken only between batches and only when every
//! event handlers emitted so far has been written, so a restart from it neither loses nor
//! re-applies an event, and never loses an emitted one.
//! **Architecture Invariant:** partitions a rebalance revokes are handed over only after a
//! checkpoint holding every event processed from them, at that checkpoint's positions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::admin::Lifecycle;
use crate::checkpoint::{self, CheckpointConfig, CheckpointError, CheckpointStore, WriteStats};
use crate::output::{self, AlreadyWritten, Outgoing, Unwritten};
use crate::pipeline::Pipeline;
use crate::status::{CheckpointStatus, Lag, StatusBoard};
use weir_core::event::{Event, PositionMap};
use weir_core::source::{EventSink, Source, SourceError};

/// Longest a hand-over waits for emitted events to be written before giving partitions away at
/// the previous checkpoint.
const HANDOVER_WAIT: Duration = Duration::from_secs(30);

/// How the loop paces itself.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Events per poll and plugin call.
    pub batch_size: usize,
    /// Longest time between a change and the snapshot queries see.
    pub publish_interval: Duration,
    /// Checkpoint cadence and retention.
    pub checkpoint: CheckpointConfig,
    /// Time between ticks while a handler has timers set.
    pub tick_interval: Duration,
}

/// The loop and what it owns.
pub struct Ingest {
    pub(crate) pipeline: Pipeline,
    pub(crate) source: Box<dyn Source>,
    pub(crate) lifecycle: Option<Lifecycle>,
    /// A registry write running for a swap.
    pub(crate) saving: Option<crate::admin::PendingSave>,
    /// Per partition, the lowest position a plugin or rebuild needs now (as last reported).
    floors: PositionMap,
    /// The same when the last written checkpoint was captured (a restart goes back there).
    durable_floors: Option<PositionMap>,
    pub(crate) sink: Arc<dyn EventSink>,
    checkpoints: CheckpointStore,
    settings: IngestSettings,
    status: StatusBoard,
    /// What the previous process wrote after its last checkpoint, not to be written again.
    pub(crate) written: AlreadyWritten,
    /// Where to read that from (the restored checkpoint's marks; empty: from the start), until
    /// it has been read.
    scan_from: Option<output::Marks>,
    /// How long checkpoints took.
    checkpoint_durations: weir_core::meter::LatencyHistogram,
}

/// A checkpoint being written in the background.
struct Writing {
    done: mpsc::Receiver<checkpoint::Result<WriteStats>>,
    positions: PositionMap,
    /// Rebuilt versions that took over before this checkpoint was captured: (name, deploy). The
    /// registry records them as serving once the checkpoint holding their tables is written.
    switches: Vec<(String, u32)>,
    /// What a restart from it would need of each partition (at or below its positions).
    floors: PositionMap,
}

/// What the loop carries from one turn to the next.
struct Turn {
    /// What the host made to write for its plugins and has not written yet (emitted events,
    /// journal records, dead letters, ticks); nothing is polled until it is written.
    pending: Unwritten,
    events_read: u64,
    /// Plugins' start positions are found and checkpointed.
    starts_resolved: bool,
    /// Start positions were found but the checkpoint holding them is not written yet.
    starts_unsaved: bool,
    /// Something changed since the last publish.
    dirty: bool,
    /// Something changed that no finished or running checkpoint holds (set again when one fails,
    /// so a failed checkpoint is retried at the next interval and at shutdown).
    unsaved: bool,
    last_publish: Instant,
    last_report: Instant,
    last_checkpoint: Instant,
    writing: Option<Writing>,
    source_error: Option<String>,
    backoff: Duration,
    /// A catch-up reader had events last turn: do not wait on the shared feed.
    catching_up: bool,
    /// Checkpoint at the end of this turn (a plugin was deployed, swapped or removed).
    checkpoint_soon: bool,
    /// Rebuilt versions serving since the last checkpoint was captured.
    switches: Vec<(String, u32)>,
    /// When the last tick was written (none yet: one is due at once).
    last_tick: Option<Instant>,
}

impl Turn {
    fn new() -> Self {
        let now = Instant::now();
        Turn {
            pending: Unwritten::default(),
            events_read: 0,
            starts_resolved: false,
            starts_unsaved: false,
            dirty: true,
            unsaved: false,
            last_publish: now,
            last_report: now,
            last_checkpoint: now,
            writing: None,
            source_error: None,
            backoff: BACKOFF_MIN,
            catching_up: false,
            checkpoint_soon: false,
            switches: Vec::new(),
            last_tick: None,
        }
    }

    /// Sleep before retrying something that failed, longer each time up to [`BACKOFF_MAX`].
    fn back_off(&mut self) {
        std::thread::sleep(self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Record a failure of the source; logged once per distinct message.
    fn source_failed(&mut self, message: String, what: &str) {
        if self.source_error.as_deref() != Some(&message) {
            tracing::warn!(error = %message, "{what}; retrying");
        }
        self.source_error = Some(message);
    }
}

/// `records` grouped by destination topic, topics in order of first appearance.
fn by_topic(records: Vec<Outgoing>) -> Vec<(String, Vec<Outgoing>)> {
    let mut groups: Vec<(String, Vec<Outgoing>)> = Vec::new();
    for record in records {
        match groups.iter_mut().find(|(t, _)| t == record.topic()) {
            Some((_, list)) => list.push(record),
            None => groups.push((record.topic().to_string(), vec![record])),
        }
    }
    groups
}

/// The events of records of one topic, to append.
fn events_of(records: &[Outgoing]) -> Vec<Event> {
    records.iter().map(|r| r.event().clone()).collect()
}

/// First and longest wait before retrying the source or the sink.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

impl Ingest {
    /// A loop over these parts; `status` is updated as it runs.
    pub fn new(
        pipeline: Pipeline,
        source: Box<dyn Source>,
        sink: Arc<dyn EventSink>,
        checkpoints: CheckpointStore,
        settings: IngestSettings,
        status: StatusBoard,
    ) -> Self {
        let mut pipeline = pipeline;
        pipeline.set_sink(sink.clone());
        Ingest {
            written: AlreadyWritten::default(),
            scan_from: None,
            pipeline,
            source,
            lifecycle: None,
            saving: None,
            floors: PositionMap::new(),
            durable_floors: None,
            sink,
            checkpoints,
            settings,
            status,
            checkpoint_durations: Default::default(),
        }
    }

    /// Before processing anything, read what was written to the output topics past `marks`
    /// (a restored checkpoint's; empty without one), so that re-processing does not write it
    /// again.
    pub fn reading_back_from(mut self, marks: output::Marks) -> Self {
        self.scan_from = Some(marks);
        self
    }

    /// Take admin requests (deploys, pauses, rebuilds...) from `lifecycle` between batches.
    pub fn with_lifecycle(mut self, lifecycle: Lifecycle) -> Self {
        self.lifecycle = Some(lifecycle);
        self
    }

    /// Run until `stop` is set, then write a last checkpoint. Returns the pipeline.
    ///
    /// Each turn: find plugins' start positions (once); write what handlers emitted (nothing is
    /// polled while some is unwritten); poll and process a batch; hand revoked partitions over;
    /// publish snapshots; collect a finished checkpoint; start the next one when it is due.
    pub fn run(mut self, stop: &AtomicBool) -> Pipeline {
        let mut turn = Turn::new();
        self.report(&turn);
        while !stop.load(Ordering::Relaxed) {
            // First: a checkpoint (resolving starts writes one) must not record new marks
            // before what lies past the old ones has been read.
            if !self.read_back(&mut turn) {
                turn.back_off();
                continue;
            }
            // Before any checkpoint: one must not hold state past an event not yet written.
            if !self.write_pending(&mut turn) {
                turn.back_off();
                self.report(&turn);
                continue;
            }
            if !turn.starts_resolved && !self.resolve_starts(&mut turn) {
                turn.back_off();
                continue;
            }
            let applied = self.handle_admin();
            turn.pending.add(applied.outgoing);
            if applied.changed {
                turn.dirty = true;
                turn.unsaved = true;
                turn.checkpoint_soon |= applied.checkpoint;
                self.report(&turn);
            }
            self.tick_when_due(&mut turn);
            self.poll_and_process(&mut turn);
            self.catch_up(&mut turn);
            if self.written.active() {
                turn.pending.drop_written(&mut self.written);
                let pipeline = &self.pipeline;
                self.written.settle(|name| pipeline.positions_of(name));
            }
            if self.source.group().is_some_and(|g| g.revoking()) {
                self.hand_over(&mut turn, stop);
            }
            self.publish_when_due(&mut turn);
            self.collect_checkpoint(&mut turn, false);
            // Only when every emitted event so far is written: a checkpoint past an unwritten
            // one would lose it on restart.
            if turn.writing.is_none()
                && turn.pending.is_empty()
                && turn.unsaved
                && (turn.checkpoint_soon
                    || turn.last_checkpoint.elapsed()
                        >= Duration::from_millis(self.settings.checkpoint.interval_ms.max(1)))
            {
                turn.checkpoint_soon = false;
                self.start_checkpoint(&mut turn);
            }
        }
        self.shut_down(turn)
    }

    /// Shutdown: let a running checkpoint finish, write what handlers emitted, then write a last
    /// checkpoint if anything is unsaved.
    fn shut_down(mut self, mut turn: Turn) -> Pipeline {
        self.finish_save(true);
        self.collect_checkpoint(&mut turn, true);
        if !self.write_pending(&mut turn) {
            tracing::error!(
                pending = turn.pending.len(),
                "emitted events could not be written; no final checkpoint, so they are emitted again on restart"
            );
        } else if turn.unsaved {
            self.checkpoint_now(&mut turn);
        }
        if let Err(e) = self.pipeline.publish() {
            tracing::error!(error = %e, "publishing snapshots failed");
        }
        self.report(&turn);
        self.pipeline
    }

    /// Plugins that start at the latest event or at a time: find where, tell the source, and make
    /// it durable before the first event, so a crash cannot move their start. Returns whether
    /// that is done.
    fn resolve_starts(&mut self, turn: &mut Turn) -> bool {
        let wanted = self.pipeline.starts_to_resolve();
        for (topic, start) in &wanted {
            match self.source.start_offsets(topic, *start) {
                Ok(offsets) => {
                    self.pipeline.resolve_start(topic, *start, &offsets);
                    turn.starts_unsaved = true;
                }
                Err(e) => {
                    turn.source_failed(
                        format!("finding where {start} is in topic {topic}: {e}"),
                        "finding plugins' start positions failed",
                    );
                    self.report(turn);
                    return false;
                }
            }
        }
        if turn.starts_unsaved {
            self.source.start_from(&self.pipeline.known_positions());
            turn.unsaved = true;
            if self.checkpoint_now(turn).is_none() {
                turn.source_failed(
                    "writing the checkpoint of the plugins' start positions failed".into(),
                    "checkpointing plugins' start positions failed",
                );
                self.report(turn);
                return false;
            }
            turn.starts_unsaved = false;
        }
        turn.starts_resolved = true;
        true
    }

    /// Read what the previous process wrote after its last checkpoint (once, before the first
    /// event is processed); returns whether that is done.
    fn read_back(&mut self, turn: &mut Turn) -> bool {
        let Some(marks) = self.scan_from.clone() else { return true };
        let replayed =
            AlreadyWritten::scan(self.sink.as_ref(), &self.pipeline.output_topics(), &marks).and_then(|written| {
                self.written = written;
                self.replay_journals(turn, &marks)
            });
        match replayed {
            Ok(()) => {
                self.scan_from = None;
                true
            }
            Err(e) => {
                turn.source_failed(
                    format!("reading back what was written after the last checkpoint: {e}"),
                    "reading the output topics failed",
                );
                self.report(turn);
                false
            }
        }
    }

    /// While a handler reads ticks, write one (processing time) to `weir.ticks` at start and
    /// every `tick_interval`: timers fire on ticks, a handler's clock is the latest tick it saw,
    /// and a tick in the log does the same again when the handler re-processes it.
    fn tick_when_due(&mut self, turn: &mut Turn) {
        if turn.last_tick.is_some_and(|t| t.elapsed() < self.settings.tick_interval) || !self.pipeline.reads_ticks() {
            return;
        }
        turn.last_tick = Some(Instant::now());
        let now_us =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
        turn.pending.add([Outgoing::Tick(Event {
            id: format!("tick-{now_us}"),
            event_type: "weir.tick".into(),
            payload: b"{}".to_vec(),
            content_type: "application/json".into(),
            time_us: now_us,
            position: weir_core::event::Position { topic: weir_runtime::TICKS_TOPIC.into(), partition: 0, offset: 0 },
            ..Event::default()
        })]);
    }

    /// Each handler re-processes the batches its journal records after `marks` (the restored
    /// checkpoint's), in the order it processed them before the restart, so it emits what it
    /// emitted then (and what of it was written is not written again).
    fn replay_journals(&mut self, turn: &mut Turn, marks: &output::Marks) -> Result<(), SourceError> {
        for name in self.pipeline.handlers() {
            let topic = output::journal_topic(&name);
            let mut batches = 0;
            for (partition, _) in self.sink.ends(&topic)? {
                let mut offset = marks.get(&(topic.clone(), partition)).copied().unwrap_or(0);
                loop {
                    let records = self.sink.read(&topic, partition, offset, 1 << 20)?;
                    let Some(last) = records.last() else { break };
                    offset = last.position.offset + 1;
                    for record in records {
                        // A record the host did not write (another writer on the topic, a
                        // damaged one) is reported and skipped: it must not keep the host from
                        // starting, and re-processing what it names would emit what never was.
                        let events = match self.journaled_events(&name, &record) {
                            Ok(events) => events,
                            Err(SourceError::Invalid(why)) => {
                                tracing::error!(plugin = %name, record = %record.position, "a journal record is not valid and is skipped: {why}");
                                continue;
                            }
                            Err(e) => return Err(e),
                        };
                        let mut outcome = self.pipeline.replay(&name, &events);
                        self.written.drop_written(&mut outcome.outgoing);
                        turn.pending.add(outcome.outgoing);
                        batches += 1;
                    }
                }
            }
            if batches > 0 {
                tracing::info!(plugin = %name, batches, "re-processed the batches journaled after the checkpoint, in their order");
                turn.dirty = true;
                turn.unsaved = true;
            }
        }
        Ok(())
    }

    /// Write the events handlers emitted; returns whether none is left unwritten.
    fn write_pending(&mut self, turn: &mut Turn) -> bool {
        if !turn.pending.is_empty() {
            let left = self.write_emitted(turn.pending.take());
            turn.pending.put_back(left);
        }
        turn.pending.is_empty()
    }

    /// Poll the source once and run what it gave through the pipeline.
    fn poll_and_process(&mut self, turn: &mut Turn) {
        let wait = if turn.catching_up {
            Duration::ZERO
        } else if turn.dirty {
            self.settings.publish_interval.saturating_sub(turn.last_publish.elapsed()).max(Duration::from_millis(1))
        } else {
            Duration::from_millis(100)
        };
        let polled = self.source.poll(self.settings.batch_size.max(1), wait);
        if let Some(group) = self.source.group() {
            let floors = group.take_floors();
            if !floors.is_empty() {
                self.pipeline.raise_positions(&floors);
            }
        }
        match polled {
            Ok(events) if !events.is_empty() => {
                if turn.source_error.take().is_some() {
                    tracing::info!(source = %self.source.describe(), "source recovered");
                }
                turn.backoff = BACKOFF_MIN;
                turn.events_read += events.len() as u64;
                let span = tracing::debug_span!("batch", events = events.len());
                let _entered = span.enter();
                // Added to what waits (a tick, a replay's output), never in its place.
                turn.pending.add(self.pipeline.process(&events).outgoing);
                turn.dirty = true;
                turn.unsaved = true;
            }
            Ok(_) => {}
            Err(e) => {
                turn.source_failed(e.to_string(), "source failed");
                turn.back_off();
            }
        }
    }

    /// One batch for each plugin reading on a reader of its own (deployed, resumed, rebuilding);
    /// those that caught up join the shared feed, and rebuilt versions that caught up serve.
    fn catch_up(&mut self, turn: &mut Turn) {
        let result = self.pipeline.catch_up(self.settings.batch_size.max(1));
        turn.catching_up = result.busy;
        if result.busy || !result.joined.is_empty() || !result.switched.is_empty() {
            turn.dirty = true;
            turn.unsaved = true;
        }
        turn.pending.add(result.outcome.outgoing);
        for (topics, positions) in &result.joined {
            if let Err(e) = self.source.add_topics(topics, positions) {
                tracing::error!(error = %e, ?topics, "the shared feed cannot add these topics");
            }
        }
        if result.switched.is_empty() {
            return;
        }
        // Recorded in the registry once a checkpoint holds the new tables (`record_switches`):
        // a crash in between restarts from the checkpoint, with the version it holds.
        turn.switches.extend(result.switched);
        turn.checkpoint_soon = true;
    }

    /// A checkpoint holding these rebuilt versions is written: record them as serving.
    fn record_switches(&self, switches: &[(String, u32)]) {
        let Some(lifecycle) = &self.lifecycle else { return };
        if switches.is_empty() {
            return;
        }
        let mut registry = lifecycle.registry.lock().unwrap_or_else(|e| e.into_inner());
        for (name, deploy) in switches {
            // Unless something newer happened to it since (removed, swapped, rebuilt again).
            if registry.entry(name).is_some_and(|e| e.building == Some(*deploy)) {
                registry.set_current(name, *deploy);
            }
        }
        if let Err(e) = registry.save() {
            tracing::error!(error = %e, "recording the switch to rebuilt versions failed; a restart finds it in the checkpoint");
        }
    }

    /// Publish snapshots at least every `publish_interval` while something changed; keep the
    /// status current at least every second either way.
    fn publish_when_due(&mut self, turn: &mut Turn) {
        if turn.dirty && turn.last_publish.elapsed() >= self.settings.publish_interval {
            if let Err(e) = self.pipeline.publish() {
                tracing::error!(error = %e, "publishing snapshots failed");
            }
            turn.dirty = false;
            turn.last_publish = Instant::now();
        } else if turn.last_report.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.report(turn);
        turn.last_report = Instant::now();
    }

    /// Hand revoked partitions over: write the emitted events on hand, checkpoint every event
    /// processed so far, and give the partitions away at that checkpoint's positions. If it
    /// cannot be written (the sink is down for [`HANDOVER_WAIT`], or the write fails) they go at
    /// the previous checkpoint's positions and the next owner re-applies what came after it.
    fn hand_over(&mut self, turn: &mut Turn, stop: &AtomicBool) {
        let started = Instant::now();
        let mut backoff = BACKOFF_MIN;
        while !self.write_pending(turn) && started.elapsed() < HANDOVER_WAIT && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        let positions = if turn.pending.is_empty() {
            turn.unsaved = true;
            self.checkpoint_now(turn)
        } else {
            tracing::error!(
                pending = turn.pending.len(),
                "emitted events could not be written; revoked partitions go at the last checkpoint"
            );
            None
        };
        if let Some(group) = self.source.group()
            && let Err(e) = group.hand_over(positions.as_ref())
        {
            tracing::error!(error = %e, "handing partitions over failed");
        }
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            checkpointed = positions.is_some(),
            "partitions handed over"
        );
    }

    /// Write a checkpoint of everything processed so far and wait for it (after any running one).
    /// Returns its positions if it was written.
    fn checkpoint_now(&mut self, turn: &mut Turn) -> Option<PositionMap> {
        self.collect_checkpoint(turn, true);
        self.start_checkpoint(turn);
        let positions = turn.writing.as_ref().map(|w| w.positions.clone());
        self.collect_checkpoint(turn, true).then_some(positions).flatten()
    }

    /// Capture every plugin's tables, state and positions, and write them on a thread of their own.
    fn start_checkpoint(&mut self, turn: &mut Turn) {
        // The registry names the versions this checkpoint holds before it exists.
        self.finish_save(true);
        turn.last_checkpoint = Instant::now();
        turn.unsaved = false;
        match self.spawn_checkpoint() {
            Ok(mut writing) => {
                writing.switches = std::mem::take(&mut turn.switches);
                turn.writing = Some(writing);
            }
            Err(e) => {
                tracing::error!(error = %e, "checkpoint failed; the previous one stays, retrying at the next interval");
                turn.unsaved = true;
            }
        }
    }

    fn spawn_checkpoint(&mut self) -> checkpoint::Result<Writing> {
        let now = output::marks_now(self.sink.as_ref(), &self.pipeline.output_topics())
            .map_err(|e| CheckpointError::Outputs(e.to_string()))?;
        let outputs = self.written.marks_for_checkpoint(now);
        let captures = self.pipeline.capture()?;
        // What the source may commit: per partition, the lowest position of the plugins that read
        // it, a plugin with no position there yet counting as 0.
        let positions = self.pipeline.known_positions();
        let store = self.checkpoints.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("weir-checkpoint".into())
            .spawn(move || {
                let _ = tx.send(store.next_seq().and_then(|seq| store.write(seq, &captures, &outputs)));
            })
            .map_err(CheckpointError::Thread)?;
        Ok(Writing { done: rx, positions, switches: Vec::new(), floors: self.floors.clone() })
    }

    /// Take the result of the running checkpoint, if there is one and it is done (or, with
    /// `wait`, once it is). Returns whether a checkpoint was written.
    fn collect_checkpoint(&mut self, turn: &mut Turn, wait: bool) -> bool {
        let Some(writing) = &turn.writing else {
            return false;
        };
        let result = if wait {
            writing.done.recv().map_err(|_| ())
        } else {
            match writing.done.try_recv() {
                Ok(result) => Ok(result),
                Err(mpsc::TryRecvError::Empty) => return false,
                Err(mpsc::TryRecvError::Disconnected) => Err(()),
            }
        };
        let Some(writing) = turn.writing.take() else {
            return false;
        };
        match result {
            Ok(Ok(stats)) => {
                tracing::info!(
                    seq = stats.seq,
                    rows = stats.rows,
                    bytes = stats.bytes,
                    ms = stats.elapsed.as_millis() as u64,
                    "checkpoint written"
                );
                self.checkpoint_durations.observe(stats.elapsed);
                if let Ok(mut status) = self.status.write() {
                    status.checkpoint = Some(CheckpointStatus {
                        seq: stats.seq,
                        rows: stats.rows,
                        bytes: stats.bytes,
                        write_ms: stats.elapsed.as_millis() as u64,
                        written_ms: crate::registry::now_ms(),
                    });
                    status.checkpoints_written += 1;
                    status.checkpoint_durations = self.checkpoint_durations.snapshot();
                }
                self.record_switches(&writing.switches);
                self.durable_floors = Some(writing.floors.clone());
                if let Err(e) = self.source.checkpointed(&writing.positions) {
                    tracing::warn!(error = %e, "committing positions to the source failed");
                }
                true
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "checkpoint failed; the previous one stays, retrying at the next interval");
                turn.unsaved = true;
                self.count_failed_checkpoint();
                false
            }
            Err(()) => {
                tracing::error!("the checkpoint thread stopped without an answer; retrying at the next interval");
                turn.unsaved = true;
                self.count_failed_checkpoint();
                false
            }
        }
    }

    fn count_failed_checkpoint(&self) {
        if let Ok(mut status) = self.status.write() {
            status.checkpoints_failed += 1;
        }
    }

    /// The events journal record `record` of handler `name` names, read from the log; `Invalid`
    /// when it is not a record the host wrote for `name` (its type, key, runs, topics the handler
    /// reads, positions that are in the log).
    fn journaled_events(&self, name: &str, record: &Event) -> Result<Vec<Event>, SourceError> {
        if record.event_type != "weir.journal" || record.key.as_deref() != Some(name) {
            return Err(SourceError::Invalid(format!(
                "type {:?} and key {:?}, not a journal record of {name}",
                record.event_type, record.key
            )));
        }
        let reads = self.pipeline.plugin(name).map(|p| p.info().topics.clone()).unwrap_or_default();
        let mut events = Vec::new();
        for (topic, partition, first, last) in output::journal_runs(record).map_err(SourceError::Invalid)? {
            if !reads.contains(&topic) || first > last {
                return Err(SourceError::Invalid(format!("{name} does not read {topic}/{partition}@{first}..={last}")));
            }
            let mut next = first;
            while next <= last {
                let read = self.sink.read(&topic, partition, next, 1 << 20)?;
                let Some(end) = read.last().map(|e| e.position.offset) else {
                    return Err(SourceError::Invalid(format!(
                        "it names {topic}/{partition}@{next}, which is not in the log"
                    )));
                };
                events.extend(read.into_iter().filter(|e| e.position.offset <= last));
                next = end + 1;
            }
        }
        Ok(events)
    }

    /// Write what waits, grouped by topic, journal records first (a handler's output is visible
    /// only once the order it processed its input in is durable); returns what was not written.
    fn write_emitted(&self, records: Vec<Outgoing>) -> Vec<Outgoing> {
        let (journal, rest): (Vec<Outgoing>, Vec<Outgoing>) =
            records.into_iter().partition(|r| matches!(r, Outgoing::Journal(_)));
        // Usually in one append: journal records written first, all synced together.
        let batches: Vec<(String, Vec<Event>)> = by_topic(journal.clone())
            .into_iter()
            .chain(by_topic(rest.clone()))
            .map(|(topic, records)| (topic, events_of(&records)))
            .collect();
        match self.sink.append_all(batches) {
            Ok(_) => return Vec::new(),
            // Some event is refused: topic by topic, to find it.
            Err(SourceError::Invalid(_) | SourceError::TooLarge(_)) => {}
            Err(e) => {
                tracing::warn!(error = %e, records = journal.len() + rest.len(), "writing emitted events failed; retrying");
                return journal.into_iter().chain(rest).collect();
            }
        }
        if !journal.is_empty() {
            let left = self.write_topics(journal);
            if !left.is_empty() {
                return left.into_iter().chain(rest).collect();
            }
        }
        self.write_topics(rest)
    }

    fn write_topics(&self, records: Vec<Outgoing>) -> Vec<Outgoing> {
        let mut left = Vec::new();
        for (topic, list) in by_topic(records) {
            if !left.is_empty() {
                left.extend(list);
                continue;
            }
            match self.sink.append(&topic, events_of(&list)) {
                Ok(_) => {}
                // Checked before the plugin's state was kept, so this is not expected; retrying
                // would stall every plugin for ever, so the refused records are reported and
                // dropped one by one.
                Err(SourceError::Invalid(_) | SourceError::TooLarge(_)) => {
                    for record in list {
                        if let Err(e) = self.sink.append(&topic, vec![record.event().clone()]) {
                            if matches!(e, SourceError::Invalid(_) | SourceError::TooLarge(_)) {
                                tracing::error!(error = %e, topic, id = %record.event().id, "the sink refuses a record; it is dropped");
                            } else {
                                left.push(record);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, topic, records = list.len(), "writing emitted events failed; retrying");
                    left.extend(list);
                }
            }
        }
        left
    }

    /// Tell the source what must not be deleted: per partition, the lowest position any plugin
    /// (paused ones too), rebuild or the last checkpoint needs.
    fn hold_what_is_needed(&mut self, lag: &[Lag]) {
        let mut floors = PositionMap::new();
        for l in lag {
            let key = (l.topic.clone(), l.partition);
            let mut floor = l.position;
            if let Some(shadow) = self.pipeline.shadow_floor(&l.topic, l.partition) {
                floor = floor.min(shadow);
            }
            if let Some(durable) = self.durable_floors.as_ref().and_then(|d| d.get(&key)) {
                floor = floor.min(*durable);
            }
            let entry = floors.entry(key).or_insert(u64::MAX);
            *entry = (*entry).min(floor);
        }
        self.source.hold(&floors);
        self.floors = floors;
    }

    /// Rewrite the status board: source, plugins, lag per plugin and partition.
    fn report(&mut self, turn: &Turn) {
        let ends = self.source.ends();
        let now_us = crate::registry::now_ms() as i64 * 1000;
        let mut lag = Vec::new();
        for progress in self.pipeline.progress() {
            let ends = progress.own_ends.as_ref().unwrap_or(&ends);
            for end in ends.iter().filter(|e| progress.topics.contains(&e.topic)) {
                let position = progress.positions.get(&(end.topic.clone(), end.partition)).copied().unwrap_or(0);
                let meter = progress
                    .meters
                    .get(&end.topic)
                    .and_then(|partitions| partitions.get(&end.partition))
                    .copied()
                    .unwrap_or_default();
                let behind = end.end.saturating_sub(position);
                let lag_seconds = if behind > 0 && meter.last_time_us > 0 {
                    (now_us - meter.last_time_us).max(0) as f64 / 1e6
                } else {
                    0.0
                };
                lag.push(Lag {
                    plugin: progress.label.clone(),
                    topic: end.topic.clone(),
                    partition: end.partition,
                    position,
                    end: end.end,
                    lag: behind,
                    events: meter.events,
                    produced: meter.produced,
                    lag_seconds,
                });
            }
        }
        self.hold_what_is_needed(&lag);
        let plugins = self.pipeline.statuses();
        let source = self.source.describe();
        if let Ok(mut status) = self.status.write() {
            status.source = source;
            status.source_error.clone_from(&turn.source_error);
            status.events_read = turn.events_read;
            status.emitted_pending = turn.pending.len();
            status.plugins = plugins;
            status.lag = lag;
            status.dead_letter_books = self.pipeline.dead_letter_books();
        }
    }
}
