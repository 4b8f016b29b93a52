//! The `high-value-orders` handler: for every `OrderPlaced` whose amount reaches the `threshold`
//! parameter (default 1000), emits `HighValueOrderFlagged` to the `order-alerts` topic, with the
//! customer's running count of flagged orders.

use serde::{Deserialize, Serialize};
use weir_sdk::{Event, Handler, HandlerCtx, HandlerInfo, Result};

#[derive(Debug, Deserialize)]
struct OrderPlaced {
    order_id: String,
    customer_id: String,
    amount: f64,
}

/// The event this handler emits.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct HighValueOrderFlagged {
    pub order_id: String,
    pub customer_id: String,
    pub amount: f64,
    pub threshold: f64,
    /// How many of this customer's orders have been flagged, this one included.
    pub flagged_for_customer: u64,
}

pub struct HighValueOrders;

impl Handler for HighValueOrders {
    fn describe() -> HandlerInfo {
        HandlerInfo::new("high-value-orders", env!("CARGO_PKG_VERSION"))
            .description("Flags orders at or above the threshold parameter")
            .topic("orders")
            .event_types(["OrderPlaced"])
            .emits_to("order-alerts")
    }

    fn handle(ctx: &mut HandlerCtx<'_>, event: &Event) -> Result<()> {
        let threshold = match ctx.param("threshold") {
            Some(text) => {
                text.parse::<f64>().map_err(|e| weir_sdk::Error::msg(format!("parameter threshold={text:?}: {e}")))?
            }
            None => 1000.0,
        };
        let placed: OrderPlaced = event.json()?;
        if placed.amount < threshold {
            return Ok(());
        }
        let count_key = format!("flagged/{}", placed.customer_id);
        let flagged_for_customer = ctx.get::<u64>(&count_key)?.unwrap_or(0) + 1;
        ctx.put(&count_key, &flagged_for_customer)?;
        let flagged = HighValueOrderFlagged {
            order_id: placed.order_id,
            customer_id: placed.customer_id,
            amount: placed.amount,
            threshold,
            flagged_for_customer,
        };
        ctx.emit_json("order-alerts", &flagged.order_id.clone(), "HighValueOrderFlagged", &flagged)
    }
}

weir_sdk::export_handler!(HighValueOrders);
