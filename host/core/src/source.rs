//! Event sources and sinks: where events come from (the embedded log or Kafka) and where
//! produced and emitted events go. The rest of the host sees only [`Source`], [`GroupMember`] and
//! [`EventSink`]; `weir-log` and `weir-kafka` implement them.
//!
//! **Invariant:** a source hands out the events of one partition in offset order, starting at
//! the offset the pipeline asks for; it may repeat events (after a rebalance or a reconnect) but
//! never skips one silently. The pipeline drops the repeats by position.

use std::time::Duration;

use crate::event::{Event, Position, PositionMap, StartAt};

/// Why a source or sink failed. The variants say what the caller can do about it: refused input
/// is the producer's to fix, the rest is the store's.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The embedded log failed (the message names the file, topic, partition or offset).
    #[error("{0}")]
    Log(Box<dyn std::error::Error + Send + Sync>),
    /// The broker or the Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(String),
    /// A produced event is not acceptable (bad topic name, field, or header); nothing was written.
    #[error("{0}")]
    Invalid(String),
    /// A produced event is larger than one record may be; nothing was written.
    #[error("{0}")]
    TooLarge(String),
}

/// A `Result` with a [`SourceError`].
pub type Result<T, E = SourceError> = std::result::Result<T, E>;

/// The end of one partition, for lag.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionEnd {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset the next event written to it will get.
    pub end: u64,
}

/// A stream of events from the partitions this host reads.
pub trait Source: Send {
    /// Up to `max` events, waiting at most `wait` when none is ready.
    fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Event>>;
    /// The end of every partition read, as last seen.
    fn ends(&mut self) -> Vec<PartitionEnd>;
    /// A checkpoint holding `positions` (next offset per partition, lowest over the plugins) is
    /// durable; a broker source commits them to its consumer group.
    fn checkpointed(&mut self, positions: &PositionMap) -> Result<()>;
    /// Partitions this host reads now (all of them for the embedded log; the group's assignment
    /// for Kafka).
    fn assignment(&self) -> Vec<(String, u32)>;
    /// One line for status: what this source is connected to, and its state.
    fn describe(&self) -> String;
    /// Per partition of `topic`, the offset `start` refers to now (for plugins that start at the
    /// latest event or at a time rather than at the earliest).
    fn start_offsets(&mut self, topic: &str, start: StartAt) -> Result<Vec<(u32, u64)>>;
    /// Before the first poll: start reading these partitions at these positions.
    fn start_from(&mut self, positions: &PositionMap);
    /// Plugins (and the checkpoints they would restart from) still need these partitions from
    /// these offsets on: a source that deletes old events (the embedded log's retention) keeps
    /// them.
    fn hold(&mut self, floors: &PositionMap) {
        let _ = floors;
    }
    /// While running: also read these topics, each partition not read yet from its position in
    /// `positions` (0 when absent). Partitions read already keep their place.
    fn add_topics(&mut self, topics: &[String], positions: &PositionMap) -> Result<()> {
        let _ = positions;
        if topics.iter().all(|t| self.assignment().iter().any(|(a, _)| a == t)) {
            return Ok(());
        }
        Err(SourceError::Invalid(format!(
            "{} cannot start reading more topics while it runs ({topics:?})",
            self.describe()
        )))
    }
    /// The consumer-group steps, for a source whose partitions are shared with other processes
    /// (Kafka); `None` for a source this process reads alone (the embedded log).
    fn group(&mut self) -> Option<&mut dyn GroupMember> {
        None
    }
}

/// A source that is one member of a consumer group: partitions come and go with rebalances, and
/// another member may have applied events of a partition before this one was given it.
pub trait GroupMember {
    /// Positions below which events of newly assigned partitions were already applied (by this
    /// member before, or by another member of the group): the pipeline raises its plugins'
    /// positions to them.
    fn take_floors(&mut self) -> PositionMap;
    /// Whether the member must give partitions away (a rebalance revoked them). The caller then
    /// finishes the events on hand, writes a checkpoint, and calls [`GroupMember::hand_over`]; no
    /// event of a revoked partition is returned by [`Source::poll`] in between.
    fn revoking(&self) -> bool;
    /// Give the revoked partitions away at `positions` (the checkpoint just written; `None` when
    /// it could not be written, so the last durable one counts).
    fn hand_over(&mut self, positions: Option<&PositionMap>) -> Result<()>;
}

/// Where produced and emitted events are written. The host also reads back what it wrote there
/// (the tail of handlers' output after a restart, dead letters).
pub trait EventSink: Send + Sync {
    /// Write `events` to `topic`; returns their positions, in order, once durable.
    fn append(&self, topic: &str, events: Vec<Event>) -> Result<Vec<Position>>;
    /// Write to several topics (each named once), in the order given: nothing of a later topic
    /// is visible before an earlier one is durable. A sink that can makes them durable together
    /// (the embedded log: one sync for all); by default, one [`EventSink::append`] after another.
    fn append_all(&self, batches: Vec<(String, Vec<Event>)>) -> Result<Vec<Vec<Position>>> {
        batches.into_iter().map(|(topic, events)| self.append(&topic, events)).collect()
    }
    /// Whether `event` could be written to `topic` (a valid topic name; one record, with its id,
    /// type, key and every header, within the sink's record limit), without writing it: the
    /// refusal [`EventSink::append`] would give ([`SourceError::Invalid`] or
    /// [`SourceError::TooLarge`]), or `Ok`.
    fn check(&self, topic: &str, event: &Event) -> Result<()>;
    /// The end (next offset) of each partition of `topic`; empty when the topic does not exist.
    fn ends(&self, topic: &str) -> Result<Vec<(u32, u64)>>;
    /// Events of one partition from `offset` on, up to about `max_bytes` (at least one if there
    /// is one); empty at the end.
    fn read(&self, topic: &str, partition: u32, offset: u64, max_bytes: usize) -> Result<Vec<Event>>;
}
