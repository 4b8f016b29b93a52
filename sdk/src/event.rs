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
        // Checked as UTF-8 once, whole, rather than string by string as the JSON is read:
        // fewer instructions per event in wasm, where the check runs 4 bytes at a time.
        let text = std::str::from_utf8(&self.payload)
            .map_err(|e| Error::msg(format!("{} payload is not UTF-8 JSON: {e}", self.event_type)))?;
        serde_json::from_str(text).map_err(|e| Error::msg(format!("{} payload does not decode: {e}", self.event_type)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Paid {
        amount: f64,
    }

    fn event(payload: &[u8]) -> Event {
        Event { event_type: "Paid".into(), payload: payload.to_vec(), ..Event::default() }
    }

    #[test]
    fn json_payloads_decode_and_bad_ones_say_what_is_wrong() {
        assert_eq!(event(br#"{"note":"caf\u00e9 \u00e9","amount":2.5}"#).json::<Paid>(), Ok(Paid { amount: 2.5 }));
        assert_eq!(event("{\"note\":\"café\",\"amount\":1}".as_bytes()).json::<Paid>(), Ok(Paid { amount: 1.0 }));
        let not_utf8 = event(b"{\"note\":\"caf\xe9\",\"amount\":1}").json::<Paid>().unwrap_err().to_string();
        assert!(not_utf8.starts_with("Paid payload is not UTF-8 JSON: invalid utf-8"), "{not_utf8}");
        let missing = event(br#"{"note":"x"}"#).json::<Paid>().unwrap_err().to_string();
        assert!(missing.starts_with("Paid payload does not decode: missing field `amount`"), "{missing}");
    }
}
