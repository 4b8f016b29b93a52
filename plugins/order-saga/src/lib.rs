//! The `order-saga` handler: orchestrates each order placed through its steps, as a process
//! manager with durable state and timers.
//!
//! `OrderPlaced` → `ReserveInventory` (to `inventory-commands`) → on `InventoryReserved`,
//! `ChargePayment` (to `payment-commands`) → on `PaymentCharged`, confirmed. Compensation: an
//! `InventoryRejected` cancels; a `PaymentDeclined` releases the inventory and then cancels; a step
//! that gets no answer within the `timeout_ms` parameter (default 30 s) is compensated: the
//! payment is cancelled (refunded if it was charged after all) and the inventory released. A
//! reply that arrives after its saga moved on is compensated too (a late reservation is released,
//! a late charge refunded), so no saga ends holding stock or money it should not.
//!
//! Every change of a saga is published as `SagaUpdated` on `saga-events` (the `saga-view`
//! projection turns them into the `sagas` table). Parameter `every` (default 1): only orders whose
//! number is a multiple of it start a saga (the demo samples its stream).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_sdk::{Event, Handler, HandlerCtx, HandlerInfo, Result};

/// A step the saga waits in, or where it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Waiting for the inventory to reserve the items.
    Reserving,
    /// Waiting for the payment to be charged.
    Charging,
    /// Undoing what was done (releasing the inventory), before ending cancelled.
    Compensating,
    /// Ended: the order is confirmed.
    Confirmed,
    /// Ended: the order is cancelled and nothing is held.
    Cancelled,
}

impl Step {
    fn ended(self) -> bool {
        matches!(self, Step::Confirmed | Step::Cancelled)
    }
}

/// A saga's state, kept per order.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saga {
    order_id: String,
    customer_id: String,
    amount: f64,
    skus: Vec<String>,
    step: Step,
    reason: String,
    /// Compensation attempts after timeouts.
    retries: u32,
}

#[derive(Debug, Deserialize)]
struct OrderPlaced {
    order_id: String,
    customer_id: String,
    amount: f64,
    #[serde(default)]
    skus: Vec<String>,
}

/// Any reply from a service: which order, and why when it is a refusal.
#[derive(Debug, Deserialize)]
struct Reply {
    order_id: String,
    #[serde(default)]
    reason: String,
}

/// The command to a service.
#[derive(Debug, Serialize)]
struct Command<'a> {
    order_id: &'a str,
    customer_id: &'a str,
    amount: f64,
    skus: &'a [String],
}

/// A timer's payload: the step it guards.
#[derive(Debug, Serialize, Deserialize)]
struct TimedOut {
    order_id: String,
    step: Step,
}

/// What `saga-events` carries.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct SagaUpdated {
    pub order_id: String,
    pub customer_id: String,
    pub amount: f64,
    pub step: Step,
    /// `running`, `confirmed` or `cancelled`.
    pub status: String,
    pub reason: String,
}

/// Retries of a compensation that gets no answer, before the saga is reported stuck.
const MAX_RETRIES: u32 = 3;

pub struct OrderSaga;

impl Handler for OrderSaga {
    fn describe() -> HandlerInfo {
        HandlerInfo::new("order-saga", env!("CARGO_PKG_VERSION"))
            .description("Orchestrates orders: reserve inventory, charge payment, confirm; compensates")
            .topic("orders")
            .topic("inventory-events")
            .topic("payment-events")
            .event_types([
                "OrderPlaced",
                "InventoryReserved",
                "InventoryRejected",
                "InventoryReleased",
                "PaymentCharged",
                "PaymentDeclined",
                "SagaStepTimedOut",
            ])
            .timers()
            .emits_to("inventory-commands")
            .emits_to("payment-commands")
            .emits_to("saga-events")
    }

