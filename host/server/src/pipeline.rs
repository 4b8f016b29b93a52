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

use std::collections::VecDeque;
use std::sync::Arc;

use crate::status::PluginStatus;
use std::path::PathBuf;

use weir_core::event::{Event, OutgoingEvent, PositionMap, StartAt};
use weir_core::row::TableSchema;
use weir_runtime::{EventError, Failure, KeyedState, Plugin, PluginKind};
use weir_sql::query::{Catalog, QueryError};
use weir_sql::readmodel::{ReadModel, ReadModelError, ReadModelSnapshot};

/// Failures kept per plugin for reporting.
const RECENT_FAILURES: usize = 100;

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
}

/// What one batch produced beyond the read models.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Events handlers emitted, ready to append: `position.topic` is the destination; the
    /// partition and offset are assigned when written.
    pub emitted: Vec<Event>,
    /// Events that failed, per plugin.
    pub failures: Vec<EventError>,
}

impl Pipeline {
    /// An empty pipeline publishing to `catalog`.
    pub fn new(catalog: Arc<Catalog>) -> Self {
        Pipeline { slots: Vec::new(), catalog }
    }

    /// The catalog snapshots are published to.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Add a plugin; a projection's table names must not clash with another plugin's.
    pub fn add(&mut self, plugin: Plugin) -> Result<(), QueryError> {
        let model = match &plugin.info().kind {
            PluginKind::Projection { tables } => {
                self.catalog.register(&plugin.info().name, tables)?;
                Some(ReadModel::new(&plugin.info().name, tables))
            }
            PluginKind::Handler { .. } => None,
        };
        self.slots.push(Slot {
            plugin,
            model,
            ok: 0,
            failed: 0,
            recent_failures: VecDeque::new(),
            positions: PositionMap::new(),
            start: StartAt::Earliest,
            unresolved: Vec::new(),
        });
        Ok(())
    }

