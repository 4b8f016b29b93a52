//! Glue between the SDK's types and the generated bindings, used by the export macros.
//! Not part of the public API.

use std::marker::PhantomData;

pub use crate::bindings::{handler, projection};
use crate::bindings::{tables as wit_tables, types as wit_types};
use crate::{ColumnType, Event, Handler, OutgoingEvent, Position, Projection, RowChange, Timestamp, Value};
use handler::exports::weir::plugin::reactor;
use projection::exports::weir::plugin::projector;
pub use serde;

/// Implements the `projector` export for a [`Projection`].
pub struct ProjectionExport<P>(PhantomData<P>);

/// Implements the `reactor` export for a [`Handler`].
pub struct HandlerExport<H>(PhantomData<H>);

impl<P: Projection> projector::Guest for ProjectionExport<P> {
    fn describe() -> projector::ProjectionInfo {
        let info = P::describe();
        projector::ProjectionInfo {
            name: info.name,
            version: info.version,
            description: info.description,
            subscription: wit_types::Subscription { topics: info.topics, event_types: info.event_types },
            tables: info.tables.into_iter().map(table_to_wit).collect(),
        }
    }

    fn apply(events: Vec<wit_types::Event>) -> Vec<Result<Vec<wit_tables::RowChange>, wit_types::EventError>> {
        crate::projection::apply_batch::<P>(events.into_iter().map(event_from_wit))
            .into_iter()
            .map(|outcome| match outcome {
                Ok(changes) => Ok(changes.into_iter().map(change_to_wit).collect()),
                Err(e) => Err(wit_types::EventError { message: e.message().to_string() }),
            })
            .collect()
    }
}

impl<H: Handler> reactor::Guest for HandlerExport<H> {
    fn describe() -> reactor::HandlerInfo {
        let info = H::describe();
        reactor::HandlerInfo {
            name: info.name,
            version: info.version,
            description: info.description,
            subscription: wit_types::Subscription { topics: info.topics, event_types: info.event_types },
            emits_to: info.emits_to,
        }
    }

    fn handle(events: Vec<wit_types::Event>) -> Vec<Result<Vec<reactor::OutgoingEvent>, wit_types::EventError>> {
        crate::handler::handle_batch::<H>(events.into_iter().map(event_from_wit))
            .into_iter()
            .map(|outcome| match outcome {
                Ok(emitted) => Ok(emitted.into_iter().map(outgoing_to_wit).collect()),
                Err(e) => Err(wit_types::EventError { message: e.message().to_string() }),
            })
            .collect()
    }
}

fn event_from_wit(e: wit_types::Event) -> Event {
    Event {
        id: e.id,
        event_type: e.event_type,
        key: e.key,
        payload: e.payload,
        content_type: e.content_type,
        time: Timestamp(e.time),
        headers: e.headers.into_iter().map(|h| (h.name, h.value)).collect(),
        correlation_id: e.correlation_id,
        causation_id: e.causation_id,
        position: Position { topic: e.position.topic, partition: e.position.partition, offset: e.position.offset },
    }
}

fn table_to_wit(t: crate::TableSchema) -> wit_tables::TableSchema {
    wit_tables::TableSchema {
        name: t.name,
        description: t.description,
        columns: t
            .columns
            .into_iter()
            .map(|c| wit_tables::Column {
                name: c.name,
                kind: match c.kind {
                    ColumnType::String => wit_tables::ColumnType::String,
                    ColumnType::Int64 => wit_tables::ColumnType::Int64,
                    ColumnType::Float64 => wit_tables::ColumnType::Float64,
                    ColumnType::Bool => wit_tables::ColumnType::Bool,
                    ColumnType::Timestamp => wit_tables::ColumnType::Timestamp,
                    ColumnType::Bytes => wit_tables::ColumnType::Bytes,
                },
                nullable: c.nullable,
            })
            .collect(),
        primary_key: t.primary_key,
    }
}

fn value_to_wit(v: Value) -> wit_tables::Value {
    match v {
        Value::Null => wit_tables::Value::Null,
        Value::String(s) => wit_tables::Value::String(s),
        Value::Int64(i) => wit_tables::Value::Int64(i),
        Value::Float64(f) => wit_tables::Value::Float64(f),
        Value::Bool(b) => wit_tables::Value::Bool(b),
        Value::Timestamp(t) => wit_tables::Value::Timestamp(t),
        Value::Bytes(b) => wit_tables::Value::Bytes(b),
    }
}

fn change_to_wit(c: RowChange) -> wit_tables::RowChange {
    match c {
        RowChange::Upsert { table, row } => wit_tables::RowChange::Upsert(wit_tables::Upsert {
            table,
            row: row.into_iter().map(value_to_wit).collect(),
        }),
        RowChange::Delete { table, key } => wit_tables::RowChange::Delete(wit_tables::Delete {
            table,
            key: key.into_iter().map(value_to_wit).collect(),
        }),
    }
}

fn outgoing_to_wit(e: OutgoingEvent) -> reactor::OutgoingEvent {
    reactor::OutgoingEvent {
        topic: e.topic,
        key: e.key,
        event_type: e.event_type,
        payload: e.payload,
        content_type: e.content_type,
        headers: e.headers.into_iter().map(|(name, value)| wit_types::Header { name, value }).collect(),
    }
}

/// Export a [`Projection`](crate::Projection) implementation as this component's `projector`.
///
/// Invoke once, at the crate root of a `cdylib` plugin crate. Natively it expands to nothing, so
/// the same crate also builds for tests with [`testing`](crate::testing).
#[macro_export]
macro_rules! export_projection {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type WeirProjectionExport = $crate::__private::ProjectionExport<$plugin>;
            $crate::__private::projection::export_projection_world!(
                WeirProjectionExport with_types_in $crate::__private::projection
            );
        };
    };
}

/// Export a [`Handler`](crate::Handler) implementation as this component's `reactor`.
///
/// Invoke once, at the crate root of a `cdylib` plugin crate.
#[macro_export]
macro_rules! export_handler {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type WeirHandlerExport = $crate::__private::HandlerExport<$plugin>;
            $crate::__private::handler::export_handler_world!(
                WeirHandlerExport with_types_in $crate::__private::handler
            );
        };
    };
}
