//! The `inventory-service` handler: a simulated inventory. `ReserveInventory` reserves an order's
//! items (`InventoryReserved`), unless one of its SKUs is out of stock (`InventoryRejected`):
//! a SKU whose number is a multiple of the `out_of_stock_every` parameter (default 97). That is
//! how the input data drives failures. `ReleaseInventory` releases what the order holds and
//! answers `InventoryReleased` (also when it holds nothing: releasing is idempotent).

use serde::{Deserialize, Serialize};
use weir_sdk::{Event, Handler, HandlerCtx, HandlerInfo, Result};

#[derive(Debug, Deserialize)]
struct Command {
    order_id: String,
    #[serde(default)]
    skus: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Answer<'a> {
    order_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
}

pub struct InventoryService;

impl Handler for InventoryService {
    fn describe() -> HandlerInfo {
        HandlerInfo::new("inventory-service", env!("CARGO_PKG_VERSION"))
            .description("A simulated inventory: reserves and releases the items of orders")
            .topic("inventory-commands")
            .event_types(["ReserveInventory", "ReleaseInventory"])
            .emits_to("inventory-events")
    }

    fn handle(ctx: &mut HandlerCtx<'_>, event: &Event) -> Result<()> {
        let command: Command = event.json()?;
        let key = format!("reserved/{}", command.order_id);
        let order_id = command.order_id.as_str();
        if event.event_type == "ReleaseInventory" {
            ctx.delete_state(&key);
            return ctx.emit_json("inventory-events", order_id, "InventoryReleased", &Answer { order_id, reason: "" });
        }
        if ctx.get::<bool>(&key)?.is_some() {
            // Reserved already: the same answer again.
            return ctx.emit_json("inventory-events", order_id, "InventoryReserved", &Answer { order_id, reason: "" });
        }
        let every: u64 = ctx.param("out_of_stock_every").and_then(|t| t.parse().ok()).unwrap_or(97).max(1);
        let missing = command.skus.iter().find(|sku| {
            sku.trim_start_matches(|c: char| !c.is_ascii_digit()).parse::<u64>().is_ok_and(|n| n % every == 0)
        });
        if let Some(sku) = missing {
            let reason = format!("{sku} is out of stock");
            return ctx.emit_json(
                "inventory-events",
                order_id,
                "InventoryRejected",
                &Answer { order_id, reason: &reason },
            );
        }
        ctx.put(&key, &true)?;
        ctx.emit_json("inventory-events", order_id, "InventoryReserved", &Answer { order_id, reason: "" })
    }
}

weir_sdk::export_handler!(InventoryService);
