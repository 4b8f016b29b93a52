//! Session statements: what Postgres clients send around their queries, and the per-connection
//! state they change.
//!
//! Drivers open transactions (`BEGIN`, `COMMIT`, `ROLLBACK`), set session settings when they
//! connect (`SET application_name = ...`, `SET extra_float_digits = 3`), ask for settings (`SHOW
//! server_version`, `SHOW TRANSACTION ISOLATION LEVEL`) and clean up pooled connections
//! (`DISCARD ALL`, `DEALLOCATE`, `CLOSE`). None of these changes data, so weir accepts them;
//! anything that would make a write possible (`SET default_transaction_read_only = off`,
//! `BEGIN READ WRITE`) is refused as a write is.
//!
//! Transactions read snapshots as Postgres's isolation levels do: under `READ COMMITTED` (the
//! default) each statement reads the tables as they are when it starts; under `REPEATABLE READ`
//! or `SERIALIZABLE` every statement of the transaction reads the snapshot the first one read.
//! `statement_timeout` is honoured, capped by the server's own limit.
//!
//! This module knows the SQL syntax tree but not the wire: it turns a parsed statement into a
//! [`Command`] and applies commands to a [`Session`]; the front ends send the replies.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::sql::sqlparser::ast;

use crate::query::{Answer, QueryError, Result, Tables};

/// What one statement asks for.
#[derive(Debug, Clone)]
pub(crate) enum Command {
    /// A query: planned and run by the engine.
    Query(Box<ast::Statement>),
    /// `BEGIN` / `START TRANSACTION`, with its modes.
    Begin(TransactionModes),
    /// `SET TRANSACTION ...` / `SET SESSION CHARACTERISTICS AS TRANSACTION ...`.
    SetTransaction { modes: TransactionModes, session: bool },
    /// `COMMIT` / `END`.
    Commit,
    /// `ROLLBACK` / `ABORT`.
    Rollback,
    /// `SAVEPOINT name` / `RELEASE [SAVEPOINT] name`: nothing to keep (no statement writes), so
    /// acknowledged inside a transaction.
    Savepoint(&'static str),
    /// `ROLLBACK TO [SAVEPOINT] name`: clears a failed statement's abort, as in Postgres.
    RollbackToSavepoint,
    /// `SET [SESSION | LOCAL] name { = | TO } value` (`None`: `DEFAULT`).
    Set { name: String, value: Option<String> },
    /// `RESET name` (`None`: `RESET ALL`).
    Reset(Option<String>),
    /// `SHOW name` (`all` for `SHOW ALL`).
    Show(String),
    /// `DISCARD ALL | PLANS | SEQUENCES | TEMP`.
    Discard,
    /// `DEALLOCATE [PREPARE] name | ALL`: acknowledged (weir prepares no SQL-level statements;
    /// a protocol-level statement parsed again under its name replaces the old one).
    Deallocate,
    /// `CLOSE name | ALL`: acknowledged (weir opens no cursors).
    Close,
}

/// The isolation level and access mode a transaction asks for.
#[derive(Debug, Clone, Default)]
pub(crate) struct TransactionModes {
    isolation: Option<Isolation>,
    read_write: bool,
}

/// Which snapshot the statements of a transaction read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isolation {
    /// Each statement reads the tables as they are when it starts.
    ReadCommitted,
    /// Every statement reads the snapshot the transaction's first statement read.
    RepeatableRead,
}

impl Isolation {
    fn from_ast(level: &ast::TransactionIsolationLevel) -> Isolation {
        match level {
            ast::TransactionIsolationLevel::ReadUncommitted | ast::TransactionIsolationLevel::ReadCommitted => {
                Isolation::ReadCommitted
            }
            _ => Isolation::RepeatableRead,
        }
    }

    fn parse(value: &str) -> Option<Isolation> {
        match value.to_ascii_lowercase().split_whitespace().collect::<Vec<_>>().join(" ").as_str() {
            "read uncommitted" | "read committed" => Some(Isolation::ReadCommitted),
            "repeatable read" | "serializable" => Some(Isolation::RepeatableRead),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "read committed",
            Isolation::RepeatableRead => "repeatable read",
        }
    }
}

