//! Events as the host carries them, from source to plugin to sink. Plain data: no library types.

use std::collections::BTreeMap;
use std::fmt;

/// Per (topic, partition), the next offset to process: every event before it is done.
pub type PositionMap = BTreeMap<(String, u32), u64>;

/// Where a plugin starts reading a topic when it has no checkpoint of its own (first start, or
/// its component or parameters changed): `"earliest"`, `"latest"`, or an RFC 3339 time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// The oldest event still held.
    #[default]
    Earliest,
    /// Only events written after the plugin first started.
    Latest,
    /// The first event of each partition whose time is at or after this instant (microseconds
    /// since the Unix epoch): the record timestamp on Kafka, the event time in the embedded log.
    Time(i64),
}

impl std::str::FromStr for StartAt {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "earliest" => Ok(StartAt::Earliest),
            "latest" => Ok(StartAt::Latest),
            other => chrono::DateTime::parse_from_rfc3339(other).map(|t| StartAt::Time(t.timestamp_micros())).map_err(|e| {
                format!("start {other:?} is not \"earliest\", \"latest\" or an RFC 3339 time like 2026-11-01T00:00:00Z ({e})")
            }),
        }
    }
}

impl fmt::Display for StartAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartAt::Earliest => f.write_str("earliest"),
            StartAt::Latest => f.write_str("latest"),
            StartAt::Time(us) => match chrono::DateTime::from_timestamp_micros(*us) {
                Some(t) => write!(f, "{}", t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
                None => write!(f, "{us} us"),
            },
        }
    }
}

impl serde::Serialize for StartAt {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for StartAt {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where an event sits in its stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Topic name.
    pub topic: String,
    /// Partition within the topic.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
}

impl fmt::Display for Position {
    /// `topic/partition@offset`, the form every error message uses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// One event read from a source.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Event {
    /// Unique id (CloudEvents `id`).
    pub id: String,
    /// Event type, e.g. `OrderPlaced`.
    pub event_type: String,
    /// Aggregate id (message key).
    pub key: Option<String>,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Media type of the payload.
    pub content_type: String,
    /// Event time, microseconds since the Unix epoch.
    pub time_us: i64,
    /// Headers not mapped to a field.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Id shared by one business transaction.
    pub correlation_id: Option<String>,
    /// Id of the event that caused this one.
    pub causation_id: Option<String>,
    /// Where it was read from.
    pub position: Position,
}

/// Topics whose name starts with this are the host's own (`weir.ticks`, `weir.journal.<handler>`,
/// `weir.dlq.<plugin>`): nothing else writes to them.
pub const HOST_TOPIC_PREFIX: &str = "weir.";

/// Headers whose name starts with this are the host's own (`weir-emitter`, `weir-timer`,
/// `weir-dlq-*`...): producers may not set them.
pub const HOST_HEADER_PREFIX: &str = "weir-";

/// The longest plugin name, in bytes: its host topics (`weir.journal.<name>`) and checkpoint
/// files (`<name>.state.bin`, `<name>.<table>.arrow`) stay well within the limits of topic and
/// file names (249 and 255 bytes).
pub const MAX_PLUGIN_NAME: usize = 64;

/// Whether `name` can be a topic: 1 to 249 characters of `a-z A-Z 0-9 . _ -`, not `.` or `..`
/// (Kafka's rule, and a directory name in the embedded log).
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// An event a handler emitted, before the host gives it an id and a position.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingEvent {
    /// Destination topic.
    pub topic: String,
    /// Aggregate id.
    pub key: Option<String>,
    /// Event type.
    pub event_type: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Media type of the payload.
    pub content_type: String,
    /// Extra headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl OutgoingEvent {
    /// Bytes this event occupies, for the output cap.
    pub fn size(&self) -> usize {
        self.topic.len()
            + self.key.as_ref().map_or(0, String::len)
            + self.event_type.len()
            + self.payload.len()
            + self.content_type.len()
            + self.headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>()
    }
}

/// How `weir produce` and `POST /v1/topics/{topic}/events` read their input.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProduceOptions {
    /// When set, every line is a bare payload of this event type (else each line is an envelope
    /// `{"type", "data", "key"?, "id"?, "time"?, "correlation_id"?, "causation_id"?, "headers"?}`).
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// With `type`: the top-level payload field whose value is the event's key.
    pub key: Option<String>,
}

/// An input line that is not an event; nothing of its batch is written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ProduceError {
    /// 1-based line (or element, for a JSON array).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    #[serde(rename = "type")]
    event_type: String,
    data: serde_json::Value,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    key: Option<serde_json::Value>,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    causation_id: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// Read events from `body`: one JSON object, a JSON array of them, or JSON lines (blank lines
/// skipped). The whole input is checked before anything is returned.
pub fn parse_events(topic: &str, body: &[u8], options: &ProduceOptions) -> Result<Vec<Event>, ProduceError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        let line = body[..e.valid_up_to()].iter().filter(|b| **b == b'\n').count() + 1;
        ProduceError { line, reason: "not UTF-8".into() }
    })?;
    let values: Vec<(usize, serde_json::Value)> = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Array(items)) if options.event_type.is_none() => {
            items.into_iter().enumerate().map(|(i, v)| (i + 1, v)).collect()
        }
        Ok(value) => vec![(1, value)],
        _ => {
            let mut values = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let value = serde_json::from_str(line)
                    .map_err(|e| ProduceError { line: i + 1, reason: format!("not JSON: {e}") })?;
                values.push((i + 1, value));
            }
            values
        }
    };
    values
        .into_iter()
        .map(|(line, value)| to_event(topic, value, options).map_err(|reason| ProduceError { line, reason }))
        .collect()
}

