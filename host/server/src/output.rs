//! What the host writes to topics besides read models: the events handlers emit and the dead
//! letters of events a plugin failed on; and, after a restart, what the previous process wrote
//! after its last checkpoint, so that it is not written twice.
//!
//! Effectively-once output: every event the host writes for a plugin carries a deterministic id
//! (`plugin/topic/partition@offset/n`, from the position of the event that caused it) and the
//! header [`EMITTER`]. A checkpoint records the end of every topic the host writes to
//! ([`Marks`]). After a crash the host restores the checkpoint, reads those topics from the
//! marks to their ends ([`AlreadyWritten::scan`]) and, while its plugins re-process the events
//! after the checkpoint (deterministically: same state, same events, same output), drops each
//! event whose id it found there. Once every plugin is past the last cause found, nothing is left
//! to drop and checkpoints record new marks again.
//!
//! **Architecture Invariant:** a topic the host writes to holds each id the host gave an event
//! at most once, across any number of crashes, as long as its plugins are deterministic; the
//! events between a checkpoint's marks and a crash are found again by reading, never assumed.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use weir_core::event::{Event, OutgoingEvent, Position, PositionMap};
use weir_core::source::{EventSink, SourceError};
use weir_runtime::EventError;

/// Header naming the plugin an event was written for (emitted by it, or dead-lettered from it).
pub const EMITTER: &str = "weir-emitter";
/// Header on what a timer's event caused: the position of the tick that fired the timer.
pub const CAUSE: &str = "weir-cause";

/// Dead-letter headers: why, by which version, from where, after how many tries.
pub const DLQ_ERROR: &str = "weir-dlq-error";
pub const DLQ_KIND: &str = "weir-dlq-kind";
pub const DLQ_PLUGIN: &str = "weir-dlq-plugin";
pub const DLQ_TOPIC: &str = "weir-dlq-topic";
pub const DLQ_PARTITION: &str = "weir-dlq-partition";
pub const DLQ_OFFSET: &str = "weir-dlq-offset";
pub const DLQ_ATTEMPTS: &str = "weir-dlq-attempts";
pub const DLQ_ID: &str = "weir-dlq-id";

/// One record the host writes for its plugins. Each kind has its own topics, its own order and
/// its own reason to be read back, so the kinds never share a list told apart by topic names.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// An event a handler emitted, to a topic of its `emits_to`.
    Emitted(Event),
    /// The journal record of a batch a handler processed (`weir.journal.<handler>`): written
    /// before anything that batch emitted.
    Journal(Event),
    /// An event a plugin failed on, on its dead-letter topic (`weir.dlq.<plugin>`).
    DeadLetter(Event),
    /// A tick of the host's processing time, on `weir.ticks`.
    Tick(Event),
}

impl Outgoing {
    /// The record as it is written (`position.topic` is where).
    pub fn event(&self) -> &Event {
        match self {
            Outgoing::Emitted(e) | Outgoing::Journal(e) | Outgoing::DeadLetter(e) | Outgoing::Tick(e) => e,
        }
    }

    /// The record as it is written.
    pub fn into_event(self) -> Event {
        match self {
            Outgoing::Emitted(e) | Outgoing::Journal(e) | Outgoing::DeadLetter(e) | Outgoing::Tick(e) => e,
        }
    }

    /// Where it goes.
    pub fn topic(&self) -> &str {
        &self.event().position.topic
    }
}

/// What the host made to write and has not written yet, in the order it was made. Records are
/// only ever added (a turn's new output never replaces what an earlier step queued) and leave
/// only when written: [`Unwritten::take`] hands them to the writer, which puts back what it
/// could not write with [`Unwritten::put_back`].
#[derive(Debug, Default)]
pub struct Unwritten {
    records: Vec<Outgoing>,
}

impl Unwritten {
    /// Queue `records` after those already waiting.
    pub fn add(&mut self, records: impl IntoIterator<Item = Outgoing>) {
        self.records.extend(records);
    }

    /// How many records wait.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Everything waiting, to be written.
    pub fn take(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.records)
    }

    /// Records a write left unwritten: they go back ahead of anything queued since.
    pub fn put_back(&mut self, mut left: Vec<Outgoing>) {
        left.append(&mut self.records);
        self.records = left;
    }

    /// Drop what the previous process wrote already.
    pub fn drop_written(&mut self, written: &mut AlreadyWritten) {
        written.drop_written(&mut self.records);
    }
}

