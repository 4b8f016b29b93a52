//! Handlers: events in, new events out.

use serde::Serialize;

use crate::state::{StateTxn, run_batch, state_accessors};
use crate::{Error, Event, Result};

/// A plugin that reacts to events by emitting new events (enrichment, sagas, process managers).
///
/// The host calls [`handle`](Handler::handle) once per event. If it returns an error, none of
/// the events it emitted or the state it wrote are kept.
pub trait Handler {
    /// Name, version, subscription and the topics it emits to.
    fn describe() -> HandlerInfo;

    /// React to one event, emitting on `ctx`.
    fn handle(ctx: &mut HandlerCtx<'_>, event: &Event) -> Result<()>;
}

/// What a handler is, as the host sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct HandlerInfo {
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// One line for humans.
    pub description: String,
    /// Topics to read.
    pub topics: Vec<String>,
    /// Event types to receive; empty means all.
    pub event_types: Vec<String>,
    /// Topics this handler may emit to.
    pub emits_to: Vec<String>,
}

impl HandlerInfo {
    /// A handler with this name and version.
    pub fn new(name: &str, version: &str) -> Self {
        HandlerInfo {
            name: name.to_string(),
            version: version.to_string(),
            description: String::new(),
            topics: Vec::new(),
            event_types: Vec::new(),
            emits_to: Vec::new(),
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

    /// Declare a topic this handler emits to.
    pub fn emits_to(mut self, topic: &str) -> Self {
        self.emits_to.push(topic.to_string());
        self
    }
}

/// An event a handler emits. The host assigns its id and links it to the event that caused it.
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

/// What a handler can do while handling one event.
pub struct HandlerCtx<'a> {
    pub(crate) emitted: Vec<OutgoingEvent>,
    pub(crate) state: &'a mut StateTxn,
}

impl HandlerCtx<'_> {
    /// Emit an event with a JSON payload.
    pub fn emit_json(&mut self, topic: &str, key: &str, event_type: &str, payload: &impl Serialize) -> Result<()> {
        let payload = serde_json::to_vec(payload)
            .map_err(|e| Error::msg(format!("{event_type} payload does not encode: {e}")))?;
        self.emit(OutgoingEvent {
            topic: topic.to_string(),
            key: Some(key.to_string()),
            event_type: event_type.to_string(),
            payload,
            content_type: "application/json".to_string(),
            headers: Vec::new(),
        });
        Ok(())
    }

    /// Emit an event.
    pub fn emit(&mut self, event: OutgoingEvent) {
        self.emitted.push(event);
    }
}

state_accessors!(HandlerCtx);

/// Handle a batch, one event at a time.
pub(crate) fn handle_batch<H: Handler>(events: impl IntoIterator<Item = Event>) -> Vec<Result<Vec<OutgoingEvent>>> {
    run_batch(events, |state, event| {
        let mut ctx = HandlerCtx { emitted: Vec::new(), state };
        H::handle(&mut ctx, event).map(|()| ctx.emitted)
    })
}
