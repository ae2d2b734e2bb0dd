//! The writer's connection, [`Conn`], which every write closure is handed.
//!
//! On PostgreSQL it is sqlx's `AnyConnection`. On SQLite it is a rusqlite
//! connection driven on the writer's own thread: sqlx runs each SQLite
//! statement on a worker thread of its own and hands the result back, so every
//! statement cost two thread wake-ups (about 20 µs on an idle machine, much
//! more on a busy one), and the single writer spent most of its time in them.
//! Here a statement is a direct call into SQLite (about 1 µs for a cached
//! insert), and the writer blocks on nothing but the commit's fsync.
//!
//! Either way `&mut Conn` is a sqlx [`Executor`] for the `Any` database, so
//! write code is written once with `sqlx::query(…).bind(…)` for both backends
//! and reads rows as `AnyRow`, exactly as readers on the pool do. On SQLite the
//! values are mapped as sqlx maps them: by each value's storage class
//! (INTEGER → `BigInt`, REAL → `Double`, TEXT, BLOB, NULL), and `$n`
//! parameters are bound by number, bare `?` in order.
//!
//! The rows and arguments are built from sqlx-core's `Any` types, whose fields
//! sqlx marks as semver-exempt: the versions are pinned by the lock file, and
//! the store's tests read and write every column type both ways.

use std::borrow::Cow;
use std::sync::Arc;

use futures::future::{self, BoxFuture};
use futures::stream::{self, BoxStream, StreamExt};
use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::types::{Value as LiteValue, ValueRef};
use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow, AnyTypeInfo, AnyTypeInfoKind};
use sqlx::{Any, AnyConnection, Either, Execute, Executor};
use sqlx_core::any::{AnyColumn, AnyStatement, AnyValue, AnyValueKind};
use sqlx_core::error::{DatabaseError, ErrorKind};
use sqlx_core::ext::ustr::UStr;
use sqlx_core::sql_str::SqlStr;

/// Prepared statements the SQLite writer keeps (each write statement is one).
const STATEMENT_CACHE: usize = 512;

/// The connection a write runs on.
pub enum Conn {
    /// SQLite, on the writer's thread.
    Lite(rusqlite::Connection),
    /// PostgreSQL.
    Any(AnyConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conn::Lite(_) => f.write_str("Conn::Lite"),
            Conn::Any(_) => f.write_str("Conn::Any"),
        }
    }
}

impl Conn {
    /// Opens the SQLite database file at `path` for writing and sets `pragmas`.
    pub(crate) fn open_sqlite(path: &std::path::Path, pragmas: &str) -> Result<Conn, sqlx::Error> {
        let db = open_lite(path, pragmas).map_err(lite_error)?;
        db.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(Conn::Lite(db))
    }

    /// The backend this connection talks to.
    pub fn backend(&self) -> crate::Backend {
        match self {
            Conn::Lite(_) => crate::Backend::Sqlite,
            Conn::Any(_) => crate::Backend::Postgres,
        }
    }

    /// Closes the connection.
    pub(crate) async fn close(self) -> Result<(), sqlx::Error> {
        match self {
            Conn::Lite(db) => db.close().map_err(|(_, e)| lite_error(e)),
            Conn::Any(c) => sqlx::Connection::close(c).await,
        }
    }
}

type Item = Either<AnyQueryResult, AnyRow>;

impl<'c> Executor<'c> for &'c mut Conn {
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Item, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        match self {
            Conn::Any(c) => c.fetch_many(query),
            Conn::Lite(db) => match run_query(db, query) {
                Ok(items) => stream::iter(items.into_iter().map(Ok)).boxed(),
                Err(e) => stream::once(future::ready(Err(e))).boxed(),
            },
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        match self {
            Conn::Any(c) => c.fetch_optional(query),
            Conn::Lite(db) => {
                let row = run_query(db, query).map(|items| {
                    items.into_iter().find_map(|i| match i {
                        Either::Right(row) => Some(row),
                        Either::Left(_) => None,
                    })
                });
                Box::pin(future::ready(row))
            }
        }
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [AnyTypeInfo],
    ) -> BoxFuture<'e, Result<AnyStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        match self {
            Conn::Any(c) => c.prepare_with(sql, parameters),
            Conn::Lite(_) => Box::pin(future::ready(Err(unsupported("prepared statements")))),
        }
    }
}

