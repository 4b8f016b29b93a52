//! The embedded log as a [`Source`] and an [`EventSink`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use weir_core::event::{Event, Position, PositionMap, StartAt};
use weir_core::source::{EventSink, PartitionEnd, Result, Source, SourceError};

use crate::{EmbeddedLog, LogError};

impl From<LogError> for SourceError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::InvalidTopicName(_) | LogError::TopicCaseClash { .. } | LogError::TooManyTopics { .. } => {
                SourceError::Invalid(e.to_string())
            }
            LogError::RecordTooLarge { .. } => SourceError::TooLarge(e.to_string()),
            other => SourceError::Log(Box::new(other)),
        }
    }
}

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

    /// The first offset in `[from, end)` whose event time is at or after `us`, else `end`.
    fn first_at_or_after(&self, topic: &str, partition: u32, from: u64, end: u64, us: i64) -> Result<u64> {
        let mut offset = from;
        while offset < end {
            let batch = self.log.read(topic, partition, offset, READ_BYTES)?;
            if let Some(found) = batch.iter().find(|e| e.time_us >= us) {
                return Ok(found.position.offset);
            }
            match batch.last() {
                Some(last) => offset = last.position.offset + 1,
                None => break,
            }
        }
        Ok(end)
    }

    fn read_some(&mut self, max: usize) -> Result<Vec<Event>> {
        let keys: Vec<(String, u32)> = self.next.keys().cloned().collect();
        let mut events = Vec::new();
        for i in 0..keys.len() {
            if events.len() >= max {
                break;
            }
            let key = &keys[(self.turn + i) % keys.len()];
            let Some(&offset) = self.next.get(key) else {
                continue;
            };
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

    fn start_offsets(&mut self, topic: &str, start: StartAt) -> Result<Vec<(u32, u64)>> {
        let mut offsets = Vec::new();
        for range in self.log.ranges(topic)? {
            let offset = match start {
                StartAt::Earliest => range.start,
                StartAt::Latest => range.end,
                StartAt::Time(us) => self.first_at_or_after(topic, range.partition, range.start, range.end, us)?,
            };
            offsets.push((range.partition, offset));
        }
        Ok(offsets)
    }

    fn hold(&mut self, floors: &PositionMap) {
        self.log.hold(floors);
    }

    fn add_topics(&mut self, topics: &[String], positions: &PositionMap) -> Result<()> {
        for topic in topics {
            let partitions = self.log.create_topic(topic)?;
            for partition in 0..partitions {
                let key = (topic.clone(), partition);
                let start = positions.get(&key).copied().unwrap_or(0);
                self.next.entry(key).or_insert(start);
            }
        }
        Ok(())
    }

    fn start_from(&mut self, positions: &PositionMap) {
        for (key, next) in positions {
            if let Some(entry) = self.next.get_mut(key) {
                *entry = *next;
            }
        }
    }
}

/// Writes to the embedded log.
pub struct EmbeddedSink(pub Arc<EmbeddedLog>);

impl EventSink for EmbeddedSink {
    fn append(&self, topic: &str, events: Vec<Event>) -> Result<Vec<Position>> {
        Ok(self.0.append(topic, events)?)
    }

    fn append_all(&self, batches: Vec<(String, Vec<Event>)>) -> Result<Vec<Vec<Position>>> {
        Ok(self.0.append_all(batches)?)
    }

    fn check(&self, topic: &str, event: &Event) -> Result<()> {
        match self.0.check(topic, event) {
            Err(LogError::RecordTooLarge { bytes, limit, .. }) => Err(SourceError::TooLarge(format!(
                "it is {bytes} bytes as a record of topic {topic}, over the embedded log's limit of {limit} bytes"
            ))),
            other => Ok(other?),
        }
    }

    fn ends(&self, topic: &str) -> Result<Vec<(u32, u64)>> {
        if !self.0.has_topic(topic) {
            return Ok(Vec::new());
        }
        Ok(self.0.ranges(topic)?.into_iter().map(|r| (r.partition, r.end)).collect())
    }

    fn read(&self, topic: &str, partition: u32, offset: u64, max_bytes: usize) -> Result<Vec<Event>> {
        match self.0.read(topic, partition, offset, max_bytes) {
            // Retention removed the start: read from where the partition starts now.
            Err(LogError::OffsetOutOfRange { start, .. }) if offset < start => {
                Ok(self.0.read(topic, partition, start, max_bytes)?)
            }
            other => Ok(other?),
        }
    }
}