/// Bytes read per call when reading back what the host wrote.
const READ_BYTES: usize = 1 << 20;

/// The journal topic of handler `name`: the order in which it processed its input.
pub fn journal_topic(name: &str) -> String {
    format!("weir.journal.{name}")
}

/// One run of a journaled batch: events of `topic`/`partition` from `first` to `last`, both
/// included (those the handler wanted among them).
pub type JournalRun = (String, u32, u64, u64);

/// The journal record of one batch handler `name` processed: its runs, in order, one line each
/// (`topic partition first last`). Keyed by the handler's name, so one partition holds them all,
/// in order.
pub fn journal_record(name: &str, runs: &[JournalRun]) -> Event {
    let mut payload = String::new();
    for (topic, partition, first, last) in runs {
        payload.push_str(&format!("{topic} {partition} {first} {last}\n"));
    }
    let (topic, partition, first, _) = &runs[0];
    Event {
        id: format!("{name}/journal/{topic}/{partition}@{first}"),
        event_type: "weir.journal".into(),
        key: Some(name.to_string()),
        payload: payload.into_bytes(),
        content_type: "text/plain".into(),
        position: Position { topic: journal_topic(name), partition: 0, offset: 0 },
        ..Event::default()
    }
}

/// The runs of a journal record, or why it is not one.
pub fn journal_runs(record: &Event) -> Result<Vec<JournalRun>, String> {
    let text = std::str::from_utf8(&record.payload).map_err(|e| format!("{}: not text: {e}", record.position))?;
    text.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
            match (fields.first(), number(1), number(2), number(3)) {
                (Some(topic), Some(partition), Some(first), Some(last)) if fields.len() == 4 => {
                    Ok((topic.to_string(), partition as u32, first, last))
                }
                _ => Err(format!("{}: {line:?} is not `topic partition first last`", record.position)),
            }
        })
        .collect()
}

/// The dead-letter topic of plugin `name`.
pub fn dead_letter_topic(name: &str) -> String {
    format!("weir.dlq.{name}")
}

/// The event to write for the `n`th event plugin `name` emitted while handling `cause`: a
/// deterministic id, the cause's time, the cause's id as causation id, its correlation id (or
/// its id, for the first event of a flow) carried over, and the [`EMITTER`] header.
///
/// What a timer's event causes is named after the timer (`plugin/timer:KEY@AT/n`), not after the
/// tick that fired it, and carries that tick's position in the header [`CAUSE`].
pub fn emitted_event(name: &str, cause: &Event, n: usize, out: OutgoingEvent) -> Event {
    let mut headers = out.headers;
    headers.push((EMITTER.to_string(), name.as_bytes().to_vec()));
    // A timer's event is made by the runtime at a tick (its position is the tick's); a header of
    // that name on an event from anywhere else is not one.
    let fired = cause.position.topic == weir_runtime::TICKS_TOPIC
        && cause.headers.iter().any(|(h, _)| h == weir_runtime::TIMER_HEADER);
    let id = if fired {
        headers.push((CAUSE.to_string(), cause.position.to_string().into_bytes()));
        format!("{name}/{}/{n}", cause.id)
    } else {
        format!("{name}/{}/{n}", cause.position)
    };
    Event {
        id,
        event_type: out.event_type,
        key: out.key,
        payload: out.payload,
        content_type: out.content_type,
        time_us: cause.time_us,
        headers,
        correlation_id: Some(cause.correlation_id.clone().unwrap_or_else(|| cause.id.clone())),
        causation_id: Some(cause.id.clone()),
        position: Position { topic: out.topic, partition: 0, offset: 0 },
    }
}