impl TransactionModes {
    fn from_ast(modes: &[ast::TransactionMode]) -> TransactionModes {
        let mut out = TransactionModes::default();
        for mode in modes {
            match mode {
                ast::TransactionMode::IsolationLevel(level) => out.isolation = Some(Isolation::from_ast(level)),
                ast::TransactionMode::AccessMode(ast::TransactionAccessMode::ReadWrite) => out.read_write = true,
                ast::TransactionMode::AccessMode(ast::TransactionAccessMode::ReadOnly) => out.read_write = false,
            }
        }
        out
    }

    fn check(&self) -> Result<()> {
        if self.read_write {
            return Err(QueryError::ReadOnly("a READ WRITE transaction is not allowed".into()));
        }
        Ok(())
    }
}

fn ident_list(parts: &[ast::Ident]) -> String {
    parts.iter().map(|p| p.value.clone()).collect::<Vec<_>>().join(" ")
}

fn object_name(name: &ast::ObjectName) -> String {
    name.0.iter().filter_map(|p| p.as_ident().map(|i| i.value.clone())).collect::<Vec<_>>().join(".")
}

/// The text of a `SET` value: a literal's contents, an identifier's name, a list joined by
/// commas (`SET search_path TO a, b`).
fn set_value(values: &[ast::Expr]) -> Option<String> {
    let text: Vec<String> = values
        .iter()
        .map(|v| match v {
            ast::Expr::Value(value) => match &value.value {
                ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s) => s.clone(),
                other => other.to_string(),
            },
            ast::Expr::Identifier(ident) => ident.value.clone(),
            other => other.to_string(),
        })
        .collect();
    if text.len() == 1 && text[0].eq_ignore_ascii_case("default") {
        return None;
    }
    Some(text.join(", "))
}

impl Command {
    /// What `statement` asks for. Statements that are neither session statements nor queries
    /// are left to the engine, which refuses writes with a read-only error.
    pub(crate) fn classify(statement: ast::Statement) -> Result<Command> {
        use ast::Statement as S;
        Ok(match statement {
            S::StartTransaction { modes, .. } => Command::Begin(TransactionModes::from_ast(&modes)),
            S::Commit { chain: false, .. } => Command::Commit,
            S::Rollback { chain: false, savepoint: None } => Command::Rollback,
            S::Rollback { chain: false, savepoint: Some(_) } => Command::RollbackToSavepoint,
            S::Savepoint { .. } => Command::Savepoint("SAVEPOINT"),
            S::ReleaseSavepoint { .. } => Command::Savepoint("RELEASE"),
            S::Commit { .. } | S::Rollback { .. } => {
                return Err(QueryError::Sql("chained transactions (AND CHAIN) are not supported".into()));
            }
            S::Set(set) => match set {
                ast::Set::SingleAssignment { variable, values, .. } => {
                    Command::Set { name: object_name(&variable), value: set_value(&values) }
                }
                ast::Set::SetTimeZone { value, .. } => {
                    Command::Set { name: "TimeZone".into(), value: set_value(std::slice::from_ref(&value)) }
                }
                ast::Set::SetNames { charset_name, .. } => {
                    Command::Set { name: "client_encoding".into(), value: Some(charset_name.value) }
                }
                ast::Set::SetTransaction { modes, session, .. } => {
                    Command::SetTransaction { modes: TransactionModes::from_ast(&modes), session }
                }
                ast::Set::SetRole { .. } | ast::Set::SetSessionAuthorization(_) => {
                    return Err(QueryError::Sql("weir has no roles to change to".into()));
                }
                other => return Err(QueryError::Sql(format!("unsupported SET statement: {other}"))),
            },
            S::Reset(reset) => match reset.reset {
                ast::Reset::ALL => Command::Reset(None),
                ast::Reset::ConfigurationParameter(name) => Command::Reset(Some(object_name(&name))),
            },
            S::ShowVariable { variable } => Command::Show(ident_list(&variable)),
            S::Discard { .. } => Command::Discard,
            // Writes DataFusion would not even plan: refused as every write is.
            S::Copy { .. } => {
                return Err(QueryError::ReadOnly(
                    "COPY is not allowed (export with POST /v1/sql as CSV or Arrow, or a query)".into(),
                ));
            }
            S::Truncate(_) | S::Merge(_) | S::Grant(_) | S::Revoke(_) => {
                let verb = statement.to_string().split_whitespace().next().unwrap_or("").to_ascii_uppercase();
                return Err(QueryError::ReadOnly(format!("{verb} is not allowed")));
            }
            S::Deallocate { .. } => Command::Deallocate,
            S::Close { .. } => Command::Close,
            other => Command::Query(Box::new(other)),
        })
    }