fn key_text(value: &serde_json::Value) -> Result<String, String> {
    match value {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(format!("a key must be a string or a number, not {other}")),
    }
}

fn to_event(topic: &str, value: serde_json::Value, options: &ProduceOptions) -> Result<Event, String> {
    let position = Position { topic: topic.to_string(), partition: 0, offset: 0 };
    if let Some(event_type) = &options.event_type {
        let key = match &options.key {
            Some(field) => Some(key_text(
                value.get(field).ok_or_else(|| format!("the payload has no field {field:?} to take the key from"))?,
            )?),
            None => None,
        };
        return Ok(Event {
            event_type: event_type.clone(),
            key,
            payload: value.to_string().into_bytes(),
            content_type: "application/json".into(),
            position,
            ..Event::default()
        });
    }
    let envelope: Envelope = serde_json::from_value(value).map_err(|e| {
        format!(
            "{e} (an event is {{\"type\": \"...\", \"data\": {{...}}, \"key\": \"...\"}}; or pass a type to send bare payloads)"
        )
    })?;
    if envelope.event_type.is_empty() {
        return Err("\"type\" is empty".into());
    }
    let time_us = match &envelope.time {
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map_err(|e| format!("\"time\" {text:?} is not RFC 3339: {e}"))?
            .timestamp_micros(),
        None => 0,
    };
    Ok(Event {
        id: envelope.id.unwrap_or_default(),
        event_type: envelope.event_type,
        key: envelope.key.as_ref().map(key_text).transpose()?,
        payload: envelope.data.to_string().into_bytes(),
        content_type: "application/json".into(),
        time_us,
        headers: envelope.headers.into_iter().map(|(k, v)| (k, v.into_bytes())).collect(),
        correlation_id: envelope.correlation_id,
        causation_id: envelope.causation_id,
        position,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_lines_arrays_and_bare_payloads_are_read() {
        let lines = b"{\"type\":\"A\",\"data\":{\"x\":1},\"key\":\"k1\",\"time\":\"2026-01-02T03:04:05Z\"}\n\n{\"type\":\"B\",\"data\":2,\"key\":7}\n";
        let events = parse_events("t", lines, &ProduceOptions::default()).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            (events[0].event_type.as_str(), events[0].key.as_deref(), &events[0].payload[..]),
            ("A", Some("k1"), &b"{\"x\":1}"[..])
        );
        assert_eq!(events[0].time_us, 1_767_323_045_000_000);
        assert_eq!(events[1].key.as_deref(), Some("7"));
        let array = br#"[{"type":"A","data":null},{"type":"B","data":[]}]"#;
        assert_eq!(parse_events("t", array, &ProduceOptions::default()).unwrap().len(), 2);
        let pretty = b"{\n  \"type\": \"A\",\n  \"data\": {}\n}\n";
        assert_eq!(parse_events("t", pretty, &ProduceOptions::default()).unwrap().len(), 1);
        let bare = ProduceOptions { event_type: Some("OrderPlaced".into()), key: Some("order_id".into()) };
        let events = parse_events("t", b"{\"order_id\":\"o-1\",\"n\":1}\n{\"order_id\":\"o-2\"}", &bare).unwrap();
        assert_eq!(events[1].key.as_deref(), Some("o-2"));
        assert_eq!(events[1].event_type, "OrderPlaced");
    }

    #[test]
    fn start_positions_parse_and_print() {
        assert_eq!("earliest".parse::<StartAt>(), Ok(StartAt::Earliest));
        assert_eq!("latest".parse::<StartAt>(), Ok(StartAt::Latest));
        let at: StartAt = "2026-01-02T03:04:05Z".parse().unwrap();
        assert_eq!(at, StartAt::Time(1_767_323_045_000_000));
        assert_eq!(at.to_string(), "2026-01-02T03:04:05Z");
        let err = "yesterday".parse::<StartAt>().unwrap_err();
        assert!(err.starts_with("start \"yesterday\" is not \"earliest\", \"latest\" or an RFC 3339 time"), "{err}");
    }

    #[test]
    fn a_bad_line_is_named_and_refuses_the_batch() {
        let input = b"{\"type\":\"A\",\"data\":1}\n{\"type\":\"A\",\"data\":1\n";
        let err = parse_events("t", input, &ProduceOptions::default()).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.reason.starts_with("not JSON"), "{err}");
        let err =
            parse_events("t", b"{\"data\":1}\n{\"type\":\"A\",\"data\":1}", &ProduceOptions::default()).unwrap_err();
        assert!(err.to_string().starts_with("line 1: missing field `type`"), "{err}");
        let bare = ProduceOptions { event_type: Some("T".into()), key: Some("id".into()) };
        let err = parse_events("t", b"{\"id\":1}\n{\"other\":2}", &bare).unwrap_err();
        assert_eq!(err.to_string(), "line 2: the payload has no field \"id\" to take the key from");
    }
}