/// The dead letter of `event`, which plugin `name` failed on: the event as it was (id, type,
/// key, payload, headers, time, correlation) with headers saying why and where it came from;
/// `position.topic` is the dead-letter topic.
pub fn dead_letter(name: &str, event: &Event, error: &EventError) -> Event {
    let mut dead = event.clone();
    // The host's own headers on the event (from another weir, or forged upstream) would be read
    // before the ones below.
    dead.headers.retain(|(n, _)| n != EMITTER && !n.starts_with("weir-dlq-"));
    dead.id = format!("{name}/{}/dead", event.position);
    let text = |s: &str| s.as_bytes().to_vec();
    dead.headers.extend([
        (EMITTER.to_string(), text(name)),
        (DLQ_ERROR.to_string(), text(&error.failure.to_string())),
        (DLQ_KIND.to_string(), text(error.failure.kind())),
        (DLQ_PLUGIN.to_string(), text(&error.plugin)),
        (DLQ_TOPIC.to_string(), text(&event.position.topic)),
        (DLQ_PARTITION.to_string(), text(&event.position.partition.to_string())),
        (DLQ_OFFSET.to_string(), text(&event.position.offset.to_string())),
        (DLQ_ATTEMPTS.to_string(), text(&error.attempts.to_string())),
        (DLQ_ID.to_string(), text(&event.id)),
    ]);
    dead.position = Position { topic: dead_letter_topic(name), partition: 0, offset: 0 };
    dead
}

/// Plugin `name`'s open dead letters (not purged or resolved in `book`), oldest first per
/// partition, up to `limit`: (partition, offset, dead letter); with `at`, only the one there.
pub fn open_dead_letters(
    sink: &dyn EventSink,
    name: &str,
    book: &DeadLetterBook,
    limit: usize,
    at: Option<(u32, u64)>,
) -> Result<Vec<(u32, u64, Event)>, SourceError> {
    let topic = dead_letter_topic(name);
    let mut found = Vec::new();
    for (partition, _) in sink.ends(&topic)? {
        if at.is_some_and(|(p, _)| p != partition) {
            continue;
        }
        let mut offset = book.purged.get(&partition).copied().unwrap_or(0).max(at.map_or(0, |(_, o)| o));
        while found.len() < limit {
            let events = sink.read(&topic, partition, offset, READ_BYTES)?;
            let Some(last) = events.last() else { break };
            offset = last.position.offset + 1;
            for event in events {
                let o = event.position.offset;
                if found.len() < limit && book.open(partition, o) && at.is_none_or(|at| at == (partition, o)) {
                    found.push((partition, o, event));
                }
            }
            if at.is_some() {
                break;
            }
        }
    }
    Ok(found)
}

/// A header's value as text.
pub fn header<'a>(event: &'a Event, name: &str) -> Option<&'a str> {
    event.headers.iter().find(|(n, _)| n == name).and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// The event a dead letter holds, as it was read at its origin (position included), or `None`
/// when `dead` is not a dead letter the host wrote.
pub fn original_of(dead: &Event) -> Option<Event> {
    let topic = header(dead, DLQ_TOPIC)?.to_string();
    let partition = header(dead, DLQ_PARTITION)?.parse().ok()?;
    let offset = header(dead, DLQ_OFFSET)?.parse().ok()?;
    let mut event = dead.clone();
    event.id = header(dead, DLQ_ID)?.to_string();
    event.headers.retain(|(n, _)| n != EMITTER && !n.starts_with("weir-dlq-"));
    event.position = Position { topic, partition, offset };
    Some(event)
}

/// What people see of the dead letter at `partition`/`offset`; `full` adds payload and headers.
pub fn describe_dead_letter(partition: u32, offset: u64, dead: &Event, full: bool) -> crate::status::DeadLetter {
    let text = |name: &str| header(dead, name).unwrap_or_default().to_string();
    crate::status::DeadLetter {
        partition,
        offset,
        id: text(DLQ_ID),
        event_type: dead.event_type.clone(),
        key: dead.key.clone(),
        origin: format!("{}/{}@{}", text(DLQ_TOPIC), text(DLQ_PARTITION), text(DLQ_OFFSET)),
        plugin: text(DLQ_PLUGIN),
        error: text(DLQ_ERROR),
        kind: text(DLQ_KIND),
        attempts: text(DLQ_ATTEMPTS).parse().unwrap_or(1),
        time_us: dead.time_us,
        correlation_id: dead.correlation_id.clone(),
        payload: full.then(|| String::from_utf8_lossy(&dead.payload).into_owned()),
        headers: full.then(|| {
            dead.headers
                .iter()
                .filter(|(n, _)| n != EMITTER && !n.starts_with("weir-dlq-"))
                .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect()
        }),
    }
}

