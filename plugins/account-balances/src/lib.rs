//! The `account-balances` projection: the smallest useful projection, and the one the benchmark
//! measures weir's ceiling with. Each `Transaction` event (keyed by its account) reads the
//! account's running totals from state, adds the amount, writes them back and upserts the
//! account's row: one state read, one state write and one upsert per event.

use serde::{Deserialize, Serialize};
use weir_sdk::{Event, Projection, ProjectionCtx, ProjectionInfo, Result, Timestamp, bail};

weir_sdk::table! {
    /// One row per account: its balance and how many transactions made it.
    pub struct Balance as "balances" key(account) {
        account: String,
        balance: f64,
        transactions: i64,
        last_at: Timestamp,
    }
}

/// `Transaction` payload (other fields, such as merchant and reference, are ignored).
#[derive(Debug, Deserialize)]
pub struct Transaction {
    pub amount: f64,
}

/// What the projection remembers of an account between events.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Totals {
    balance: f64,
    transactions: i64,
}

pub struct AccountBalances;

impl Projection for AccountBalances {
    fn describe() -> ProjectionInfo {
        ProjectionInfo::new("account-balances", env!("CARGO_PKG_VERSION"))
            .description("Balance and transaction count per account")
            .topic("transactions")
            .event_types(["Transaction"])
            .table::<Balance>()
    }

    fn apply(ctx: &mut ProjectionCtx<'_>, event: &Event) -> Result<()> {
        let Some(account) = event.key.as_deref() else {
            bail!("a transaction needs its account as the event key");
        };
        let transaction: Transaction = event.json()?;
        if !transaction.amount.is_finite() {
            bail!("amount {} of account {account} is not a number", transaction.amount);
        }
        let mut totals = ctx.get::<Totals>(account)?.unwrap_or_default();
        totals.balance += transaction.amount;
        totals.transactions += 1;
        ctx.put(account, &totals)?;
        ctx.upsert(Balance {
            account: account.to_string(),
            balance: totals.balance,
            transactions: totals.transactions,
            last_at: event.time,
        });
        Ok(())
    }
}

weir_sdk::export_projection!(AccountBalances);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::ProjectionHarness;
    use weir_sdk::{Position, RowChange, Value};

    fn transaction(offset: u64, account: Option<&str>, payload: &str) -> Event {
        Event {
            id: format!("t-{offset}"),
            event_type: "Transaction".into(),
            key: account.map(str::to_string),
            payload: payload.as_bytes().to_vec(),
            content_type: "application/json".into(),
            time: Timestamp(1_000 + offset as i64),
            headers: Vec::new(),
            correlation_id: None,
            causation_id: None,
            position: Position { topic: "transactions".into(), partition: 0, offset },
        }
    }

    fn upserted(outcome: &Result<Vec<RowChange>>) -> Vec<Value> {
        match outcome.as_ref().expect("applied").as_slice() {
            [RowChange::Upsert { table, row }] if table == "balances" => row.clone(),
            other => panic!("expected one upsert of balances, got {other:?}"),
        }
    }

    #[test]
    fn balances_add_up_per_account() {
        let mut harness = ProjectionHarness::<AccountBalances>::new();
        let outcomes = harness.apply([
            transaction(0, Some("a-1"), r#"{"amount":10.5,"merchant":"m"}"#),
            transaction(1, Some("a-2"), r#"{"amount":-3}"#),
            transaction(2, Some("a-1"), r#"{"amount":-0.5}"#),
        ]);
        assert_eq!(
            upserted(&outcomes[2]),
            vec![Value::String("a-1".into()), Value::Float64(10.0), Value::Int64(2), Value::Timestamp(1_002)]
        );
        assert_eq!(upserted(&outcomes[1])[1], Value::Float64(-3.0));
    }

    #[test]
    fn a_refused_transaction_changes_nothing() {
        let mut harness = ProjectionHarness::<AccountBalances>::new();
        let outcomes = harness.apply([
            transaction(0, None, r#"{"amount":1}"#),
            transaction(1, Some("a-1"), r#"{"amount":"lots"}"#),
            transaction(2, Some("a-1"), r#"{"amount":2}"#),
        ]);
        assert!(outcomes[0].as_ref().unwrap_err().to_string().contains("event key"));
        assert!(outcomes[1].is_err());
        assert_eq!(upserted(&outcomes[2])[2], Value::Int64(1));
    }
}