    /// Where plugin `name` starts while it has no checkpoint of its own. Call before restoring.
    pub fn set_start(&mut self, name: &str, start: StartAt) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.plugin.info().name == name) {
            slot.start = start;
            slot.unresolved = if start == StartAt::Earliest { Vec::new() } else { slot.plugin.info().topics.clone() };
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

    /// Run one batch through every plugin that wants some of it.
    pub fn process(&mut self, events: &[Event]) -> BatchOutcome {
        let mut outcome = BatchOutcome::default();
        let runs = partition_runs(events);
        for slot in &mut self.slots {
            // Events below the plugin's position were applied before; advance past the rest.
            let info = slot.plugin.info();
            let mut fresh_from = Vec::with_capacity(runs.len());
            for &(start, end) in &runs {
                let first = &events[start].position;
                if !info.topics.contains(&first.topic) {
                    fresh_from.push(u64::MAX);
                    continue;
                }
                let next = slot.positions.entry((first.topic.clone(), first.partition)).or_insert(0);
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
                continue;
            }
            let failures_before = outcome.failures.len();
            match &mut slot.model {
                Some(model) => {
                    for (event, result) in wanted.iter().zip(slot.plugin.apply(&wanted)) {
                        let applied = result.and_then(|changes| {
                            model.apply(changes).map_err(|e| model_failure(&slot.plugin, event, e))
                        });
                        match applied {
                            Ok(()) => slot.ok += 1,
                            Err(e) => outcome.failures.push(e),
                        }
                    }
                }
                None => {
                    let label = slot.plugin.info().label();
                    for (cause, result) in wanted.iter().zip(slot.plugin.handle(&wanted)) {
                        match result {
                            Ok(emitted) => {
                                slot.ok += 1;
                                outcome.emitted.extend(
                                    emitted
                                        .into_iter()
                                        .enumerate()
                                        .map(|(n, out)| emitted_event(&label, cause, n, out)),
                                );
                            }
                            Err(e) => outcome.failures.push(e),
                        }
                    }
                }
            }
            for failure in &outcome.failures[failures_before..] {
                slot.failed += 1;
                tracing::warn!(%failure, "event failed");
                if slot.recent_failures.len() == RECENT_FAILURES {
                    slot.recent_failures.pop_front();
                }
                slot.recent_failures.push_back(failure.clone());
            }
        }
        outcome
    }

    /// Publish every read model's current state to the catalog.
    pub fn publish(&mut self) -> Result<(), ReadModelError> {
        for slot in &mut self.slots {
            if let Some(model) = &mut slot.model {
                model.set_positions(&slot.positions);
                self.catalog.publish(model.snapshot()?);
            }
        }
        Ok(())
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
        slot.unresolved = if slot.start == StartAt::Earliest { Vec::new() } else { slot.plugin.info().topics.clone() };
    }

    /// Where to start reading a partition: the lowest position of the plugins that read it.
    pub fn start_offset(&self, topic: &str, partition: u32) -> u64 {
        self.slots
            .iter()
            .filter(|s| s.plugin.info().topics.iter().any(|t| t == topic))
            .map(|s| s.positions.get(&(topic.to_string(), partition)).copied().unwrap_or(0))
            .min()
            .unwrap_or(0)
    }

    /// For every partition some plugin has a position on: the lowest position over the plugins
    /// that read its topic (a plugin without one counts as 0). Partitions nobody has read are
    /// absent.
    pub fn known_positions(&self) -> PositionMap {
        let mut keys: Vec<(String, u32)> = self.slots.iter().flat_map(|s| s.positions.keys().cloned()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|(topic, partition)| {
                let start = self.start_offset(&topic, partition);
                ((topic, partition), start)
            })
            .collect()
    }

    /// Topics some plugin reads.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.slots.iter().flat_map(|s| s.plugin.info().topics.clone()).collect();
        topics.sort();
        topics.dedup();
        topics
    }

    /// Each plugin's positions.
    pub fn progress(&self) -> Vec<PluginProgress> {
        self.slots
            .iter()
            .map(|s| PluginProgress {
                label: s.plugin.info().label(),
                topics: s.plugin.info().topics.clone(),
                positions: s.positions.clone(),
            })
            .collect()
    }

    /// The plugins, with their counts.
    pub fn statuses(&self) -> Vec<PluginStatus> {
        self.slots
            .iter()
            .map(|slot| PluginStatus {
                info: slot.plugin.info().clone(),
                path: slot.plugin.path().display().to_string(),
                events_ok: slot.ok,
                events_failed: slot.failed,
                instances_started: slot.plugin.instances_started(),
                recent_failures: slot.recent_failures.iter().rev().take(10).rev().map(ToString::to_string).collect(),
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

/// An emitted event with a deterministic id (`plugin/topic/partition@offset/n` of its cause),
/// so a replay after a crash re-emits the same ids and consumers can drop duplicates.
fn emitted_event(label: &str, cause: &Event, n: usize, out: OutgoingEvent) -> Event {
    Event {
        id: format!("{label}/{}/{n}", cause.position),
        event_type: out.event_type,
        key: out.key,
        payload: out.payload,
        content_type: out.content_type,
        time_us: cause.time_us,
        headers: out.headers,
        correlation_id: Some(cause.correlation_id.clone().unwrap_or_else(|| cause.id.clone())),
        causation_id: Some(cause.id.clone()),
        position: weir_core::event::Position { topic: out.topic, partition: 0, offset: 0 },
    }
}

fn model_tables(plugin: &Plugin) -> &[TableSchema] {
    match &plugin.info().kind {
        PluginKind::Projection { tables } => tables,
        PluginKind::Handler { .. } => &[],
    }
}

fn model_failure(plugin: &Plugin, event: &Event, error: ReadModelError) -> EventError {
    EventError {
        plugin: plugin.info().label(),
        position: event.position.clone(),
        event_type: event.event_type.clone(),
        failure: Failure::InvalidOutput(error.to_string()),
    }
}
