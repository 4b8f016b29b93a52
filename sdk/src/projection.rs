//! Projections: events in, row changes out.

use crate::state::{StateTxn, run_batch, state_accessors};
use crate::{Event, Key, Result, Row, RowChange, TableSchema};

/// A plugin that turns events into rows of read-model tables.
///
/// The host calls [`apply`](Projection::apply) once per event, in stream order per partition.
/// If it returns an error, none of the event's row changes or state writes are kept.
pub trait Projection {
    /// Name, version, subscription and tables. Called once when the plugin is loaded.
    fn describe() -> ProjectionInfo;

    /// Turn one event into row changes, recorded on `ctx`.
    fn apply(ctx: &mut ProjectionCtx<'_>, event: &Event) -> Result<()>;
}

/// What a projection is, as the host sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectionInfo {
    /// Plugin name; names its tables in SQL (`name.table`).
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// One line for humans.
    pub description: String,
    /// Topics to read.
    pub topics: Vec<String>,
    /// Event types to receive; empty means all.
    pub event_types: Vec<String>,
    /// Tables this projection writes.
    pub tables: Vec<TableSchema>,
}

impl ProjectionInfo {
    /// A projection with this name and version, no topics and no tables yet.
    pub fn new(name: &str, version: &str) -> Self {
        ProjectionInfo {
            name: name.to_string(),
            version: version.to_string(),
            description: String::new(),
            topics: Vec::new(),
            event_types: Vec::new(),
            tables: Vec::new(),
        }
    }

    /// Set the description.
    pub fn description(mut self, text: &str) -> Self {
        self.description = text.to_string();
        self
    }

    /// Subscribe to a topic.
    pub fn topic(mut self, topic: &str) -> Self {
        self.topics.push(topic.to_string());
        self
    }

    /// Receive only these event types (by default, all).
    pub fn event_types<'a>(mut self, types: impl IntoIterator<Item = &'a str>) -> Self {
        self.event_types.extend(types.into_iter().map(str::to_string));
        self
    }

    /// Declare a table this projection writes.
    pub fn table<R: Row>(mut self) -> Self {
        self.tables.push(R::schema());
        self
    }
}

/// What a projection can do while applying one event.
pub struct ProjectionCtx<'a> {
    pub(crate) changes: Vec<RowChange>,
    pub(crate) state: &'a mut StateTxn,
}

impl ProjectionCtx<'_> {
    /// Insert `row`, or replace the row with the same primary key.
    pub fn upsert<R: Row>(&mut self, row: R) {
        self.changes.push(RowChange::Upsert { table: R::TABLE.to_string(), row: row.into_values() });
    }

    /// Delete the row of table `R` with this primary key, if there is one.
    pub fn delete<R: Row>(&mut self, key: impl Into<Key>) {
        self.changes.push(RowChange::Delete { table: R::TABLE.to_string(), key: key.into().0 });
    }
}

state_accessors!(ProjectionCtx);

/// Apply a batch, one event at a time.
pub(crate) fn apply_batch<P: Projection>(events: impl IntoIterator<Item = Event>) -> Vec<Result<Vec<RowChange>>> {
    run_batch(events, |state, event| {
        let mut ctx = ProjectionCtx { changes: Vec::new(), state };
        P::apply(&mut ctx, event).map(|()| ctx.changes)
    })
}
