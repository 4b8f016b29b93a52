//! The ingest loop: source → pipeline (plugins, read models) → sink for emitted events →
//! snapshots for queries → checkpoints. It runs on a thread of its own; queries and the API only
//! read what it publishes.
//!
//! **Architecture Invariant:** a checkpoint is taken only between batches and only when every
//! event handlers emitted so far has been written, so a restart from it neither loses nor
//! re-applies an event, and never loses an emitted one.
//! **Architecture Invariant:** partitions a rebalance revokes are handed over only after a
//! checkpoint holding every event processed from them, at that checkpoint's positions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::api::PluginStatus;
use crate::checkpoint::{CheckpointConfig, CheckpointStore, WriteStats};
use crate::event::{Event, PositionMap};
use crate::pipeline::Pipeline;
use crate::source::{EventSink, Source};

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
}

/// One plugin's progress on one partition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lag {
    /// `name@version`.
    pub plugin: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Next offset the plugin will process.
    pub position: u64,
    /// Offset the next event written to the partition gets.
    pub end: u64,
    /// `end - position`.
    pub lag: u64,
}

/// The last checkpoint written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckpointStatus {
    /// Sequence number.
    pub seq: u64,
    /// Rows over all tables.
    pub rows: usize,
    /// Bytes written.
    pub bytes: u64,
    /// Milliseconds it took.
    pub write_ms: u64,
}

/// What `GET /v1/status` reports; the loop rewrites it after each publish.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Status {
    /// The source, and its state.
    pub source: String,
    /// The source's last error, until it recovers.
    pub source_error: Option<String>,
    /// Events read from the source since start.
    pub events_read: u64,
    /// Events handlers emitted that wait to be written (non-zero only while the sink fails).
    pub emitted_pending: usize,
    /// The plugins.
    pub plugins: Vec<PluginStatus>,
    /// Per plugin and partition: position, end and lag.
    pub lag: Vec<Lag>,
    /// The last checkpoint written.
    pub checkpoint: Option<CheckpointStatus>,
}

/// Shared, read-mostly status.
pub type StatusBoard = Arc<RwLock<Status>>;

/// The loop and what it owns.
pub struct Ingest {
    pipeline: Pipeline,
    source: Box<dyn Source>,
    sink: Arc<dyn EventSink>,
    checkpoints: CheckpointStore,
    settings: IngestSettings,
    status: StatusBoard,
    /// Plugins' start positions were found but not yet checkpointed.
    start_unsaved: bool,
}