/// The position of the event that caused `event`, if the host wrote it: from its [`CAUSE`]
/// header, else from its id (`plugin/topic/partition@offset/...`).
fn cause_of(event: &Event) -> Option<(String, u32, u64)> {
    let position = match header(event, CAUSE) {
        Some(position) => position,
        None => {
            let (_, rest) = event.id.split_once('/')?;
            let (topic, rest) = rest.split_once('/')?;
            let (partition, rest) = rest.split_once('@')?;
            let offset = rest.split('/').next()?;
            return Some((topic.to_string(), partition.parse().ok()?, offset.parse().ok()?));
        }
    };
    let (topic_partition, offset) = position.rsplit_once('@')?;
    let (topic, partition) = topic_partition.rsplit_once('/')?;
    Some((topic.to_string(), partition.parse().ok()?, offset.parse().ok()?))
}

/// What happens when a plugin fails on an event (after host-side failures were tried again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// The event goes to the plugin's dead-letter topic and the plugin goes on.
    #[default]
    DeadLetter,
    /// The plugin stops at the event (state `failed`, its position on it) until it is resumed,
    /// typically after a fixed version is deployed.
    Stop,
}

impl std::fmt::Display for OnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OnError::DeadLetter => "dead-letter",
            OnError::Stop => "stop",
        })
    }
}

impl std::str::FromStr for OnError {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dead-letter" => Ok(OnError::DeadLetter),
            "stop" => Ok(OnError::Stop),
            other => Err(format!("on_error is \"dead-letter\" or \"stop\", not {other:?}")),
        }
    }
}

/// Which of a plugin's dead letters are settled: those below `purged` (per partition of its
/// dead-letter topic) and those `resolved` by a replay. Checkpointed with the plugin, so a
/// replay's effects and its record of what it resolved are restored together.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterBook {
    /// Per partition of the dead-letter topic, the offset below which everything was purged.
    pub purged: BTreeMap<u32, u64>,
    /// (partition, offset) of dead letters a replay resolved.
    pub resolved: BTreeSet<(u32, u64)>,
}

impl DeadLetterBook {
    /// Whether the dead letter at `partition`/`offset` still waits.
    pub fn open(&self, partition: u32, offset: u64) -> bool {
        offset >= self.purged.get(&partition).copied().unwrap_or(0) && !self.resolved.contains(&(partition, offset))
    }

    /// Dead letters still waiting, given the topic's partition ends.
    pub fn count(&self, ends: &[(u32, u64)]) -> u64 {
        let total: u64 = ends.iter().map(|(p, end)| end.saturating_sub(self.purged.get(p).copied().unwrap_or(0))).sum();
        let resolved = self.resolved.iter().filter(|(p, o)| self.purged.get(p).is_none_or(|floor| o >= floor)).count();
        total.saturating_sub(resolved as u64)
    }

    /// Everything up to `ends` is purged.
    pub fn purge(&mut self, ends: &[(u32, u64)]) {
        for (partition, end) in ends {
            let floor = self.purged.entry(*partition).or_insert(0);
            *floor = (*floor).max(*end);
        }
        let purged = self.purged.clone();
        self.resolved.retain(|(p, o)| purged.get(p).is_none_or(|floor| o >= floor));
    }
}

/// Where each topic the host writes to ended when a checkpoint was taken.
pub type Marks = PositionMap;

/// The ends of `topics` now.
pub fn marks_now(sink: &dyn EventSink, topics: &BTreeSet<String>) -> Result<Marks, SourceError> {
    let mut marks = Marks::new();
    for topic in topics {
        for (partition, end) in sink.ends(topic)? {
            marks.insert((topic.clone(), partition), end);
        }
    }
    Ok(marks)
}

/// Events the previous process wrote after the checkpoint it left, by id, until the plugins that
/// wrote them have re-processed their causes.
#[derive(Debug, Default)]
pub struct AlreadyWritten {
    /// Ids found and not yet emitted again.
    ids: HashSet<String>,
    /// Per plugin, per partition of its input: the offset after the last cause found.
    frontier: BTreeMap<String, PositionMap>,
    /// The marks the scan started from (kept as the marks of checkpoints while this is active).
    marks: Marks,
    /// Events dropped as already written.
    pub dropped: u64,
}

