//! The embedded log as a [`Source`] and an [`EventSink`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{EventSink, PartitionEnd, Result, Source};
use crate::event::{Event, Position, PositionMap};
use crate::log::{EmbeddedLog, LogError};

/// Bytes read from one partition per poll.
const READ_BYTES: usize = 1 << 20;

/// Reads every partition of some topics of the embedded log.
pub struct EmbeddedSource {
    log: Arc<EmbeddedLog>,
    /// Next offset to read, per partition.
    next: BTreeMap<(String, u32), u64>,
    /// Partition to start the next poll at, for fairness.
    turn: usize,
}

impl EmbeddedSource {
    /// Read `topics` (created if missing), starting each partition at `start(topic, partition)`.
    pub fn new(log: Arc<EmbeddedLog>, topics: &[String], start: impl Fn(&str, u32) -> u64) -> Result<Self> {
        let mut next = BTreeMap::new();
        for topic in topics {
            let partitions = log.create_topic(topic)?;
            for partition in 0..partitions {
                next.insert((topic.clone(), partition), start(topic, partition));
            }
        }
        Ok(EmbeddedSource { log, next, turn: 0 })
    }

    fn read_some(&mut self, max: usize) -> Result<Vec<Event>> {
        let keys: Vec<(String, u32)> = self.next.keys().cloned().collect();
        let mut events = Vec::new();
        for i in 0..keys.len() {
            if events.len() >= max {
                break;
            }
            let key = &keys[(self.turn + i) % keys.len()];
            let Some(&offset) = self.next.get(key) else { continue };
            let budget = READ_BYTES.min((max - events.len()) * 256).max(4096);
            let mut batch = match self.log.read(&key.0, key.1, offset, budget) {
                Ok(batch) => batch,
                Err(LogError::OffsetOutOfRange { start, end, .. }) if offset < start => {
                    tracing::warn!(
                        topic = %key.0, partition = key.1, offset, start, end,
                        "events before {start} were removed by retention before weir read them; continuing at {start}"
                    );
                    self.next.insert(key.clone(), start);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            batch.truncate(max - events.len());
            if let Some(last) = batch.last() {
                self.next.insert(key.clone(), last.position.offset + 1);
            }
            events.append(&mut batch);
        }
        self.turn = self.turn.wrapping_add(1);
        Ok(events)
    }
}

impl Source for EmbeddedSource {
    fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Event>> {
        let seen = self.log.appends();
        let events = self.read_some(max)?;
        if !events.is_empty() || wait.is_zero() {
            return Ok(events);
        }
        self.log.wait(seen, wait);
        self.read_some(max)
    }

    fn ends(&mut self) -> Vec<PartitionEnd> {
        let topics: Vec<String> = {
            let mut t: Vec<String> = self.next.keys().map(|(t, _)| t.clone()).collect();
            t.dedup();
            t
        };
        topics
            .iter()
            .flat_map(|topic| {
                self.log.ranges(topic).unwrap_or_default().into_iter().map(move |r| PartitionEnd {
                    topic: topic.clone(),
                    partition: r.partition,
                    end: r.end,
                })
            })
            .collect()
    }

    fn checkpointed(&mut self, _positions: &PositionMap) -> Result<()> {
        Ok(())
    }

    fn assignment(&self) -> Vec<(String, u32)> {
        self.next.keys().cloned().collect()
    }

    fn describe(&self) -> String {
        "embedded log".to_string()
    }
}

/// Writes to the embedded log.
pub struct EmbeddedSink(pub Arc<EmbeddedLog>);

impl EventSink for EmbeddedSink {
    fn append(&self, topic: &str, events: Vec<Event>) -> Result<Vec<Position>> {
        Ok(self.0.append(topic, events)?)
    }
}