    /// The statement's name as a command tag (`BEGIN`, `SET`, ...), for errors and replies.
    pub(crate) fn tag(&self) -> &'static str {
        match self {
            Command::Query(_) => "SELECT",
            Command::Begin(_) => "BEGIN",
            Command::SetTransaction { .. } | Command::Set { .. } => "SET",
            Command::Commit => "COMMIT",
            Command::Rollback | Command::RollbackToSavepoint => "ROLLBACK",
            Command::Savepoint(tag) => tag,
            Command::Reset(_) => "RESET",
            Command::Show(_) => "SHOW",
            Command::Discard => "DISCARD ALL",
            Command::Deallocate => "DEALLOCATE",
            Command::Close => "CLOSE CURSOR",
        }
    }
}

/// How a setting may be changed.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// Reported, never changed.
    Fixed,
    /// Any text.
    Any,
    /// One of these words (case-insensitive); the first is how it is shown.
    OneOf(&'static [&'static str]),
    /// An integer in this range.
    Integer(i64, i64),
    /// A duration: milliseconds, or a number with a unit (`5s`, `100ms`, `1min`).
    Duration,
    /// An isolation level.
    Isolation,
    /// `on` only: weir's SQL is read-only.
    ReadOnly,
}

/// A setting clients can `SHOW`, and may `SET` as its rule allows.
struct Setting {
    name: &'static str,
    default: &'static str,
    rule: Rule,
    description: &'static str,
}

/// The version weir reports to clients: the Postgres protocol and catalog it speaks.
pub(crate) const SERVER_VERSION: &str = "16.6";

