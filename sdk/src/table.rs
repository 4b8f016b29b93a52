//! Read-model tables: schemas, rows and the changes a projection makes to them.

use std::fmt;

use crate::Timestamp;

/// The type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// UTF-8 text.
    String,
    /// 64-bit signed integer.
    Int64,
    /// 64-bit float.
    Float64,
    /// Boolean.
    Bool,
    /// Microseconds since the Unix epoch, UTC.
    Timestamp,
    /// Raw bytes.
    Bytes,
}

/// One cell of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// No value; only allowed in nullable columns.
    Null,
    /// Text.
    String(String),
    /// Integer.
    Int64(i64),
    /// Float.
    Float64(f64),
    /// Boolean.
    Bool(bool),
    /// Microseconds since the Unix epoch.
    Timestamp(i64),
    /// Bytes.
    Bytes(Vec<u8>),
}

/// A Rust type that can be a column: it knows its column type and converts into a [`Value`].
pub trait ColumnValue: Into<Value> {
    /// The column type.
    const TYPE: ColumnType;
    /// Whether the column may hold `NULL`.
    const NULLABLE: bool = false;
}

macro_rules! column_value {
    ($($ty:ty => $kind:ident($conv:expr)),* $(,)?) => {$(
        impl From<$ty> for Value {
            fn from(v: $ty) -> Value {
                #[allow(clippy::redundant_closure_call)]
                Value::$kind(($conv)(v))
            }
        }
        impl ColumnValue for $ty {
            const TYPE: ColumnType = ColumnType::$kind;
        }
    )*};
}

column_value! {
    String => String(|v| v),
    i64 => Int64(|v| v),
    i32 => Int64(i64::from),
    u32 => Int64(i64::from),
    f64 => Float64(|v| v),
    bool => Bool(|v| v),
    Timestamp => Timestamp(|v: Timestamp| v.0),
    Vec<u8> => Bytes(|v| v),
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::String(v.to_string())
    }
}

impl<T: ColumnValue> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

impl<T: ColumnValue> ColumnValue for Option<T> {
    const TYPE: ColumnType = T::TYPE;
    const NULLABLE: bool = true;
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Column type.
    pub kind: ColumnType,
    /// Whether `NULL` is allowed.
    pub nullable: bool,
}

impl Column {
    /// The column for a field of Rust type `T`.
    pub fn of<T: ColumnValue>(name: &str) -> Column {
        Column { name: name.to_string(), kind: T::TYPE, nullable: T::NULLABLE }
    }
}

/// A read-model table as a projection declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    /// Table name, unique within the plugin.
    pub name: String,
    /// What a row means.
    pub description: String,
    /// Columns in order.
    pub columns: Vec<Column>,
    /// Names of the primary-key columns, in key order.
    pub primary_key: Vec<String>,
}

/// A struct that is one row of a table; write it with [`table!`](crate::table).
pub trait Row {
    /// The table name.
    const TABLE: &'static str;
    /// The table's schema.
    fn schema() -> TableSchema;
    /// The row's values, in column order.
    fn into_values(self) -> Vec<Value>;
}

/// A primary key: one value per key column. Single values and tuples convert into it.
#[derive(Debug, Clone, PartialEq)]
pub struct Key(pub Vec<Value>);

impl<T: Into<Value>> From<T> for Key {
    fn from(v: T) -> Key {
        Key(vec![v.into()])
    }
}

impl<A: Into<Value>, B: Into<Value>> From<(A, B)> for Key {
    fn from((a, b): (A, B)) -> Key {
        Key(vec![a.into(), b.into()])
    }
}

impl<A: Into<Value>, B: Into<Value>, C: Into<Value>> From<(A, B, C)> for Key {
    fn from((a, b, c): (A, B, C)) -> Key {
        Key(vec![a.into(), b.into(), c.into()])
    }
}

/// A change to one row.
#[derive(Debug, Clone, PartialEq)]
pub enum RowChange {
    /// Insert the row or replace the one with the same key.
    Upsert {
        /// Table name.
        table: String,
        /// Values in column order.
        row: Vec<Value>,
    },
    /// Remove the row with this key.
    Delete {
        /// Table name.
        table: String,
        /// Key values in key order.
        key: Vec<Value>,
    },
}

impl fmt::Display for Value {
    /// The golden-file form, shared with the host: `null`, `"text"`, `42`, `1.5`, `true`,
    /// `ts(1700000000000000)`, `0x0aff`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::String(s) => write!(f, "{s:?}"),
            Value::Int64(v) => write!(f, "{v}"),
            Value::Float64(v) => write!(f, "{v:?}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Timestamp(v) => write!(f, "ts({v})"),
            Value::Bytes(b) => {
                f.write_str("0x")?;
                b.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
            }
        }
    }
}

impl fmt::Display for RowChange {
    /// `upsert orders("o-1", 5)` or `delete orders("o-1")`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (verb, table, values) = match self {
            RowChange::Upsert { table, row } => ("upsert", table, row),
            RowChange::Delete { table, key } => ("delete", table, key),
        };
        write!(f, "{verb} {table}(")?;
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{v}")?;
        }
        f.write_str(")")
    }
}

/// Declare a read-model table as a Rust struct.
///
/// ```
/// weir_sdk::table! {
///     /// One row per order.
///     pub struct Order as "orders" key(order_id) {
///         order_id: String,
///         amount: f64,
///         shipped_at: Option<weir_sdk::Timestamp>,
///     }
/// }
/// ```
///
/// Every field becomes a public field and a column of the same name, nullable when it is an
/// `Option`. The struct also derives `Serialize` and `Deserialize`, so a row can be kept in state. The names in `key(...)` form the primary key and must be fields.
#[macro_export]
macro_rules! table {
    (
        $(#[doc = $doc:literal])*
        $vis:vis struct $name:ident as $table:literal key($($key:ident),+ $(,)?) {
            $( $(#[doc = $fdoc:literal])* $field:ident : $ty:ty ),+ $(,)?
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, PartialEq, $crate::__private::serde::Serialize, $crate::__private::serde::Deserialize)]
        #[serde(crate = "weir_sdk::__private::serde")]
        $vis struct $name {
            $( $(#[doc = $fdoc])* pub $field: $ty, )+
        }

        impl $crate::Row for $name {
            const TABLE: &'static str = $table;

            fn schema() -> $crate::TableSchema {
                // Naming a key that is not a field fails to compile here.
                #[allow(dead_code)]
                fn key_fields_exist(row: &$name) { $( let _ = &row.$key; )+ }
                $crate::TableSchema {
                    name: $table.to_string(),
                    description: [$($doc),*].iter().map(|line: &&str| line.trim()).collect::<Vec<_>>().join(" "),
                    columns: vec![ $( $crate::Column::of::<$ty>(stringify!($field)) ),+ ],
                    primary_key: vec![ $( stringify!($key).to_string() ),+ ],
                }
            }

            fn into_values(self) -> Vec<$crate::Value> {
                vec![ $( $crate::Value::from(self.$field) ),+ ]
            }
        }
    };
}
