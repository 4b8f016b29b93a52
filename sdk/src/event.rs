//! The event a plugin receives.

use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Microseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Microseconds since the Unix epoch.
    pub fn micros(self) -> i64 {
        self.0
    }
}

/// Where an event sits in the stream it was read from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Position {
    /// Topic name.
    pub topic: String,
    /// Partition within the topic.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
}

/// One event, as the host delivers it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Event {
    /// Unique id (CloudEvents `id`).
    pub id: String,
    /// Event type, e.g. `OrderPlaced`.
    pub event_type: String,
    /// Aggregate id (the message key), if any.
    pub key: Option<String>,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Media type of the payload.
    pub content_type: String,
    /// When the event happened.
    pub time: Timestamp,
    /// Headers not mapped to another field.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Id shared by every event of one business transaction.
    pub correlation_id: Option<String>,
    /// Id of the event that caused this one.
    pub causation_id: Option<String>,
    /// Source position.
    pub position: Position,
}

impl Event {
    /// Decode the payload as JSON into `T`. The error names the event type and says what did not fit.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| Error::msg(format!("{} payload does not decode: {e}", self.event_type)))
    }

    /// The value of a header, if present.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// An event with a JSON payload, for tests: id and position are left empty.
    pub fn json_event(event_type: &str, key: &str, payload: &impl serde::Serialize) -> Event {
        Event {
            event_type: event_type.to_string(),
            key: Some(key.to_string()),
            payload: serde_json::to_vec(payload).unwrap_or_default(),
            content_type: "application/json".to_string(),
            ..Event::default()
        }
    }
}
