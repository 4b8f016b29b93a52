//! The `payment-service` handler: a simulated payment gateway that never charges an order twice.
//!
//! `ChargePayment` charges the order (`PaymentCharged`) once: a repeat gets the same answer
//! without a second charge, and an order cancelled before its charge arrives is declined. The
//! input data drives its failures: an amount over the `decline_over` parameter (default 4000) is
//! declined (`PaymentDeclined`); an amount with 13 cents makes the gateway crash (the plugin
//! traps: the command goes to the dead-letter topic and the saga times out); an amount with 42
//! cents is never answered (the saga times out). `CancelPayment` and `RefundPayment` refund a
//! charge (`PaymentRefunded`) or, with none, mark the order cancelled (`PaymentCancelled`).

use serde::{Deserialize, Serialize};
use weir_sdk::{Event, Handler, HandlerCtx, HandlerInfo, Result};

#[derive(Debug, Deserialize)]
struct Command {
    order_id: String,
    #[serde(default)]
    amount: f64,
}

/// What the gateway knows of one order.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Account {
    charged: bool,
    refunded: bool,
    cancelled: bool,
}

#[derive(Debug, Serialize)]
struct Answer<'a> {
    order_id: &'a str,
    amount: f64,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    /// The answer to a charge already made (no money moved).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    repeat: bool,
}

pub struct PaymentService;

impl Handler for PaymentService {
    fn describe() -> HandlerInfo {
        HandlerInfo::new("payment-service", env!("CARGO_PKG_VERSION"))
            .description("A simulated payment gateway: charges once per order, declines, refunds")
            .topic("payment-commands")
            .event_types(["ChargePayment", "CancelPayment", "RefundPayment"])
            .emits_to("payment-events")
    }

    fn handle(ctx: &mut HandlerCtx<'_>, event: &Event) -> Result<()> {
        let command: Command = event.json()?;
        let key = format!("payment/{}", command.order_id);
        let mut account = ctx.get::<Account>(&key)?.unwrap_or_default();
        let order_id = command.order_id.as_str();
        let amount = command.amount;
        let repeat = event.event_type == "ChargePayment" && account.charged;
        let answer = |reason: &'static str| Answer { order_id, amount, reason, repeat };
        let (kind, reason) = match event.event_type.as_str() {
            "ChargePayment" if account.charged => ("PaymentCharged", ""),
            "ChargePayment" if account.cancelled => ("PaymentDeclined", "the order was cancelled before its charge"),
            "ChargePayment" => {
                let cents = (amount * 100.0).round() as i64 % 100;
                if cents == 13 {
                    panic!("payment gateway crashed on order {order_id}");
                }
                if cents == 42 {
                    // The gateway swallows it: no answer.
                    return Ok(());
                }
                let limit: f64 = ctx.param("decline_over").and_then(|t| t.parse().ok()).unwrap_or(4000.0);
                if amount > limit {
                    ("PaymentDeclined", "over the card limit")
                } else {
                    account.charged = true;
                    ("PaymentCharged", "")
                }
            }
            _ if account.charged && !account.refunded => {
                account.refunded = true;
                account.cancelled = true;
                ("PaymentRefunded", "")
            }
            _ => {
                account.cancelled = true;
                ("PaymentCancelled", "")
            }
        };
        ctx.put(&key, &account)?;
        ctx.emit_json("payment-events", order_id, kind, &answer(reason))
    }
}

weir_sdk::export_handler!(PaymentService);