    fn handle(ctx: &mut HandlerCtx<'_>, event: &Event) -> Result<()> {
        if event.event_type == "OrderPlaced" {
            return start(ctx, event);
        }
        let order_id = match event.event_type.as_str() {
            "SagaStepTimedOut" => event.json::<TimedOut>()?.order_id,
            _ => event.json::<Reply>()?.order_id,
        };
        let Some(mut saga) = ctx.get::<Saga>(&state_key(&order_id))? else {
            // Not one of ours (an order this saga did not sample).
            return Ok(());
        };
        let before = (saga.step, saga.reason.clone(), saga.retries);
        match (event.event_type.as_str(), saga.step) {
            ("InventoryReserved", Step::Reserving) => {
                saga.step = Step::Charging;
                command(ctx, &saga, "payment-commands", "ChargePayment")?;
            }
            // A reservation after the saga gave up on it: release it.
            ("InventoryReserved", Step::Compensating | Step::Cancelled) => {
                command(ctx, &saga, "inventory-commands", "ReleaseInventory")?;
            }
            ("InventoryRejected", Step::Reserving) => {
                saga.step = Step::Cancelled;
                saga.reason = format!("inventory rejected: {}", event.json::<Reply>()?.reason);
            }
            ("PaymentCharged", Step::Charging) => saga.step = Step::Confirmed,
            // A charge after the saga gave up on it: refund it.
            ("PaymentCharged", Step::Compensating | Step::Cancelled) => {
                command(ctx, &saga, "payment-commands", "RefundPayment")?;
            }
            ("PaymentDeclined", Step::Charging) => {
                saga.step = Step::Compensating;
                saga.reason = format!("payment declined: {}", event.json::<Reply>()?.reason);
                command(ctx, &saga, "inventory-commands", "ReleaseInventory")?;
            }
            ("InventoryReleased", Step::Compensating) => saga.step = Step::Cancelled,
            ("SagaStepTimedOut", step) if step == event.json::<TimedOut>()?.step => time_out(ctx, &mut saga)?,
            // Anything else is a repeat or arrives after the saga moved on: nothing to do.
            _ => return Ok(()),
        }
        if (saga.step, &saga.reason, saga.retries) != (before.0, &before.1, before.2) {
            publish(ctx, &saga)?;
        }
        guard(ctx, &saga)?;
        ctx.put(&state_key(&saga.order_id), &saga)
    }
}

fn state_key(order_id: &str) -> String {
    format!("saga/{order_id}")
}

/// `OrderPlaced`: a new saga, reserving.
fn start(ctx: &mut HandlerCtx<'_>, event: &Event) -> Result<()> {
    let placed: OrderPlaced = event.json()?;
    let every: u64 = match ctx.param("every") {
        Some(text) => text.parse().map_err(|e| weir_sdk::Error::msg(format!("parameter every={text:?}: {e}")))?,
        None => 1,
    };
    let number: u64 = placed.order_id.trim_start_matches(|c: char| !c.is_ascii_digit()).parse().unwrap_or(0);
    if every > 1 && number % every != 0 {
        return Ok(());
    }
    if ctx.get::<Saga>(&state_key(&placed.order_id))?.is_some() {
        return Ok(());
    }
    let saga = Saga {
        order_id: placed.order_id,
        customer_id: placed.customer_id,
        amount: placed.amount,
        skus: placed.skus,
        step: Step::Reserving,
        reason: String::new(),
        retries: 0,
    };
    command(ctx, &saga, "inventory-commands", "ReserveInventory")?;
    publish(ctx, &saga)?;
    guard(ctx, &saga)?;
    ctx.put(&state_key(&saga.order_id), &saga)
}

/// The step `saga` waits in got no answer in time: compensate what may have happened.
fn time_out(ctx: &mut HandlerCtx<'_>, saga: &mut Saga) -> Result<()> {
    match saga.step {
        Step::Reserving => {
            saga.reason = "inventory did not answer in time".into();
            command(ctx, saga, "inventory-commands", "ReleaseInventory")?;
        }
        Step::Charging => {
            saga.reason = "payment did not answer in time".into();
            command(ctx, saga, "payment-commands", "CancelPayment")?;
            command(ctx, saga, "inventory-commands", "ReleaseInventory")?;
        }
        Step::Compensating if saga.retries < MAX_RETRIES => {
            saga.retries += 1;
            command(ctx, saga, "inventory-commands", "ReleaseInventory")?;
        }
        Step::Compensating => saga.reason = format!("{}; compensation got no answer {MAX_RETRIES} times", saga.reason),
        Step::Confirmed | Step::Cancelled => {}
    }
    saga.step = Step::Compensating;
    Ok(())
}

/// While a saga waits, a timer guards the step; once it ends, none.
fn guard(ctx: &mut HandlerCtx<'_>, saga: &Saga) -> Result<()> {
    let key = state_key(&saga.order_id);
    if saga.step.ended() || (saga.step == Step::Compensating && saga.retries >= MAX_RETRIES) {
        ctx.cancel_timer(&key);
        return Ok(());
    }
    let timeout = match ctx.param("timeout_ms") {
        Some(text) => {
            text.parse::<u64>().map_err(|e| weir_sdk::Error::msg(format!("parameter timeout_ms={text:?}: {e}")))?
        }
        None => 30_000,
    };
    let payload = TimedOut { order_id: saga.order_id.clone(), step: saga.step };
    ctx.set_timer_after(&key, Duration::from_millis(timeout), "SagaStepTimedOut", &payload)
}

fn command(ctx: &mut HandlerCtx<'_>, saga: &Saga, topic: &str, kind: &str) -> Result<()> {
    let body =
        Command { order_id: &saga.order_id, customer_id: &saga.customer_id, amount: saga.amount, skus: &saga.skus };
    ctx.emit_json(topic, &saga.order_id, kind, &body)
}

