//! The `merchant-totals` projection: takings per merchant from the same `Transaction` events
//! `account-balances` reads. As small as that one (one state read, one state write, one upsert
//! per event), but keyed by a payload field rather than the event key; the benchmark runs the
//! two side by side on one topic.

use serde::{Deserialize, Serialize};
use weir_sdk::{Event, Projection, ProjectionCtx, ProjectionInfo, Result, Timestamp, bail};

weir_sdk::table! {
    /// One row per merchant: what went through it.
    pub struct Merchant as "merchants" key(merchant) {
        merchant: String,
        total: f64,
        transactions: i64,
        last_at: Timestamp,
    }
}

/// `Transaction` payload, the fields this projection reads.
#[derive(Debug, Deserialize)]
pub struct Transaction {
    pub amount: f64,
    pub merchant: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Takings {
    total: f64,
    transactions: i64,
}

pub struct MerchantTotals;

impl Projection for MerchantTotals {
    fn describe() -> ProjectionInfo {
        ProjectionInfo::new("merchant-totals", env!("CARGO_PKG_VERSION"))
            .description("Takings per merchant")
            .topic("transactions")
            .event_types(["Transaction"])
            .table::<Merchant>()
    }

    fn apply(ctx: &mut ProjectionCtx<'_>, event: &Event) -> Result<()> {
        let transaction: Transaction = event.json()?;
        if !transaction.amount.is_finite() {
            bail!("amount {} at merchant {} is not a number", transaction.amount, transaction.merchant);
        }
        let key = format!("merchant/{}", transaction.merchant);
        let mut takings = ctx.get::<Takings>(&key)?.unwrap_or_default();
        takings.total += transaction.amount;
        takings.transactions += 1;
        ctx.put(&key, &takings)?;
        ctx.upsert(Merchant {
            merchant: transaction.merchant,
            total: takings.total,
            transactions: takings.transactions,
            last_at: event.time,
        });
        Ok(())
    }
}

weir_sdk::export_projection!(MerchantTotals);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::ProjectionHarness;
    use weir_sdk::{Position, RowChange, Value};

    fn transaction(offset: u64, payload: &str) -> Event {
        Event {
            id: format!("t-{offset}"),
            event_type: "Transaction".into(),
            key: Some("a-1".into()),
            payload: payload.as_bytes().to_vec(),
            content_type: "application/json".into(),
            time: Timestamp(offset as i64),
            headers: Vec::new(),
            correlation_id: None,
            causation_id: None,
            position: Position { topic: "transactions".into(), partition: 0, offset },
        }
    }

    #[test]
    fn takings_add_up_per_merchant_and_bad_amounts_are_refused() {
        let mut harness = ProjectionHarness::<MerchantTotals>::new();
        let outcomes = harness.apply([
            transaction(0, r#"{"amount":4.5,"merchant":"m-1"}"#),
            transaction(1, r#"{"amount":1.5,"merchant":"m-2"}"#),
            transaction(2, r#"{"amount":"x","merchant":"m-1"}"#),
            transaction(3, r#"{"amount":0.5,"merchant":"m-1"}"#),
        ]);
        assert!(outcomes[2].is_err());
        match outcomes[3].as_ref().expect("applied").as_slice() {
            [RowChange::Upsert { row, .. }] => {
                assert_eq!(row[..3], [Value::String("m-1".into()), Value::Float64(5.0), Value::Int64(2)]);
            }
            other => panic!("expected one upsert, got {other:?}"),
        }
    }
}
