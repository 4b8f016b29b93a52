//! The pipeline: routes each batch of events to the plugins that want it, applies projections'
//! row changes to their read models, collects handlers' emitted events, counts failures, and
//! publishes read-model snapshots to the query catalog.
//!
//! Invariant: an event's row changes reach its read model all together or not at all, and a
//! snapshot is published only between batches, so queries never see half an event.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::api::PluginStatus;
use crate::event::{Event, OutgoingEvent};
use crate::plugin::{EventError, Failure, Plugin, PluginKind};
use crate::query::{Catalog, QueryError};
use crate::readmodel::{ReadModel, ReadModelError};

/// Failures kept per plugin for reporting.
const RECENT_FAILURES: usize = 100;

struct Slot {
    plugin: Plugin,
    model: Option<ReadModel>,
    ok: u64,
    failed: u64,
    recent_failures: VecDeque<EventError>,
}

/// Plugins, their read models, and the catalog queries read.
pub struct Pipeline {
    slots: Vec<Slot>,
    catalog: Arc<Catalog>,
}

/// What one batch produced beyond the read models.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Events handlers emitted.
    pub emitted: Vec<OutgoingEvent>,
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
        self.slots.push(Slot { plugin, model, ok: 0, failed: 0, recent_failures: VecDeque::new() });
        Ok(())
    }

    /// Run one batch through every plugin that wants some of it.
    pub fn process(&mut self, events: &[Event]) -> BatchOutcome {
        let mut outcome = BatchOutcome::default();
        for slot in &mut self.slots {
            // Most batches are wanted whole; copy events only when the plugin skips some.
            let info = slot.plugin.info();
            let wanted: std::borrow::Cow<'_, [Event]> = if events.iter().all(|e| info.wants(e)) {
                events.into()
            } else {
                events.iter().filter(|e| info.wants(e)).cloned().collect::<Vec<_>>().into()
            };
            if wanted.is_empty() {
                continue;
            }
            let failures_before = outcome.failures.len();
            match &mut slot.model {
                Some(model) => {
                    for (event, result) in wanted.iter().zip(slot.plugin.apply(&wanted)) {
                        let applied = result.and_then(|changes| {
                            model.apply(&event.position, changes).map_err(|e| model_failure(&slot.plugin, event, e))
                        });
                        match applied {
                            Ok(()) => slot.ok += 1,
                            Err(e) => outcome.failures.push(e),
                        }
                    }
                }
                None => {
                    for result in slot.plugin.handle(&wanted) {
                        match result {
                            Ok(emitted) => {
                                slot.ok += 1;
                                outcome.emitted.extend(emitted);
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
                self.catalog.publish(model.snapshot()?);
            }
        }
        Ok(())
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
            })
            .collect()
    }

    /// The plugins.
    pub fn plugins(&self) -> impl Iterator<Item = &Plugin> {
        self.slots.iter().map(|s| &s.plugin)
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
