//! The `saga-view` projection: what the order sagas are doing, for SQL.
//!
//! `sagas`: one row per saga (from `order-saga`'s `SagaUpdated`), with the money the payment
//! service moved for it (`charges`, `refunds`: a saga confirmed holds one charge and no refund; a
//! cancelled one, as many refunds as charges). `saga_events`: every command and reply of every
//! flow, with its correlation and causation ids and its place in the flow as this projection saw
//! it (`seq`), so one flow can be followed:
//! `SELECT * FROM saga_events WHERE correlation_id = '...' ORDER BY seq`.

use serde::{Deserialize, Serialize};
use weir_sdk::{Event, Projection, ProjectionCtx, ProjectionInfo, Result, Timestamp};

weir_sdk::table! {
    /// One row per order saga: where it is, or how it ended.
    pub struct Saga as "sagas" key(order_id) {
        order_id: String,
        customer_id: String,
        amount: f64,
        status: String,
        step: String,
        reason: String,
        charges: i64,
        refunds: i64,
        correlation_id: String,
        updated_at: Timestamp,
    }
}

weir_sdk::table! {
    /// Every command and reply of the sagas, by event id.
    pub struct SagaEvent as "saga_events" key(event_id) {
        event_id: String,
        order_id: String,
        topic: String,
        event_type: String,
        correlation_id: String,
        causation_id: Option<String>,
        seq: i64,
        at: Timestamp,
    }
}

#[derive(Debug, Deserialize)]
struct Update {
    order_id: String,
    #[serde(default)]
    customer_id: String,
    #[serde(default)]
    amount: f64,
    #[serde(default)]
    step: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    repeat: bool,
}

/// What the projection keeps per saga between events.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Known {
    customer_id: String,
    amount: f64,
    status: String,
    step: String,
    reason: String,
    charges: i64,
    refunds: i64,
}

pub struct SagaView;

impl Projection for SagaView {
    fn describe() -> ProjectionInfo {
        ProjectionInfo::new("saga-view", env!("CARGO_PKG_VERSION"))
            .description("Order sagas: their state, the money moved, and every step of each flow")
            .topic("saga-events")
            .topic("inventory-commands")
            .topic("inventory-events")
            .topic("payment-commands")
            .topic("payment-events")
            .table::<Saga>()
            .table::<SagaEvent>()
    }

    fn apply(ctx: &mut ProjectionCtx<'_>, event: &Event) -> Result<()> {
        let update: Update = event.json()?;
        let correlation_id = event.correlation_id.clone().unwrap_or_else(|| event.id.clone());
        let flow_key = format!("flow/{correlation_id}");
        let seq = ctx.get::<i64>(&flow_key)?.unwrap_or(0) + 1;
        ctx.put(&flow_key, &seq)?;
        ctx.upsert(SagaEvent {
            event_id: event.id.clone(),
            order_id: update.order_id.clone(),
            topic: event.position.topic.clone(),
            event_type: event.event_type.clone(),
            correlation_id: correlation_id.clone(),
            causation_id: event.causation_id.clone(),
            seq,
            at: event.time,
        });
        let key = format!("saga/{}", update.order_id);
        let mut known = ctx.get::<Known>(&key)?.unwrap_or_default();
        match event.event_type.as_str() {
            "SagaUpdated" => {
                known.customer_id = update.customer_id;
                known.amount = update.amount;
                known.status = update.status;
                known.step = update.step;
                known.reason = update.reason;
            }
            "PaymentCharged" if !update.repeat => known.charges += 1,
            "PaymentRefunded" => known.refunds += 1,
            _ => return Ok(()),
        }
        ctx.put(&key, &known)?;
        // A payment can be seen before the saga's first update: the row waits for the update.
        if known.status.is_empty() {
            return Ok(());
        }
        ctx.upsert(Saga {
            order_id: update.order_id,
            customer_id: known.customer_id,
            amount: known.amount,
            status: known.status,
            step: known.step,
            reason: known.reason,
            charges: known.charges,
            refunds: known.refunds,
            correlation_id,
            updated_at: event.time,
        });
        Ok(())
    }
}

weir_sdk::export_projection!(SagaView);