fn unsupported(what: &str) -> sqlx::Error {
    sqlx::Error::Protocol(format!("the SQLite writer's connection does not support {what}"))
}

/// Runs a sqlx query (its text and bound arguments) on SQLite.
fn run_query<'q>(
    db: &rusqlite::Connection,
    mut query: impl Execute<'q, Any>,
) -> Result<Vec<Item>, sqlx::Error> {
    let args = query.take_arguments().map_err(sqlx::Error::Encode)?;
    run(db, query.sql().as_str(), args)
}

/// Runs `sql` on SQLite: one statement with `args`, or, without arguments (raw
/// SQL), every statement in it. Single statements are prepared once and cached.
fn run(db: &rusqlite::Connection, sql: &str, args: Option<AnyArguments>) -> Result<Vec<Item>, sqlx::Error> {
    let mut out = Vec::new();
    match args {
        Some(args) => {
            let mut st = db.prepare_cached(sql).map_err(lite_error)?;
            bind(&mut st, args)?;
            step(db, &mut st, &mut out)?;
        }
        None => match db.prepare_cached(sql) {
            Ok(mut st) => step(db, &mut st, &mut out)?,
            Err(rusqlite::Error::MultipleStatement) => {
                let mut batch = rusqlite::Batch::new(db, sql);
                while let Some(mut st) = batch.next().map_err(lite_error)? {
                    step(db, &mut st, &mut out)?;
                }
            }
            Err(e) => return Err(lite_error(e)),
        },
    }
    Ok(out)
}

/// Binds `args`: a `$n` or `?n` parameter takes the n-th value, a bare `?` the next.
fn bind(st: &mut rusqlite::Statement<'_>, args: AnyArguments) -> Result<(), sqlx::Error> {
    let values = args.values.0;
    let count = st.parameter_count();
    let mut next = 0;
    let mut used = 0;
    for i in 1..=count {
        let n = match st.parameter_name(i) {
            None => {
                next += 1;
                next
            }
            Some(name) => name[1..].parse::<usize>().map_err(|_| {
                sqlx::Error::Protocol(format!(
                    "parameter '{name}' is neither $n nor ?: name it by number"
                ))
            })?,
        };
        let value = values.get(n.wrapping_sub(1)).ok_or_else(|| {
            sqlx::Error::Protocol(format!(
                "the statement has {count} parameters but {} values were bound",
                values.len()
            ))
        })?;
        used = used.max(n);
        st.raw_bind_parameter(i, lite_value(value)?).map_err(lite_error)?;
    }
    if used != values.len() {
        return Err(sqlx::Error::Protocol(format!(
            "{} values were bound but the statement uses {used}",
            values.len()
        )));
    }
    Ok(())
}

fn lite_value(v: &AnyValueKind) -> Result<LiteValue, sqlx::Error> {
    Ok(match v {
        AnyValueKind::Null(_) => LiteValue::Null,
        AnyValueKind::Bool(b) => LiteValue::Integer(i64::from(*b)),
        AnyValueKind::SmallInt(i) => LiteValue::Integer(i64::from(*i)),
        AnyValueKind::Integer(i) => LiteValue::Integer(i64::from(*i)),
        AnyValueKind::BigInt(i) => LiteValue::Integer(*i),
        AnyValueKind::Real(r) => LiteValue::Real(f64::from(*r)),
        AnyValueKind::Double(d) => LiteValue::Real(*d),
        AnyValueKind::Text(t) => LiteValue::Text(t.as_str().to_string()),
        AnyValueKind::TextSlice(t) => LiteValue::Text(t.to_string()),
        AnyValueKind::Blob(b) => LiteValue::Blob(b.as_slice().to_vec()),
        other => return Err(sqlx::Error::Protocol(format!("cannot bind {other:?} on SQLite"))),
    })
}