/// A checkpoint being written in the background.
struct Writing {
    done: mpsc::Receiver<Result<WriteStats, String>>,
    positions: PositionMap,
}

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
        Ingest { pipeline, source, sink, checkpoints, settings, status, start_unsaved: false }
    }

    /// Run until `stop` is set, then write a last checkpoint. Returns the pipeline.
    pub fn run(mut self, stop: &AtomicBool) -> Pipeline {
        let mut pending: Vec<Event> = Vec::new();
        let mut events_read = 0u64;
        let mut dirty = true;
        let mut changed_since_checkpoint = false;
        let mut last_publish = Instant::now();
        let mut last_report = Instant::now();
        let mut last_checkpoint = Instant::now();
        let mut writing: Option<Writing> = None;
        let mut source_error: Option<String> = None;
        let mut backoff = Duration::from_millis(50);
        let checkpoint_interval = Duration::from_millis(self.settings.checkpoint.interval_ms.max(1));
        self.report(events_read, &pending, None);

        let mut starts_resolved = false;
        while !stop.load(Ordering::Relaxed) {
            if !starts_resolved {
                // Plugins that start at the latest event or at a time: find where, and make it
                // durable before the first event, so a crash cannot move their start.
                match self.resolve_starts() {
                    Ok(()) => starts_resolved = true,
                    Err(message) => {
                        if source_error.as_deref() != Some(&message) {
                            tracing::warn!(error = %message, "finding plugins' start positions failed; retrying");
                        }
                        source_error = Some(message);
                        self.report(events_read, &pending, source_error.clone());
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                }
            }
            if !pending.is_empty() {
                pending = self.write_emitted(pending);
                if !pending.is_empty() {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    self.report(events_read, &pending, source_error.clone());
                    continue;
                }
            }
            let wait = self.settings.publish_interval.saturating_sub(last_publish.elapsed()).max(Duration::from_millis(1));
            let wait = if dirty { wait } else { Duration::from_millis(100) };
            let polled = self.source.poll(self.settings.batch_size.max(1), wait);
            let floors = self.source.take_floors();
            if !floors.is_empty() {
                self.pipeline.raise_positions(&floors);
            }
            match polled {
                Ok(events) if !events.is_empty() => {
                    if source_error.take().is_some() {
                        tracing::info!(source = %self.source.describe(), "source recovered");
                    }
                    backoff = Duration::from_millis(50);
                    events_read += events.len() as u64;
                    let span = tracing::debug_span!("batch", events = events.len());
                    let _entered = span.enter();
                    let outcome = self.pipeline.process(&events);
                    pending = outcome.emitted;
                    dirty = true;
                    changed_since_checkpoint = true;
                }
                Ok(_) => {}
                Err(e) => {
                    let message = e.to_string();
                    if source_error.as_deref() != Some(&message) {
                        tracing::warn!(error = %message, source = %self.source.describe(), "source failed; retrying");
                    }
                    source_error = Some(message);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
            if self.source.revoking() {
                // A rebalance takes partitions away: checkpoint the work done on them first.
                if self.hand_over(&mut pending, &mut writing, stop) {
                    changed_since_checkpoint = false;
                    last_checkpoint = Instant::now();
                }
            }
            if dirty && last_publish.elapsed() >= self.settings.publish_interval {
                if let Err(e) = self.pipeline.publish() {
                    tracing::error!(error = %e, "publishing snapshots failed");
                }
                dirty = false;
                last_publish = Instant::now();
                self.report(events_read, &pending, source_error.clone());
                last_report = Instant::now();
            } else if last_report.elapsed() >= Duration::from_secs(1) {
                // Idle or failing: keep lag and errors current anyway.
                self.report(events_read, &pending, source_error.clone());
                last_report = Instant::now();
            }
            if let Some(w) = &writing {
                match w.done.try_recv() {
                    Ok(result) => {
                        let positions = w.positions.clone();
                        writing = None;
                        self.finish_checkpoint(result, &positions);
                    }
                    Err(mpsc::TryRecvError::Empty) => {}
                    Err(mpsc::TryRecvError::Disconnected) => writing = None,
                }
            }
            if writing.is_none()
                && pending.is_empty()
                && changed_since_checkpoint
                && last_checkpoint.elapsed() >= checkpoint_interval
            {
                match self.start_checkpoint() {
                    Ok(w) => writing = Some(w),
                    Err(e) => tracing::error!(error = %e, "checkpoint failed"),
                }
                changed_since_checkpoint = false;
                last_checkpoint = Instant::now();
            }
        }

        // Shutdown: let a running write finish, then write the final state if it is complete.
        if let Some(w) = writing.take()
            && let Ok(result) = w.done.recv()
        {
            self.finish_checkpoint(result, &w.positions);
        }
        if !pending.is_empty() {
            pending = self.write_emitted(pending);
        }
        if pending.is_empty() {
            if changed_since_checkpoint {
                match self.start_checkpoint() {
                    Ok(w) => {
                        if let Ok(result) = w.done.recv() {
                            self.finish_checkpoint(result, &w.positions);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "final checkpoint failed"),
                }
            }
        } else {
            tracing::error!(
                pending = pending.len(),
                "emitted events could not be written; no final checkpoint, so they are emitted again on restart"
            );
        }
        let _ = self.pipeline.publish();
        self.report(events_read, &pending, source_error);
        self.pipeline
    }

    /// Look up the start of every plugin that has no checkpoint and does not start at the
    /// earliest event; tell the source, and checkpoint the result.
    fn resolve_starts(&mut self) -> Result<(), String> {
        let wanted = self.pipeline.starts_to_resolve();
        if wanted.is_empty() && !self.start_unsaved {
            return Ok(());
        }
        for (topic, start) in wanted {
            let offsets = self
                .source
                .start_offsets(&topic, start)
                .map_err(|e| format!("finding where {start} is in topic {topic}: {e}"))?;
            self.pipeline.resolve_start(&topic, start, &offsets);
            self.start_unsaved = true;
        }
        self.source.start_from(&self.pipeline.known_positions());
        let written = self.start_checkpoint().map_err(|e| e.to_string())?;
        let result = written.done.recv().map_err(|_| "the checkpoint thread stopped".to_string())?;
        let ok = result.is_ok();
        self.finish_checkpoint(result, &written.positions);
        if ok {
            self.start_unsaved = false;
            Ok(())
        } else {
            Err("writing the checkpoint of the plugins' start positions failed".into())
        }
    }

    /// Hand revoked partitions over: write the emitted events on hand, let a running checkpoint
    /// finish, write one more holding every event processed so far, and give the partitions
    /// away at its positions. If that checkpoint cannot be written (the sink is down for
    /// [`HANDOVER_WAIT`], or the write fails) they go at the previous checkpoint's positions and
    /// the next owner re-applies what came after it.
    /// Returns whether it wrote a checkpoint.
    fn hand_over(&mut self, pending: &mut Vec<Event>, writing: &mut Option<Writing>, stop: &AtomicBool) -> bool {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        while !pending.is_empty() && started.elapsed() < HANDOVER_WAIT && !stop.load(Ordering::Relaxed) {
            *pending = self.write_emitted(std::mem::take(pending));
            if !pending.is_empty() {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
        if let Some(w) = writing.take()
            && let Ok(result) = w.done.recv()
        {
            self.finish_checkpoint(result, &w.positions);
        }
        let mut positions = None;
        if pending.is_empty() {
            match self.start_checkpoint() {
                Ok(w) => match w.done.recv() {
                    Ok(result) => {
                        let written = result.is_ok();
                        self.finish_checkpoint(result, &w.positions);
                        if written {
                            positions = Some(w.positions);
                        }
                    }
                    Err(_) => tracing::error!("the checkpoint thread stopped before handing partitions over"),
                },
                Err(e) => tracing::error!(error = %e, "checkpoint before handing partitions over failed"),
            }
        } else {
            tracing::error!(
                pending = pending.len(),
                "emitted events could not be written; revoked partitions go at the last checkpoint"
            );
        }
        if let Err(e) = self.source.hand_over(positions.as_ref()) {
            tracing::error!(error = %e, "handing partitions over failed");
        }
        tracing::info!(ms = started.elapsed().as_millis() as u64, checkpointed = positions.is_some(), "partitions handed over");
        positions.is_some()
    }

    /// Write handlers' events, grouped by topic; returns those not written.
    fn write_emitted(&self, events: Vec<Event>) -> Vec<Event> {
        let mut by_topic: Vec<(String, Vec<Event>)> = Vec::new();
        for event in events {
            match by_topic.iter_mut().find(|(t, _)| *t == event.position.topic) {
                Some((_, list)) => list.push(event),
                None => by_topic.push((event.position.topic.clone(), vec![event])),
            }
        }
        let mut left = Vec::new();
        for (topic, list) in by_topic {
            if !left.is_empty() {
                left.extend(list);
                continue;
            }
            if let Err(e) = self.sink.append(&topic, list.clone()) {
                tracing::warn!(error = %e, topic, events = list.len(), "writing emitted events failed; retrying");
                left.extend(list);
            }
        }
        left
    }

    fn start_checkpoint(&mut self) -> Result<Writing, crate::readmodel::ReadModelError> {
        let captures = self.pipeline.capture()?;
        // What the source may commit: per partition, the lowest position of the plugins that read
        // it, a plugin with no position there yet counting as 0.
        let positions = self.pipeline.known_positions();
        let store = self.checkpoints.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("weir-checkpoint".into())
            .spawn(move || {
                let result = store.next_seq().and_then(|seq| store.write(seq, &captures)).map_err(|e| e.to_string());
                let _ = tx.send(result);
            })
            .map_err(|e| crate::readmodel::ReadModelError::CheckpointFile {
                path: std::path::PathBuf::from("checkpoint thread"),
                message: e.to_string(),
            })?;
        Ok(Writing { done: rx, positions })
    }

    fn finish_checkpoint(&mut self, result: Result<WriteStats, String>, positions: &PositionMap) {
        match result {
            Ok(stats) => {
                tracing::info!(
                    seq = stats.seq,
                    rows = stats.rows,
                    bytes = stats.bytes,
                    ms = stats.elapsed.as_millis() as u64,
                    "checkpoint written"
                );
                if let Ok(mut status) = self.status.write() {
                    status.checkpoint = Some(CheckpointStatus {
                        seq: stats.seq,
                        rows: stats.rows,
                        bytes: stats.bytes,
                        write_ms: stats.elapsed.as_millis() as u64,
                    });
                }
                if let Err(e) = self.source.checkpointed(positions) {
                    tracing::warn!(error = %e, "committing positions to the source failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "checkpoint failed; the previous one stays"),
        }
    }

    fn report(&mut self, events_read: u64, pending: &[Event], source_error: Option<String>) {
        let ends = self.source.ends();
        let mut lag = Vec::new();
        for progress in self.pipeline.progress() {
            for end in ends.iter().filter(|e| progress.topics.contains(&e.topic)) {
                let position = progress.positions.get(&(end.topic.clone(), end.partition)).copied().unwrap_or(0);
                lag.push(Lag {
                    plugin: progress.label.clone(),
                    topic: end.topic.clone(),
                    partition: end.partition,
                    position,
                    end: end.end,
                    lag: end.end.saturating_sub(position),
                });
            }
        }
        let plugins = self.pipeline.statuses();
        let source = self.source.describe();
        if let Ok(mut status) = self.status.write() {
            status.source = source;
            status.source_error = source_error;
            status.events_read = events_read;
            status.emitted_pending = pending.len();
            status.plugins = plugins;
            status.lag = lag;
        }
    }
}
