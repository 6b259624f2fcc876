//! The billing database, through Spin's SQLite interface (label `default`).
//!
//! Every connection turns foreign keys on. [`Db::transaction`] wraps work in
//! `BEGIN IMMEDIATE … COMMIT` (rolled back on any error), which Spin allows
//! because one `open` is one connection.

use crate::problem::{ApiError, ApiResult};
use spin_sdk::sqlite::{Connection, QueryResult};

pub use spin_sdk::sqlite::Value;

pub struct Db {
    conn: Connection,
}

impl Db {
    pub const LABEL: &'static str = "default";

    pub fn open() -> ApiResult<Self> {
        let conn = Connection::open(Self::LABEL)
            .map_err(|e| ApiError::Internal(format!("cannot open the database: {e:?}")))?;
        let db = Self { conn };
        db.exec("PRAGMA foreign_keys = ON", &[])?;
        Ok(db)
    }

    pub fn query(&self, sql: &str, params: &[Value]) -> ApiResult<QueryResult> {
        self.conn
            .execute(sql, params)
            .map_err(|e| ApiError::Internal(format!("database error: {e:?}")))
    }

    pub fn exec(&self, sql: &str, params: &[Value]) -> ApiResult<()> {
        self.query(sql, params).map(|_| ())
    }

    /// The first column of the first row, if any.
    pub fn scalar_i64(&self, sql: &str, params: &[Value]) -> ApiResult<Option<i64>> {
        Ok(self
            .query(sql, params)?
            .rows
            .first()
            .and_then(|r| r.get::<i64>(0)))
    }

    /// Runs `f` in one IMMEDIATE transaction: all of it commits, or none.
    pub fn transaction<T>(&self, f: impl FnOnce(&Db) -> ApiResult<T>) -> ApiResult<T> {
        self.exec("BEGIN IMMEDIATE", &[])?;
        match f(self) {
            Ok(v) => {
                if let Err(e) = self.exec("COMMIT", &[]) {
                    let _ = self.exec("ROLLBACK", &[]);
                    return Err(e);
                }
                Ok(v)
            }
            Err(e) => {
                let _ = self.exec("ROLLBACK", &[]);
                Err(e)
            }
        }
    }
}

pub fn int(i: i64) -> Value {
    Value::Integer(i)
}

pub fn text(s: impl Into<String>) -> Value {
    Value::Text(s.into())
}

pub fn opt_text(s: Option<impl Into<String>>) -> Value {
    s.map_or(Value::Null, |s| Value::Text(s.into()))
}

pub fn opt_int(i: Option<i64>) -> Value {
    i.map_or(Value::Null, Value::Integer)
}

/// A column of a row by name, for results read with `QueryResult::rows()`.
pub fn col<'a, T: TryFrom<&'a Value>>(row: &spin_sdk::sqlite::Row<'a>, name: &str) -> ApiResult<T> {
    row.get::<T>(name).ok_or_else(|| {
        ApiError::Internal(format!("column `{name}` missing or of an unexpected type"))
    })
}

/// A nullable column.
pub fn col_opt<'a, T: TryFrom<&'a Value>>(
    row: &spin_sdk::sqlite::Row<'a>,
    name: &str,
) -> Option<T> {
    row.get::<T>(name)
}

/// A WHERE clause built from optional filters, with numbered parameters.
#[derive(Default)]
pub struct Filter {
    clauses: Vec<String>,
    pub params: Vec<Value>,
}

impl Filter {
    /// Adds `clause`, whose one `?` is bound to `value`.
    pub fn bind(&mut self, clause: &str, value: Value) {
        self.params.push(value);
        self.clauses
            .push(clause.replace('?', &format!("?{}", self.params.len())));
    }

    /// Adds a clause without parameters.
    pub fn raw(&mut self, clause: &str) {
        self.clauses.push(clause.to_owned());
    }

    /// ` WHERE a AND b`, or nothing.
    pub fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }

    /// The parameters followed by LIMIT and OFFSET, with their placeholders.
    pub fn paged(mut self, limit: i64, offset: i64) -> (String, Vec<Value>) {
        let n = self.params.len();
        self.params.push(Value::Integer(limit));
        self.params.push(Value::Integer(offset));
        (format!(" LIMIT ?{} OFFSET ?{}", n + 1, n + 2), self.params)
    }
}
