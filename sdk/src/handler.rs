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

    /// Use timers ([`HandlerCtx::set_timer`]): subscribes to the host's ticks (topic
    /// `weir.ticks`), on which due timers fire.
    pub fn timers(self) -> Self {
        self.topic(TICKS_TOPIC)
    }
}

/// The topic of the host's ticks.
pub const TICKS_TOPIC: &str = "weir.ticks";

/// The header on a timer's event naming the timer.
pub const TIMER_HEADER: &str = "weir-timer";

/// A timer to set: what its event will be.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TimerSpec {
    pub(crate) at: i64,
    pub(crate) event_type: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) correlation_id: Option<String>,
    pub(crate) set_by: String,
}

/// Timer changes of the events that succeeded in the running batch, in order: sent to the host
/// when the batch ends (as state writes are), so a failed event's changes never reach it.
type TimerOps = Vec<(String, Option<TimerSpec>)>;

std::thread_local! {
    static BATCH_TIMERS: std::cell::RefCell<TimerOps> = const { std::cell::RefCell::new(Vec::new()) };
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
    pub(crate) timers: TimerOps,
    /// The event being handled: its id, its time and the flow it belongs to.
    pub(crate) event_id: String,
    pub(crate) time: i64,
    pub(crate) correlation_id: String,
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

    /// Set timer `key` (replacing one with the same key): at event time `at`, the host delivers
    /// an event of type `event_type` with key `key`, this JSON payload and the correlation id of
    /// the event being handled back to this handler. Kept only if this event succeeds. Needs
    /// [`HandlerInfo::timers`]; timers fire on the host's ticks, at the first at or after `at`.
    pub fn set_timer(
        &mut self,
        key: &str,
        at: crate::Timestamp,
        event_type: &str,
        payload: &impl Serialize,
    ) -> Result<()> {
        let payload = serde_json::to_vec(payload)
            .map_err(|e| Error::msg(format!("timer {key}: {event_type} payload does not encode: {e}")))?;
        let spec = TimerSpec {
            at: at.micros(),
            event_type: event_type.to_string(),
            payload,
            correlation_id: Some(self.correlation_id.clone()),
            set_by: self.event_id.clone(),
        };
        self.timers.push((key.to_string(), Some(spec)));
        Ok(())
    }

    /// [`set_timer`](Self::set_timer) `delay` after the event being handled, or after the
    /// handler's clock (the time of the latest tick it saw) when that is later: an event from
    /// the past (a backfill, a replay) gets the full delay from now.
    pub fn set_timer_after(
        &mut self,
        key: &str,
        delay: std::time::Duration,
        event_type: &str,
        payload: &impl Serialize,
    ) -> Result<()> {
        let from = self.time.max(timer_sys::now());
        let at = from.saturating_add(i64::try_from(delay.as_micros()).unwrap_or(i64::MAX));
        self.set_timer(key, crate::Timestamp(at), event_type, payload)
    }

    /// Cancel timer `key`, if it is set. Kept only if this event succeeds.
    pub fn cancel_timer(&mut self, key: &str) {
        self.timers.push((key.to_string(), None));
    }
}

state_accessors!(HandlerCtx);

/// Handle a batch, one event at a time; the timer changes of the events that succeeded go to the
/// host at the end.
pub(crate) fn handle_batch<H: Handler>(events: impl IntoIterator<Item = Event>) -> Vec<Result<Vec<OutgoingEvent>>> {
    BATCH_TIMERS.with_borrow_mut(Vec::clear);
    let outcomes = run_batch(events, |state, event| {
        let correlation_id = event.correlation_id.clone().unwrap_or_else(|| event.id.clone());
        let mut ctx = HandlerCtx {
            emitted: Vec::new(),
            state,
            timers: Vec::new(),
            event_id: event.id.clone(),
            time: event.time.micros(),
            correlation_id,
        };
        let outcome = H::handle(&mut ctx, event);
        if outcome.is_ok() && !ctx.timers.is_empty() {
            BATCH_TIMERS.with_borrow_mut(|ops| ops.append(&mut ctx.timers));
        }
        outcome.map(|()| ctx.emitted)
    });
    for (key, op) in BATCH_TIMERS.with_borrow_mut(std::mem::take) {
        match op {
            Some(spec) => timer_sys::set(&key, spec),
            None => timer_sys::cancel(&key),
        }
    }
    outcomes
}

/// The host's timers: the WIT import on wasm, the native stand-in's otherwise.
#[cfg(target_arch = "wasm32")]
mod timer_sys {
    use super::TimerSpec;
    use crate::bindings::timers;

    pub(super) fn set(key: &str, spec: TimerSpec) {
        timers::set(key, spec.at, &spec.event_type, &spec.payload, spec.correlation_id.as_deref(), &spec.set_by)
    }
    pub(super) fn cancel(key: &str) {
        timers::cancel(key)
    }
    pub(super) fn now() -> i64 {
        timers::now()
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod timer_sys {
    use super::TimerSpec;
    use crate::state::sys::HOST;

    pub(super) fn set(key: &str, spec: TimerSpec) {
        HOST.with_borrow_mut(|h| h.timers.insert(key.to_string(), spec));
    }
    pub(super) fn cancel(key: &str) {
        HOST.with_borrow_mut(|h| h.timers.remove(key));
    }
    pub(super) fn now() -> i64 {
        HOST.with_borrow(|h| h.clock)
    }
}