/// Steps one statement to its end, collecting its rows and then its result.
fn step(
    db: &rusqlite::Connection,
    st: &mut rusqlite::Statement<'_>,
    out: &mut Vec<Item>,
) -> Result<(), sqlx::Error> {
    let columns = st.column_count();
    let labels: Vec<UStr> = st.column_names().into_iter().map(UStr::new).collect();
    let names: Arc<sqlx_core::HashMap<UStr, usize>> =
        Arc::new(labels.iter().cloned().enumerate().map(|(i, n)| (n, i)).collect());
    let changes = !st.readonly();
    let mut rows = st.raw_query();
    while let Some(row) = rows.next().map_err(lite_error)? {
        let mut values = Vec::with_capacity(columns);
        let mut cols = Vec::with_capacity(columns);
        for (i, label) in labels.iter().enumerate() {
            let kind = match row.get_ref(i).map_err(lite_error)? {
                ValueRef::Null => AnyValueKind::Null(AnyTypeInfoKind::Null),
                ValueRef::Integer(n) => AnyValueKind::BigInt(n),
                ValueRef::Real(r) => AnyValueKind::Double(r),
                ValueRef::Text(t) => AnyValueKind::Text(Arc::new(
                    String::from_utf8(t.to_vec()).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                )),
                ValueRef::Blob(b) => AnyValueKind::Blob(Arc::new(b.to_vec())),
            };
            let type_info = AnyTypeInfo {
                kind: match &kind {
                    AnyValueKind::BigInt(_) => AnyTypeInfoKind::BigInt,
                    AnyValueKind::Double(_) => AnyTypeInfoKind::Double,
                    AnyValueKind::Text(_) => AnyTypeInfoKind::Text,
                    AnyValueKind::Blob(_) => AnyTypeInfoKind::Blob,
                    _ => AnyTypeInfoKind::Null,
                },
            };
            cols.push(AnyColumn {
                ordinal: i,
                name: label.clone(),
                type_info,
            });
            values.push(AnyValue { kind });
        }
        out.push(Either::Right(AnyRow {
            column_names: names.clone(),
            columns: cols,
            values,
        }));
    }
    drop(rows);
    out.push(Either::Left(AnyQueryResult {
        rows_affected: if changes { db.changes() } else { 0 },
        last_insert_id: None,
    }));
    Ok(())
}

/// A SQLite error as sqlx reports one, so `is_unique_violation` and the
/// rest work the same on both connections.
#[derive(Debug)]
struct LiteError {
    message: String,
    code: Option<i32>,
}

impl std::fmt::Display for LiteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for LiteError {}

impl DatabaseError for LiteError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        self.code.map(|c| Cow::Owned(c.to_string()))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        use rusqlite::ffi;
        match self.code {
            Some(ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                ErrorKind::UniqueViolation
            }
            Some(ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => ErrorKind::ForeignKeyViolation,
            Some(ffi::SQLITE_CONSTRAINT_NOTNULL) => ErrorKind::NotNullViolation,
            Some(ffi::SQLITE_CONSTRAINT_CHECK) => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

/// Opens the existing SQLite database file at `path` for reading and writing,
/// for one thread's use, and sets `pragmas`.
pub(crate) fn open_lite(path: &std::path::Path, pragmas: &str) -> rusqlite::Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let db = rusqlite::Connection::open_with_flags(path, flags)?;
    db.execute_batch(pragmas)?;
    Ok(db)
}

fn lite_error(e: rusqlite::Error) -> sqlx::Error {
    match e {
        rusqlite::Error::SqliteFailure(f, msg) => sqlx::Error::Database(Box::new(LiteError {
            message: msg.unwrap_or_else(|| f.to_string()),
            code: Some(f.extended_code),
        })),
        other => sqlx::Error::Database(Box::new(LiteError {
            message: other.to_string(),
            code: None,
        })),
    }
}
