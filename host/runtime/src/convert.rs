//! Calls into a live instance, and conversion between the generated bindings and host types.

use crate::bindings::tables;
use crate::{CallOutput, Exports, Live, PluginInfo, PluginKind};
use weir_core::event::{Event, OutgoingEvent};
use weir_core::row::{Column, ColumnType, RowChange, TableSchema, Value};

/// Borrowed views of host events for one world's generated `types` (the two worlds each have
/// their own): the headers first, since each event's view points into them.
macro_rules! event_views {
    ($module:ident, $types:path, $header:ident) => {
        mod $module {
            use weir_core::event::Event;
            use $types as types;

            pub(super) fn headers(events: &[Event]) -> Vec<Vec<types::$header<'_>>> {
                events
                    .iter()
                    .map(|e| e.headers.iter().map(|(name, value)| types::$header { name, value }).collect())
                    .collect()
            }

            pub(super) fn events<'a>(
                events: &'a [Event],
                headers: &'a [Vec<types::$header<'a>>],
            ) -> Vec<types::Event<'a>> {
                events
                    .iter()
                    .zip(headers)
                    .map(|(e, headers)| types::Event {
                        id: &e.id,
                        event_type: &e.event_type,
                        key: e.key.as_deref(),
                        payload: &e.payload,
                        content_type: &e.content_type,
                        time: e.time_us,
                        headers,
                        correlation_id: e.correlation_id.as_deref(),
                        causation_id: e.causation_id.as_deref(),
                        position: types::Position {
                            topic: &e.position.topic,
                            partition: e.position.partition,
                            offset: e.position.offset,
                        },
                    })
                    .collect()
            }
        }
    };
}

event_views!(projection_views, crate::bindings::projection::weir::plugin::types, Header);
event_views!(handler_views, crate::bindings::handler::weir::plugin::types, HeaderParam);

pub(super) fn call_apply(live: &mut Live, events: &[Event]) -> wasmtime::Result<CallOutput<Vec<RowChange>>> {
    let Exports::Projection(exports) = &live.exports else { wasmtime::bail!("not a projection") };
    let headers = projection_views::headers(events);
    let params = projection_views::events(events, &headers);
    let results = exports.weir_plugin_projector().call_apply(&mut live.store, &params)?;
    Ok(results
        .into_iter()
        .map(|r| r.map(|changes| changes.into_iter().map(row_change).collect()).map_err(|e| e.message))
        .collect())
}

pub(super) fn call_handle(live: &mut Live, events: &[Event]) -> wasmtime::Result<CallOutput<Vec<OutgoingEvent>>> {
    let Exports::Handler(exports) = &live.exports else { wasmtime::bail!("not a handler") };
    let headers = handler_views::headers(events);
    let params = handler_views::events(events, &headers);
    let results = exports.weir_plugin_reactor().call_handle(&mut live.store, &params)?;
    Ok(results
        .into_iter()
        .map(|r| {
            r.map(|emitted| {
                emitted
                    .into_iter()
                    .map(|e| OutgoingEvent {
                        topic: e.topic,
                        key: e.key,
                        event_type: e.event_type,
                        payload: e.payload,
                        content_type: e.content_type,
                        headers: e.headers.into_iter().map(|h| (h.name, h.value)).collect(),
                    })
                    .collect()
            })
            .map_err(|e| e.message)
        })
        .collect())
}

pub(super) fn call_describe(live: &mut Live) -> wasmtime::Result<PluginInfo> {
    Ok(match &live.exports {
        Exports::Projection(exports) => {
            let info = exports.weir_plugin_projector().call_describe(&mut live.store)?;
            PluginInfo {
                name: info.name,
                version: info.version,
                description: info.description,
                topics: info.subscription.topics,
                event_types: info.subscription.event_types,
                kind: PluginKind::Projection { tables: info.tables.into_iter().map(table_schema).collect() },
            }
        }
        Exports::Handler(exports) => {
            let info = exports.weir_plugin_reactor().call_describe(&mut live.store)?;
            PluginInfo {
                name: info.name,
                version: info.version,
                description: info.description,
                topics: info.subscription.topics,
                event_types: info.subscription.event_types,
                kind: PluginKind::Handler { emits_to: info.emits_to },
            }
        }
    })
}

fn table_schema(t: tables::TableSchema) -> TableSchema {
    TableSchema {
        name: t.name,
        description: t.description,
        columns: t
            .columns
            .into_iter()
            .map(|c| Column {
                name: c.name,
                kind: match c.kind {
                    tables::ColumnType::String => ColumnType::String,
                    tables::ColumnType::Int64 => ColumnType::Int64,
                    tables::ColumnType::Float64 => ColumnType::Float64,
                    tables::ColumnType::Bool => ColumnType::Bool,
                    tables::ColumnType::Timestamp => ColumnType::Timestamp,
                    tables::ColumnType::Bytes => ColumnType::Bytes,
                },
                nullable: c.nullable,
            })
            .collect(),
        primary_key: t.primary_key,
    }
}

fn value(v: tables::Value) -> Value {
    match v {
        tables::Value::Null => Value::Null,
        tables::Value::String(s) => Value::String(s),
        tables::Value::Int64(i) => Value::Int64(i),
        tables::Value::Float64(f) => Value::Float64(f),
        tables::Value::Bool(b) => Value::Bool(b),
        tables::Value::Timestamp(t) => Value::Timestamp(t),
        tables::Value::Bytes(b) => Value::Bytes(b),
    }
}

fn row_change(c: tables::RowChange) -> RowChange {
    match c {
        tables::RowChange::Upsert(u) => {
            RowChange::Upsert { table: u.table, row: u.row.into_iter().map(value).collect() }
        }
        tables::RowChange::Delete(d) => {
            RowChange::Delete { table: d.table, key: d.key.into_iter().map(value).collect() }
        }
    }
}