impl AlreadyWritten {
    /// Read `topics` from `marks` (a partition without a mark from its start) to their ends and
    /// collect what the host wrote there.
    pub fn scan(sink: &dyn EventSink, topics: &BTreeSet<String>, marks: &Marks) -> Result<Self, SourceError> {
        let mut found = AlreadyWritten::default();
        for topic in topics {
            for (partition, _) in sink.ends(topic)? {
                let key = (topic.clone(), partition);
                let from = marks.get(&key).copied().unwrap_or(0);
                found.marks.insert(key, from);
                let mut offset = from;
                loop {
                    let events = sink.read(topic, partition, offset, READ_BYTES)?;
                    let Some(last) = events.last() else { break };
                    offset = last.position.offset + 1;
                    for event in events {
                        let Some(emitter) = header(&event, EMITTER) else { continue };
                        if let Some((topic, partition, offset)) = cause_of(&event) {
                            let next = found
                                .frontier
                                .entry(emitter.to_string())
                                .or_default()
                                .entry((topic, partition))
                                .or_insert(0);
                            *next = (*next).max(offset + 1);
                        }
                        found.ids.insert(event.id);
                    }
                }
            }
        }
        if !found.ids.is_empty() {
            tracing::info!(
                events = found.ids.len(),
                plugins = ?found.frontier.keys().collect::<Vec<_>>(),
                "found events written after the last checkpoint; they are not written again when re-processing emits them"
            );
        }
        Ok(found)
    }

    /// Whether anything is left to drop.
    pub fn active(&self) -> bool {
        !self.ids.is_empty()
    }

    /// The marks the next checkpoint records: while events found are still expected again, the
    /// marks this scan started from for the partitions it read (a crash now must find them
    /// again), `now` for the rest.
    pub fn marks_for_checkpoint(&self, mut now: Marks) -> Marks {
        if self.active() {
            for (key, from) in &self.marks {
                now.insert(key.clone(), *from);
            }
        }
        now
    }

    /// Remove from `records` those written already (journal records and ticks are never found:
    /// they carry no [`EMITTER`]).
    pub fn drop_written(&mut self, records: &mut Vec<Outgoing>) {
        if self.ids.is_empty() {
            return;
        }
        let before = records.len();
        records.retain(|r| !self.ids.remove(&r.event().id));
        self.dropped += (before - records.len()) as u64;
    }

    /// Forget what plugins past their last cause can no longer emit again; `positions` gives a
    /// plugin's positions (`None`: it is gone).
    pub fn settle(&mut self, positions: impl Fn(&str) -> Option<PositionMap>) {
        if self.ids.is_empty() {
            return;
        }
        self.frontier.retain(|name, frontier| {
            let Some(now) = positions(name) else { return false };
            frontier.iter().any(|(key, next)| now.get(key).copied().unwrap_or(0) < *next)
        });
        if self.frontier.is_empty() {
            if !self.ids.is_empty() {
                tracing::warn!(
                    left = self.ids.len(),
                    "events written before the restart were not emitted again (a plugin's output changed)"
                );
            }
            self.ids.clear();
            tracing::info!(
                dropped = self.dropped,
                "re-processing after the restart is past everything written before it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_of_an_event_the_host_wrote() {
        let with_id = |id: &str| Event { id: id.into(), ..Event::default() };
        assert_eq!(cause_of(&with_id("saga/orders/3@41/0")), Some(("orders".into(), 3, 41)));
        assert_eq!(cause_of(&with_id("saga/orders/3@41/dead")), Some(("orders".into(), 3, 41)));
        assert_eq!(cause_of(&with_id("order-1")), None);
        let mut fired = with_id("saga/timer:o/1@99/0");
        fired.headers.push((CAUSE.into(), b"weir.ticks/2@7".to_vec()));
        assert_eq!(cause_of(&fired), Some(("weir.ticks".into(), 2, 7)));
    }

    #[test]
    fn a_dead_letter_gives_back_the_original() {
        let event = Event {
            id: "e1".into(),
            event_type: "OrderPlaced".into(),
            key: Some("c1".into()),
            payload: b"{}".to_vec(),
            headers: vec![("h".into(), b"v".to_vec())],
            position: Position { topic: "orders".into(), partition: 2, offset: 7 },
            ..Event::default()
        };
        let error = EventError {
            plugin: "p@1".into(),
            position: event.position.clone(),
            event_type: event.event_type.as_str().into(),
            failure: weir_runtime::Failure::Refused("no".into()),
            attempts: 1,
        };
        let dead = dead_letter("p", &event, &error);
        assert_eq!(dead.position.topic, "weir.dlq.p");
        assert_eq!(header(&dead, DLQ_ERROR), Some("refused it: no"));
        assert_eq!(original_of(&dead), Some(event));
    }
}
