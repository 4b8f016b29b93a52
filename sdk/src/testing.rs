//! Run a plugin's logic natively, in a plain `cargo test`, with no wasm involved.
//!
//! The harness stands in for the host: it keeps the plugin's state and parameters in memory for
//! the current thread and drives events through exactly the code path the wasm export uses, so a
//! plugin that passes here behaves the same inside the host. Use one harness per test (per thread).
#![cfg(not(target_arch = "wasm32"))]

use std::marker::PhantomData;

use crate::state::sys::{HOST, NativeHost};
use crate::{Event, Handler, Level, OutgoingEvent, Projection, Result, RowChange};

/// Drives a [`Projection`] natively.
pub struct ProjectionHarness<P> {
    plugin: PhantomData<P>,
}

/// Drives a [`Handler`] natively.
pub struct HandlerHarness<H> {
    plugin: PhantomData<H>,
}

fn reset_host() {
    HOST.with_borrow_mut(|h| *h = NativeHost::default());
}

macro_rules! common_harness_methods {
    () => {
        /// Set a deploy-time parameter.
        pub fn with_param(self, name: &str, value: &str) -> Self {
            HOST.with_borrow_mut(|h| h.params.insert(name.to_string(), value.to_string()));
            self
        }

        /// A raw state entry, as the plugin left it.
        pub fn state(&self, key: &[u8]) -> Option<Vec<u8>> {
            HOST.with_borrow(|h| h.state.get(key).cloned())
        }

        /// Number of state entries.
        pub fn state_len(&self) -> usize {
            HOST.with_borrow(|h| h.state.len())
        }

        /// Log lines written so far.
        pub fn logs(&self) -> Vec<(Level, String)> {
            HOST.with_borrow(|h| h.logs.clone())
        }
    };
}

impl<P: Projection> ProjectionHarness<P> {
    /// A harness with empty state and no parameters.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        reset_host();
        ProjectionHarness { plugin: PhantomData }
    }

    /// Apply events as one batch; one outcome per event.
    pub fn apply(&mut self, events: impl IntoIterator<Item = Event>) -> Vec<Result<Vec<RowChange>>> {
        crate::projection::apply_batch::<P>(events)
    }

    common_harness_methods!();
}

impl<H: Handler> HandlerHarness<H> {
    /// A harness with empty state and no parameters.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        reset_host();
        HandlerHarness { plugin: PhantomData }
    }

    /// Handle events as one batch; one outcome per event.
    pub fn handle(&mut self, events: impl IntoIterator<Item = Event>) -> Vec<Result<Vec<OutgoingEvent>>> {
        crate::handler::handle_batch::<H>(events)
    }

    /// The timers set: (key, instant in microseconds, event type), earliest first.
    pub fn timers(&self) -> Vec<(String, i64, String)> {
        let mut timers: Vec<(String, i64, String)> =
            HOST.with_borrow(|h| h.timers.iter().map(|(k, t)| (k.clone(), t.at, t.event_type.clone())).collect());
        timers.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        timers
    }

    /// What a tick at `now` (microseconds) does in the host: every timer due fires, earliest
    /// first, each as an event of its own; one outcome per timer fired.
    pub fn tick(&mut self, now: i64) -> Vec<Result<Vec<OutgoingEvent>>> {
        HOST.with_borrow_mut(|h| h.clock = h.clock.max(now));
        let mut outcomes = Vec::new();
        for (key, _, _) in self.timers().into_iter().filter(|(_, at, _)| *at <= now) {
            let Some(timer) = HOST.with_borrow_mut(|h| h.timers.remove(&key)) else { continue };
            let event = Event {
                id: format!("timer:{key}/{}", timer.set_by),
                event_type: timer.event_type,
                key: Some(key.clone()),
                payload: timer.payload,
                content_type: "application/json".into(),
                time: crate::Timestamp(timer.at),
                headers: vec![(crate::TIMER_HEADER.to_string(), key.into_bytes())],
                correlation_id: timer.correlation_id,
                causation_id: Some(timer.set_by),
                ..Event::default()
            };
            outcomes.extend(crate::handler::handle_batch::<H>([event]));
        }
        outcomes
    }

    common_harness_methods!();
}