const SETTINGS: &[Setting] = &[
    Setting { name: "application_name", default: "", rule: Rule::Any, description: "Name of the client application" },
    Setting {
        name: "bytea_output",
        default: "hex",
        rule: Rule::OneOf(&["hex"]),
        description: "Output format of bytea values",
    },
    Setting {
        name: "client_encoding",
        default: "UTF8",
        rule: Rule::OneOf(&["UTF8", "UTF-8", "UNICODE"]),
        description: "Client character set (UTF8 only)",
    },
    Setting {
        name: "client_min_messages",
        default: "notice",
        rule: Rule::OneOf(&["notice", "debug5", "debug4", "debug3", "debug2", "debug1", "log", "warning", "error"]),
        description: "Lowest message level sent to the client",
    },
    Setting {
        name: "DateStyle",
        default: "ISO, MDY",
        rule: Rule::OneOf(&["ISO, MDY", "ISO", "ISO, DMY", "ISO, YMD", "MDY, ISO", "DMY, ISO", "YMD, ISO"]),
        description: "Display format of dates (ISO only)",
    },
    Setting {
        name: "default_transaction_isolation",
        default: "read committed",
        rule: Rule::Isolation,
        description: "Isolation level of new transactions",
    },
    Setting {
        name: "default_transaction_read_only",
        default: "on",
        rule: Rule::ReadOnly,
        description: "weir's SQL is read-only",
    },
    Setting {
        name: "extra_float_digits",
        default: "1",
        rule: Rule::Integer(-15, 3),
        description: "Extra digits in floating-point text",
    },
    Setting {
        name: "idle_in_transaction_session_timeout",
        default: "0",
        rule: Rule::Duration,
        description: "Accepted; weir holds no locks",
    },
    Setting {
        name: "integer_datetimes",
        default: "on",
        rule: Rule::Fixed,
        description: "Timestamps are 64-bit integers",
    },
    Setting {
        name: "IntervalStyle",
        default: "postgres",
        rule: Rule::OneOf(&["postgres"]),
        description: "Display format of intervals",
    },
    Setting {
        name: "is_superuser",
        default: "off",
        rule: Rule::Fixed,
        description: "Whether the session user is a superuser",
    },
    Setting { name: "lock_timeout", default: "0", rule: Rule::Duration, description: "Accepted; weir holds no locks" },
    Setting { name: "max_identifier_length", default: "63", rule: Rule::Fixed, description: "Longest identifier" },
    Setting {
        name: "search_path",
        default: "\"$user\", public",
        rule: Rule::Any,
        description: "Accepted; unqualified names are looked up in public, which holds every table",
    },
    Setting { name: "server_encoding", default: "UTF8", rule: Rule::Fixed, description: "Server character set" },
    Setting {
        name: "server_version",
        default: SERVER_VERSION,
        rule: Rule::Fixed,
        description: "Postgres version weir's wire protocol and catalog follow",
    },
    Setting {
        name: "server_version_num",
        default: "160006",
        rule: Rule::Fixed,
        description: "server_version as a number",
    },
    Setting {
        name: "standard_conforming_strings",
        default: "on",
        rule: Rule::OneOf(&["on"]),
        description: "Backslashes in string literals are literal",
    },
    Setting {
        name: "statement_timeout",
        default: "0",
        rule: Rule::Duration,
        description: "Cancel statements running longer (0: the server's limit); capped by the server's limit",
    },
    Setting {
        name: "TimeZone",
        default: "UTC",
        rule: Rule::Any,
        description: "Accepted; timestamps are always answered in UTC, with their offset",
    },
    Setting {
        name: "transaction_isolation",
        default: "read committed",
        rule: Rule::Isolation,
        description: "Isolation level of the current transaction",
    },
    Setting {
        name: "transaction_read_only",
        default: "on",
        rule: Rule::ReadOnly,
        description: "weir's SQL is read-only",
    },
];

fn find(name: &str) -> Option<&'static Setting> {
    let name = match name.to_ascii_lowercase().as_str() {
        "transaction isolation level" => "transaction_isolation".to_string(),
        "time zone" => "timezone".to_string(),
        "names" => "client_encoding".to_string(),
        other => other.to_string(),
    };
    SETTINGS.iter().find(|s| s.name.eq_ignore_ascii_case(&name))
}

/// Milliseconds in a Postgres duration setting: a bare number is milliseconds.
fn parse_duration(value: &str) -> Option<u64> {
    let value = value.trim();
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// Check `value` against `setting`'s rule; the canonical value to store.
fn validate(setting: &Setting, value: &str) -> Result<String> {
    let invalid = || QueryError::Sql(format!("invalid value for parameter \"{}\": \"{value}\"", setting.name));
    match setting.rule {
        Rule::Fixed => Err(QueryError::Sql(format!("parameter \"{}\" cannot be changed", setting.name))),
        Rule::Any => Ok(value.to_string()),
        Rule::OneOf(allowed) => {
            let normal = |s: &str| s.to_ascii_lowercase().replace(' ', "");
            allowed.iter().find(|a| normal(a) == normal(value)).map(|_| allowed[0].to_string()).ok_or_else(invalid)
        }
        Rule::Integer(min, max) => match value.trim().parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n.to_string()),
            _ => Err(invalid()),
        },
        Rule::Duration => parse_duration(value).map(|ms| ms.to_string()).ok_or_else(invalid),
        Rule::Isolation => Isolation::parse(value).map(|i| i.name().to_string()).ok_or_else(invalid),
        Rule::ReadOnly => match value.to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" | "1" => Ok("on".into()),
            _ => Err(QueryError::ReadOnly(format!("parameter \"{}\" must stay on", setting.name))),
        },
    }
}

