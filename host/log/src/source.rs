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
///
/// After a poll that returned events, the next batch is read on a thread of its own while the
/// caller processes this one; the next poll takes it if nothing moved the reading positions in
/// between (`start_from`, `add_topics`), and reads again itself otherwise.
pub struct EmbeddedSource {
    log: Arc<EmbeddedLog>,
    reader: Reader,
    /// The next batch, being read ahead.
    ahead: Option<Ahead>,
}

/// A read of the next batch on a thread of its own: for polls of `max` events, it returns the
/// events and the reading positions and turn after them.
struct Ahead {
    max: usize,
    reading: std::thread::JoinHandle<(Result<Vec<Event>>, Reader)>,
}

/// Where a source reads next.
#[derive(Clone)]
struct Reader {
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
        Ok(EmbeddedSource { log, reader: Reader { next, turn: 0 }, ahead: None })
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

    /// Start reading the next batch of `max` events on a thread of its own.
    fn read_ahead(&mut self, max: usize) {
        let mut reader = self.reader.clone();
        let log = self.log.clone();
        let spawned = std::thread::Builder::new().name("weir-log-read-ahead".into()).spawn(move || {
            let events = reader.read_some(&log, max);
            (events, reader)
        });
        // Without a thread the next poll reads for itself.
        self.ahead = spawned.ok().map(|reading| Ahead { max, reading });
    }

    /// The batch read ahead for a poll of `max` events, with the positions after it; `None`
    /// when there is none, it is empty or failed (the poll then reads, and reports, itself).
    fn take_ahead(&mut self, max: usize) -> Option<Vec<Event>> {
        let ahead = self.ahead.take()?;
        let (events, reader) = ahead.reading.join().ok()?;
        match events {
            Ok(events) if ahead.max == max && !events.is_empty() => {
                self.reader = reader;
                Some(events)
            }
            _ => None,
        }
    }

    /// Drop a batch read ahead from positions that no longer hold.
    fn cancel_ahead(&mut self) {
        if let Some(ahead) = self.ahead.take() {
            let _ = ahead.reading.join();
        }
    }
}

impl Drop for EmbeddedSource {
    fn drop(&mut self) {
        // The reading thread holds the log: let it finish before the source is gone.
        self.cancel_ahead();
    }
}

impl Reader {
    fn read_some(&mut self, log: &EmbeddedLog, max: usize) -> Result<Vec<Event>> {
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
            let mut batch = match log.read(&key.0, key.1, offset, budget) {
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
        if let Some(events) = self.take_ahead(max) {
            self.read_ahead(max);
            return Ok(events);
        }
        let seen = self.log.appends();
        let mut events = self.reader.read_some(&self.log, max)?;
        if events.is_empty() && !wait.is_zero() {
            self.log.wait(seen, wait);
            events = self.reader.read_some(&self.log, max)?;
        }
        if !events.is_empty() {
            self.read_ahead(max);
        }
        Ok(events)
    }

    fn ends(&mut self) -> Vec<PartitionEnd> {
        let topics: Vec<String> = {
            let mut t: Vec<String> = self.reader.next.keys().map(|(t, _)| t.clone()).collect();
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
        self.reader.next.keys().cloned().collect()
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
        self.cancel_ahead();
        for topic in topics {
            let partitions = self.log.create_topic(topic)?;
            for partition in 0..partitions {
                let key = (topic.clone(), partition);
                let start = positions.get(&key).copied().unwrap_or(0);
                self.reader.next.entry(key).or_insert(start);
            }
        }
        Ok(())
    }

    fn start_from(&mut self, positions: &PositionMap) {
        self.cancel_ahead();
        for (key, next) in positions {
            if let Some(entry) = self.reader.next.get_mut(key) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LogConfig;

    fn events(from: u64, n: u64) -> Vec<Event> {
        (from..from + n)
            .map(|i| Event { id: format!("e-{i}"), key: Some(format!("k-{}", i % 7)), ..Event::default() })
            .collect()
    }

    /// Polls while a batch is read ahead, with appends in between, a rewind and a new topic: each
    /// event comes once, in order within its partition, and a rewind is read from where it says.
    #[test]
    fn batches_read_ahead_lose_nothing_and_follow_moved_positions() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(EmbeddedLog::open(dir.path(), LogConfig { partitions: 3, ..LogConfig::default() }).unwrap());
        log.append("a", events(0, 500)).unwrap();
        let mut source = EmbeddedSource::new(log.clone(), &["a".to_string()], |_, _| 0).unwrap();
        let mut seen: Vec<Event> = Vec::new();
        fn poll(source: &mut EmbeddedSource, seen: &mut Vec<Event>, max: usize) -> usize {
            let got = source.poll(max, Duration::ZERO).unwrap();
            assert!(got.len() <= max, "a poll of {max} gave {}", got.len());
            seen.extend(got.iter().cloned());
            got.len()
        }
        let mut polls = 0;
        while seen.len() < 500 {
            // Polls of changing sizes: one never takes a batch read for a larger one.
            poll(&mut source, &mut seen, if polls % 3 == 2 { 10 } else { 64 });
            polls += 1;
            // More events arrive while a batch is being read ahead.
            if polls == 3 {
                log.append("a", events(500, 300)).unwrap();
            }
        }
        while poll(&mut source, &mut seen, 64) > 0 {}
        let ids = |list: &[Event]| {
            let mut ids: Vec<String> = list.iter().map(|e| e.id.clone()).collect();
            ids.sort();
            ids
        };
        let all = events(0, 800);
        assert_eq!(ids(&seen), ids(&all), "each event exactly once");
        for partition in 0..3 {
            let offsets: Vec<u64> =
                seen.iter().filter(|e| e.position.partition == partition).map(|e| e.position.offset).collect();
            assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "partition {partition} in order: {offsets:?}");
        }

        // Rewind partition 1 after a batch was read ahead: the next poll starts there.
        seen.clear();
        log.append("a", events(800, 100)).unwrap();
        assert!(poll(&mut source, &mut seen, 16) > 0);
        let rewind = PositionMap::from([(("a".to_string(), 1), 5)]);
        source.start_from(&rewind);
        seen.clear();
        while poll(&mut source, &mut seen, 16) > 0 {}
        let first_of_1 = seen.iter().find(|e| e.position.partition == 1).unwrap();
        assert_eq!(first_of_1.position.offset, 5, "the rewind is read from where it says");

        // A topic added while a batch is read ahead is read too.
        log.append("b", events(0, 20)).unwrap();
        log.append("a", events(900, 50)).unwrap();
        assert!(poll(&mut source, &mut seen, 16) > 0);
        source.add_topics(&["b".to_string()], &PositionMap::new()).unwrap();
        seen.clear();
        while poll(&mut source, &mut seen, 16) > 0 {}
        assert_eq!(seen.iter().filter(|e| e.position.topic == "b").count(), 20);
    }
}
