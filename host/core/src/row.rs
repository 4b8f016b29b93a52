//! Read-model schemas and row changes as the host carries them. Plain data: no library types.

use std::fmt;

/// The type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// UTF-8 text.
    String,
    /// 64-bit integer.
    Int64,
    /// 64-bit float.
    Float64,
    /// Boolean.
    Bool,
    /// Microseconds since the Unix epoch.
    Timestamp,
    /// Bytes.
    Bytes,
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ColumnType::String => "string",
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::Bool => "bool",
            ColumnType::Timestamp => "timestamp",
            ColumnType::Bytes => "bytes",
        })
    }
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Column type.
    #[serde(rename = "type")]
    pub kind: ColumnType,
    /// Whether NULL is allowed.
    pub nullable: bool,
}

/// A read-model table as a projection declared it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableSchema {
    /// Table name, unique within its plugin.
    pub name: String,
    /// What a row means.
    pub description: String,
    /// Columns in order.
    pub columns: Vec<Column>,
    /// Primary-key column names, in key order.
    pub primary_key: Vec<String>,
}

/// One cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// No value.
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

impl Value {
    /// The column type this value fits, or `None` for NULL.
    pub fn column_type(&self) -> Option<ColumnType> {
        Some(match self {
            Value::Null => return None,
            Value::String(_) => ColumnType::String,
            Value::Int64(_) => ColumnType::Int64,
            Value::Float64(_) => ColumnType::Float64,
            Value::Bool(_) => ColumnType::Bool,
            Value::Timestamp(_) => ColumnType::Timestamp,
            Value::Bytes(_) => ColumnType::Bytes,
        })
    }

    /// Approximate bytes, for the output cap.
    pub fn size(&self) -> usize {
        match self {
            Value::String(s) => s.len() + 8,
            Value::Bytes(b) => b.len() + 8,
            _ => 8,
        }
    }
}

/// A change to one row of one table.
#[derive(Debug, Clone, PartialEq)]
pub enum RowChange {
    /// Insert, or replace the row with the same key.
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

impl RowChange {
    /// The table it changes.
    pub fn table(&self) -> &str {
        match self {
            RowChange::Upsert { table, .. } | RowChange::Delete { table, .. } => table,
        }
    }

    /// Approximate bytes, for the output cap.
    pub fn size(&self) -> usize {
        let values = match self {
            RowChange::Upsert { row, .. } => row,
            RowChange::Delete { key, .. } => key,
        };
        self.table().len() + values.iter().map(Value::size).sum::<usize>()
    }
}

impl TableSchema {
    /// Check a row change against this schema; the error names the table, column, expected and
    /// actual type. [`RowChanges::check`] is how the host calls it.
    pub fn check(&self, change: &RowChange) -> Result<(), String> {
        match change {
            // The common case, checked without collecting the columns (no allocation per row).
            RowChange::Upsert { row, .. } => self.check_values(row, self.columns.iter(), self.columns.len(), "columns"),
            RowChange::Delete { key, .. } => {
                let columns: Vec<&Column> =
                    self.primary_key.iter().filter_map(|k| self.columns.iter().find(|c| &c.name == k)).collect();
                self.check_values(key, columns.iter().copied(), columns.len(), "key columns")
            }
        }
    }

    fn check_values<'a>(
        &self,
        values: &[Value],
        columns: impl Iterator<Item = &'a Column>,
        expected: usize,
        what: &str,
    ) -> Result<(), String> {
        if values.len() != expected {
            return Err(format!(
                "table {}: row has {} values but the table has {expected} {what}",
                self.name,
                values.len()
            ));
        }
        for (value, column) in values.iter().zip(columns) {
            match value.column_type() {
                None if column.nullable => {}
                None => {
                    return Err(format!("table {}: column {} is not nullable but got NULL", self.name, column.name));
                }
                Some(actual) if actual == column.kind => {}
                Some(actual) => {
                    return Err(format!(
                        "table {}: column {} expects {} but got {actual}",
                        self.name, column.name, column.kind
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One event's row changes after they passed [`RowChanges::check`] against the tables their
/// plugin declared: every change names a declared table and fits its columns. The only form a
/// read model accepts, so the check runs once, before the plugin's state for the event is
/// committed, and nothing downstream checks again.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RowChanges(Vec<RowChange>);

impl RowChanges {
    /// Check `changes` against `tables`; the error names the table, column, expected and actual
    /// type, or the undeclared table.
    pub fn check(tables: &[TableSchema], changes: Vec<RowChange>) -> Result<RowChanges, String> {
        for change in &changes {
            let schema = tables
                .iter()
                .find(|t| t.name == change.table())
                .ok_or_else(|| format!("table {} is not one this plugin declared", change.table()))?;
            schema.check(change)?;
        }
        Ok(RowChanges(changes))
    }

    /// How many changes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The changes, in the order the plugin made them.
    pub fn into_vec(self) -> Vec<RowChange> {
        self.0
    }
}

impl std::ops::Deref for RowChanges {
    type Target = [RowChange];

    fn deref(&self) -> &[RowChange] {
        &self.0
    }
}

impl IntoIterator for RowChanges {
    type Item = RowChange;
    type IntoIter = std::vec::IntoIter<RowChange>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl fmt::Display for Value {
    /// The golden-file form, shared with weir-sdk: `null`, `"text"`, `42`, `1.5`, `true`,
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
        let (verb, values) = match self {
            RowChange::Upsert { row, .. } => ("upsert", row),
            RowChange::Delete { key, .. } => ("delete", key),
        };
        write!(f, "{verb} {}(", self.table())?;
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{v}")?;
        }
        f.write_str(")")
    }
}
