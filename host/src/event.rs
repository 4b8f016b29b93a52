//! Events as the host carries them, from source to plugin to sink. Plain data: no library types.

use std::fmt;

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