/// What a session statement answers.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Done; the command tag.
    Done(&'static str),
    /// A transaction began.
    Began,
    /// The transaction ended; the command tag.
    Ended(&'static str),
    /// Rows (`SHOW`).
    Rows(Answer),
}

/// The open transaction of a session.
#[derive(Debug)]
struct Transaction {
    isolation: Isolation,
    /// A statement failed: the rest are refused until `ROLLBACK` (or `ROLLBACK TO SAVEPOINT`).
    failed: bool,
    /// The snapshot every statement reads under `REPEATABLE READ`, taken by the first one.
    pinned: Option<Tables>,
}

/// One client's session: its settings and open transaction.
#[derive(Debug, Default)]
pub(crate) struct Session {
    settings: BTreeMap<&'static str, String>,
    /// `SET` of a dotted name (`myapp.user_id`): Postgres keeps these as placeholders.
    custom: BTreeMap<String, String>,
    transaction: Option<Transaction>,
}

impl Session {
    fn get(&self, setting: &'static Setting) -> String {
        if setting.name == "transaction_isolation"
            && let Some(t) = &self.transaction
        {
            return t.isolation.name().to_string();
        }
        self.settings.get(setting.name).cloned().unwrap_or_else(|| setting.default.to_string())
    }

    fn default_isolation(&self) -> Isolation {
        find("default_transaction_isolation")
            .and_then(|s| Isolation::parse(&self.get(s)))
            .unwrap_or(Isolation::ReadCommitted)
    }

    /// Whether a transaction block is open.
    #[cfg(test)]
    fn in_transaction(&self) -> bool {
        self.transaction.is_some()
    }

    /// Whether the open transaction has failed: only `COMMIT`, `ROLLBACK` and `ROLLBACK TO
    /// SAVEPOINT` are accepted until it ends (Postgres's `25P02`).
    pub(crate) fn failed(&self) -> bool {
        self.transaction.as_ref().is_some_and(|t| t.failed)
    }

    /// A statement failed; inside a transaction block, the transaction fails with it.
    pub(crate) fn fail(&mut self) {
        if let Some(t) = &mut self.transaction {
            t.failed = true;
        }
    }

    /// The tables the next statement reads: the published ones, or the snapshot the transaction
    /// pinned.
    pub(crate) fn tables(&mut self, current: impl FnOnce() -> Tables) -> Tables {
        match &mut self.transaction {
            Some(Transaction { isolation: Isolation::RepeatableRead, pinned, .. }) => {
                pinned.get_or_insert_with(current).clone()
            }
            _ => current(),
        }
    }

    /// The session's `statement_timeout` under the server's `limit`.
    pub(crate) fn timeout(&self, limit: Duration) -> Duration {
        let ms = find("statement_timeout").and_then(|s| self.get(s).parse::<u64>().ok()).unwrap_or(0);
        if ms == 0 { limit } else { limit.min(Duration::from_millis(ms)) }
    }

    /// Apply a session statement (anything but [`Command::Query`]).
    pub(crate) fn apply(&mut self, command: &Command) -> Result<Reply> {
        match command {
            Command::Query(_) => Err(QueryError::Sql("a query is not a session statement".into())),
            Command::Begin(modes) => {
                modes.check()?;
                if self.transaction.is_none() {
                    let isolation = modes.isolation.unwrap_or_else(|| self.default_isolation());
                    self.transaction = Some(Transaction { isolation, failed: false, pinned: None });
                }
                Ok(Reply::Began)
            }
            Command::SetTransaction { modes, session } => {
                modes.check()?;
                if let Some(isolation) = modes.isolation {
                    if *session {
                        self.settings.insert("default_transaction_isolation", isolation.name().into());
                    } else if let Some(t) = &mut self.transaction {
                        if t.pinned.is_some() && t.isolation != isolation {
                            return Err(QueryError::Sql(
                                "SET TRANSACTION ISOLATION LEVEL must be called before any query".into(),
                            ));
                        }
                        t.isolation = isolation;
                    }
                }
                Ok(Reply::Done("SET"))
            }
            Command::Commit => {
                // Committing a failed transaction rolls it back, as Postgres does.
                let tag = if self.failed() { "ROLLBACK" } else { "COMMIT" };
                self.transaction = None;
                Ok(Reply::Ended(tag))
            }
            Command::Savepoint(_) | Command::RollbackToSavepoint if self.transaction.is_none() => {
                Err(QueryError::Sql(format!("{} can only be used in transaction blocks", command.tag())))
            }
            Command::Savepoint(tag) => Ok(Reply::Done(tag)),
            Command::RollbackToSavepoint => {
                if let Some(t) = &mut self.transaction {
                    t.failed = false;
                }
                Ok(Reply::Done("ROLLBACK"))
            }
            Command::Rollback => {
                self.transaction = None;
                Ok(Reply::Ended("ROLLBACK"))
            }
            Command::Set { name, value } => {
                self.set(name, value.as_deref())?;
                Ok(Reply::Done("SET"))
            }
            Command::Reset(None) | Command::Discard => {
                self.settings.clear();
                self.custom.clear();
                if matches!(command, Command::Discard) {
                    self.transaction = None;
                    return Ok(Reply::Done("DISCARD ALL"));
                }
                Ok(Reply::Done("RESET"))
            }
            Command::Reset(Some(name)) => {
                self.set(name, None)?;
                Ok(Reply::Done("RESET"))
            }
            Command::Show(name) => self.show(name).map(Reply::Rows),
            Command::Deallocate => Ok(Reply::Done("DEALLOCATE")),
            Command::Close => Ok(Reply::Done("CLOSE CURSOR")),
        }
    }

    fn set(&mut self, name: &str, value: Option<&str>) -> Result<()> {
        let Some(setting) = find(name) else {
            let lower = name.to_ascii_lowercase();
            if lower.starts_with("datafusion.") {
                return Err(QueryError::ReadOnly(format!(
                    "parameter \"{name}\" is the server's, fixed by its configuration"
                )));
            }
            if lower.contains('.') {
                match value {
                    Some(v) => self.custom.insert(lower, v.to_string()),
                    None => self.custom.remove(&lower),
                };
                return Ok(());
            }
            return Err(QueryError::UnknownSetting(name.to_string()));
        };
        match value {
            None => {
                if matches!(setting.rule, Rule::Fixed) {
                    return Err(QueryError::Sql(format!("parameter \"{}\" cannot be changed", setting.name)));
                }
                self.settings.remove(setting.name);
            }
            Some(value) => {
                let value = validate(setting, value)?;
                if setting.name == "transaction_isolation" {
                    let isolation = Isolation::parse(&value).unwrap_or(Isolation::ReadCommitted);
                    return self
                        .apply(&Command::SetTransaction {
                            modes: TransactionModes { isolation: Some(isolation), read_write: false },
                            session: false,
                        })
                        .map(|_| ());
                }
                self.settings.insert(setting.name, value);
            }
        }
        Ok(())
    }

    /// The rows `SHOW name` answers.
    pub(crate) fn show(&self, name: &str) -> Result<Answer> {
        if name.eq_ignore_ascii_case("all") {
            let names: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
            let values: Vec<String> = SETTINGS.iter().map(|s| self.get(s)).collect();
            let descriptions: Vec<&str> = SETTINGS.iter().map(|s| s.description).collect();
            return answer(&[
                ("name", Arc::new(StringArray::from(names))),
                ("setting", Arc::new(StringArray::from(values))),
                ("description", Arc::new(StringArray::from(descriptions))),
            ]);
        }
        let value = match find(name) {
            Some(setting) => self.get(setting),
            None => self
                .custom
                .get(&name.to_ascii_lowercase())
                .cloned()
                .ok_or_else(|| QueryError::UnknownSetting(name.to_string()))?,
        };
        let column = find(name).map_or_else(|| name.to_ascii_lowercase(), |s| s.name.to_ascii_lowercase());
        answer(&[(column.as_str(), Arc::new(StringArray::from(vec![value])))])
    }
}

fn answer(columns: &[(&str, ArrayRef)]) -> Result<Answer> {
    let schema =
        Arc::new(Schema::new(columns.iter().map(|(n, _)| Field::new(*n, DataType::Utf8, false)).collect::<Vec<_>>()));
    let batch = RecordBatch::try_new(schema.clone(), columns.iter().map(|(_, a)| a.clone()).collect())
        .map_err(|e| QueryError::Encode(e.to_string()))?;
    Ok(Answer { schema, batches: vec![batch] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readmodel::ReadModelSnapshot;

    fn command(sql: &str) -> Command {
        let mut statements = datafusion::sql::sqlparser::parser::Parser::parse_sql(
            &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
            sql,
        )
        .unwrap();
        Command::classify(statements.remove(0)).unwrap()
    }

    fn shown(session: &Session, name: &str) -> String {
        let answer = session.show(name).unwrap();
        answer.batches[0].column(0).as_any().downcast_ref::<StringArray>().unwrap().value(0).to_string()
    }

    #[test]
    fn settings_clients_send_are_accepted_and_shown() {
        let mut session = Session::default();
        for sql in [
            "SET application_name = 'PostgreSQL JDBC Driver'",
            "SET extra_float_digits = 3",
            "SET DateStyle = 'ISO'",
            "SET client_encoding TO 'utf8'",
            "SET search_path TO public, orders",
            "SET TIME ZONE 'Europe/Berlin'",
            "SET statement_timeout = '2s'",
            "SET myapp.user = 'x'",
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
        ] {
            session.apply(&command(sql)).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        assert_eq!(shown(&session, "application_name"), "PostgreSQL JDBC Driver");
        assert_eq!(shown(&session, "extra_float_digits"), "3");
        assert_eq!(shown(&session, "datestyle"), "ISO, MDY");
        assert_eq!(shown(&session, "client_encoding"), "UTF8");
        assert_eq!(shown(&session, "TimeZone"), "Europe/Berlin");
        assert_eq!(shown(&session, "statement_timeout"), "2000");
        assert_eq!(shown(&session, "myapp.user"), "x");
        assert_eq!(shown(&session, "server_version"), SERVER_VERSION);
        assert_eq!(session.timeout(Duration::from_secs(10)), Duration::from_secs(2));
        assert_eq!(session.timeout(Duration::from_secs(1)), Duration::from_secs(1));
        session.apply(&command("RESET ALL")).unwrap();
        assert_eq!(shown(&session, "application_name"), "");
        assert_eq!(session.timeout(Duration::from_secs(10)), Duration::from_secs(10));
    }

    #[test]
    fn settings_that_would_allow_writes_or_do_not_exist_are_refused() {
        let mut session = Session::default();
        for (sql, read_only) in [
            ("SET default_transaction_read_only = off", true),
            ("SET transaction_read_only TO false", true),
            ("BEGIN READ WRITE", true),
            ("SET server_version = '17'", false),
            ("SET client_encoding = 'LATIN1'", false),
            ("SET no_such_setting = 1", false),
            ("SET datafusion.execution.batch_size = 1", true),
            ("SET extra_float_digits = 9", false),
        ] {
            let err = session.apply(&command(sql)).unwrap_err();
            assert_eq!(matches!(err, QueryError::ReadOnly(_)), read_only, "{sql}: {err}");
        }
        assert!(!session.in_transaction());
    }

    #[test]
    fn repeatable_read_pins_the_first_snapshot_and_read_committed_does_not() {
        let model = |i: usize| {
            let plugin = i.to_string();
            (
                plugin.clone(),
                Arc::new(ReadModelSnapshot { plugin, tables: vec![], positions: Default::default(), taken_ms: 0 }),
            )
        };
        let snapshot = |n: usize| -> Tables { Arc::new((0..n).map(model).collect()) };
        let mut session = Session::default();
        session.apply(&command("BEGIN ISOLATION LEVEL REPEATABLE READ")).unwrap();
        assert_eq!(shown(&session, "transaction isolation level"), "repeatable read");
        assert_eq!(session.tables(|| snapshot(1)).len(), 1);
        assert_eq!(session.tables(|| snapshot(2)).len(), 1);
        session.apply(&command("COMMIT")).unwrap();
        assert_eq!(session.tables(|| snapshot(2)).len(), 2);
        session.apply(&command("BEGIN")).unwrap();
        assert_eq!(session.tables(|| snapshot(1)).len(), 1);
        assert_eq!(session.tables(|| snapshot(3)).len(), 3);
        session.apply(&command("ROLLBACK")).unwrap();
        assert!(!session.in_transaction());
    }
}