fn publish(ctx: &mut HandlerCtx<'_>, saga: &Saga) -> Result<()> {
    let status = match saga.step {
        Step::Confirmed => "confirmed",
        Step::Cancelled => "cancelled",
        _ => "running",
    };
    let update = SagaUpdated {
        order_id: saga.order_id.clone(),
        customer_id: saga.customer_id.clone(),
        amount: saga.amount,
        step: saga.step,
        status: status.into(),
        reason: saga.reason.clone(),
    };
    ctx.emit_json("saga-events", &saga.order_id, "SagaUpdated", &update)
}

weir_sdk::export_handler!(OrderSaga);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::HandlerHarness;

    fn event(kind: &str, payload: serde_json::Value, time: i64) -> Event {
        let mut e = Event::json_event(kind, "o-000000001", &payload);
        e.time = weir_sdk::Timestamp(time);
        e.id = format!("{kind}-{time}");
        e
    }

    fn placed() -> Event {
        event(
            "OrderPlaced",
            serde_json::json!({"order_id": "o-000000001", "customer_id": "c-1", "amount": 12.5, "skus": ["sku-1"]}),
            1_000,
        )
    }

    fn kinds(out: &[weir_sdk::OutgoingEvent]) -> Vec<(&str, &str)> {
        out.iter().map(|e| (e.topic.as_str(), e.event_type.as_str())).collect()
    }

    fn reply(kind: &str) -> Event {
        event(kind, serde_json::json!({"order_id": "o-000000001", "reason": "because"}), 2_000)
    }

    #[test]
    fn a_saga_that_goes_well_is_confirmed_and_its_timer_cancelled() {
        let mut saga = HandlerHarness::<OrderSaga>::new();
        let out = saga.handle([placed()]).remove(0).unwrap();
        assert_eq!(kinds(&out), [("inventory-commands", "ReserveInventory"), ("saga-events", "SagaUpdated")]);
        assert_eq!(saga.timers(), [("saga/o-000000001".to_string(), 1_000 + 30_000_000, "SagaStepTimedOut".into())]);
        let out = saga.handle([reply("InventoryReserved")]).remove(0).unwrap();
        assert_eq!(kinds(&out), [("payment-commands", "ChargePayment"), ("saga-events", "SagaUpdated")]);
        let out = saga.handle([reply("PaymentCharged")]).remove(0).unwrap();
        let update: SagaUpdated = serde_json::from_slice(&out[0].payload).unwrap();
        assert_eq!((update.step, update.status.as_str()), (Step::Confirmed, "confirmed"));
        assert!(saga.timers().is_empty());
        // A repeated reply changes nothing.
        assert!(saga.handle([reply("PaymentCharged")]).remove(0).unwrap().is_empty());
    }

    #[test]
    fn a_declined_payment_releases_the_inventory_then_cancels() {
        let mut saga = HandlerHarness::<OrderSaga>::new();
        saga.handle([placed(), reply("InventoryReserved")]);
        let out = saga.handle([reply("PaymentDeclined")]).remove(0).unwrap();
        assert_eq!(kinds(&out), [("inventory-commands", "ReleaseInventory"), ("saga-events", "SagaUpdated")]);
        let out = saga.handle([reply("InventoryReleased")]).remove(0).unwrap();
        let update: SagaUpdated = serde_json::from_slice(&out[0].payload).unwrap();
        assert_eq!(update.status, "cancelled");
        assert_eq!(update.reason, "payment declined: because");
    }

    #[test]
    fn a_payment_that_never_answers_is_compensated_and_a_late_charge_refunded() {
        let mut saga = HandlerHarness::<OrderSaga>::new().with_param("timeout_ms", "5");
        saga.handle([placed(), reply("InventoryReserved")]);
        assert!(saga.tick(2_000 + 4_999).is_empty(), "not due yet");
        let fired = saga.tick(2_000 + 5_000).remove(0).unwrap();
        assert_eq!(
            kinds(&fired),
            [
                ("payment-commands", "CancelPayment"),
                ("inventory-commands", "ReleaseInventory"),
                ("saga-events", "SagaUpdated")
            ]
        );
        let out = saga.handle([reply("PaymentCharged")]).remove(0).unwrap();
        assert_eq!(kinds(&out), [("payment-commands", "RefundPayment")]);
        let out = saga.handle([reply("InventoryReleased")]).remove(0).unwrap();
        let update: SagaUpdated = serde_json::from_slice(&out[0].payload).unwrap();
        assert_eq!((update.status.as_str(), update.reason.as_str()), ("cancelled", "payment did not answer in time"));
    }
}
