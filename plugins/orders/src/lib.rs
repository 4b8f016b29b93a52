//! The `orders` projection: builds the `orders` and `customer_revenue` read models from the order
//! lifecycle events `OrderPlaced`, `OrderPaid`, `OrderShipped` and `OrderCancelled`.
//!
//! Each order moves `placed → paid → shipped`, or to `cancelled` from `placed` or `paid`. An event
//! that does not fit that life cycle (paying an unknown order, shipping a cancelled one) is refused
//! with a message and changes nothing. Revenue counts paid orders; cancelling a paid order refunds it.

use serde::{Deserialize, Serialize};
use weir_sdk::{Event, Projection, ProjectionCtx, ProjectionInfo, Result, Timestamp, bail};

weir_sdk::table! {
    /// One row per order, with its current status.
    pub struct Order as "orders" key(order_id) {
        order_id: String,
        customer_id: String,
        status: String,
        amount: f64,
        currency: String,
        placed_at: Timestamp,
        paid_at: Option<Timestamp>,
        shipped_at: Option<Timestamp>,
        cancel_reason: Option<String>,
    }
}

weir_sdk::table! {
    /// One row per customer: order counts and paid revenue.
    pub struct CustomerRevenue as "customer_revenue" key(customer_id) {
        customer_id: String,
        orders_placed: i64,
        orders_paid: i64,
        orders_cancelled: i64,
        revenue: f64,
        last_order_at: Timestamp,
    }
}

/// `OrderPlaced` payload.
#[derive(Debug, Deserialize)]
pub struct OrderPlaced {
    pub order_id: String,
    pub customer_id: String,
    pub amount: f64,
    #[serde(default = "default_currency")]
    pub currency: String,
}

fn default_currency() -> String {
    "EUR".to_string()
}

/// `OrderPaid`, `OrderShipped` payload.
#[derive(Debug, Deserialize)]
pub struct OrderRef {
    pub order_id: String,
}

/// `OrderCancelled` payload.
#[derive(Debug, Deserialize)]
pub struct OrderCancelled {
    pub order_id: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// What the projection remembers of a customer between events.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CustomerTotals {
    placed: i64,
    paid: i64,
    cancelled: i64,
    revenue: f64,
}

pub struct Orders;

impl Projection for Orders {
    fn describe() -> ProjectionInfo {
        ProjectionInfo::new("orders", env!("CARGO_PKG_VERSION"))
            .description("Orders by status and revenue per customer")
            .topic("orders")
            .event_types(["OrderPlaced", "OrderPaid", "OrderShipped", "OrderCancelled"])
            .table::<Order>()
            .table::<CustomerRevenue>()
    }

    fn apply(ctx: &mut ProjectionCtx<'_>, event: &Event) -> Result<()> {
        match event.event_type.as_str() {
            "OrderPlaced" => {
                let placed: OrderPlaced = event.json()?;
                if ctx.get::<Order>(&order_key(&placed.order_id))?.is_some() {
                    bail!("order {} was already placed", placed.order_id);
                }
                let order = Order {
                    order_id: placed.order_id,
                    customer_id: placed.customer_id,
                    status: "placed".to_string(),
                    amount: placed.amount,
                    currency: placed.currency,
                    placed_at: event.time,
                    paid_at: None,
                    shipped_at: None,
                    cancel_reason: None,
                };
                update_customer(ctx, &order.customer_id, event.time, |c| c.placed += 1)?;
                save(ctx, order)
            }
            "OrderPaid" => {
                let mut order = load(ctx, &event.json::<OrderRef>()?.order_id, &["placed"], "paid")?;
                order.status = "paid".to_string();
                order.paid_at = Some(event.time);
                let amount = order.amount;
                update_customer(ctx, &order.customer_id, event.time, |c| {
                    c.paid += 1;
                    c.revenue += amount;
                })?;
                save(ctx, order)
            }
            "OrderShipped" => {
                let mut order = load(ctx, &event.json::<OrderRef>()?.order_id, &["paid"], "shipped")?;
                order.status = "shipped".to_string();
                order.shipped_at = Some(event.time);
                save(ctx, order)
            }
            "OrderCancelled" => {
                let cancelled: OrderCancelled = event.json()?;
                let mut order = load(ctx, &cancelled.order_id, &["placed", "paid"], "cancelled")?;
                let refund = if order.status == "paid" { order.amount } else { 0.0 };
                order.status = "cancelled".to_string();
                order.cancel_reason = cancelled.reason;
                update_customer(ctx, &order.customer_id, event.time, |c| {
                    c.cancelled += 1;
                    c.revenue -= refund;
                })?;
                save(ctx, order)
            }
            other => bail!("orders does not handle event type {other}"),
        }
    }
}

weir_sdk::export_projection!(Orders);

fn order_key(order_id: &str) -> String {
    format!("order/{order_id}")
}

/// The order as last saved, if its status is one of `from`.
fn load(ctx: &ProjectionCtx<'_>, order_id: &str, from: &[&str], to: &str) -> Result<Order> {
    let Some(order) = ctx.get::<Order>(&order_key(order_id))? else {
        bail!("order {order_id} cannot become {to}: it was never placed");
    };
    if !from.contains(&order.status.as_str()) {
        bail!("order {order_id} cannot become {to}: it is {}", order.status);
    }
    Ok(order)
}

fn save(ctx: &mut ProjectionCtx<'_>, order: Order) -> Result<()> {
    ctx.put(&order_key(&order.order_id), &order)?;
    ctx.upsert(order);
    Ok(())
}

fn update_customer(
    ctx: &mut ProjectionCtx<'_>,
    customer_id: &str,
    at: Timestamp,
    change: impl FnOnce(&mut CustomerTotals),
) -> Result<()> {
    let key = format!("customer/{customer_id}");
    let mut totals: CustomerTotals = ctx.get(&key)?.unwrap_or_default();
    change(&mut totals);
    ctx.put(&key, &totals)?;
    ctx.upsert(CustomerRevenue {
        customer_id: customer_id.to_string(),
        orders_placed: totals.placed,
        orders_paid: totals.paid,
        orders_cancelled: totals.cancelled,
        revenue: totals.revenue,
        last_order_at: at,
    });
    Ok(())
}
