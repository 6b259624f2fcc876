//! `billing-migrations`: the SQLite schema of LLM chat billing and the one
//! runner that applies it, used by the host, the bridge and the
//! `billing-migrate` command.
//!
//! Migrations are the numbered files `NNNN_name.sql` in this directory,
//! embedded at build time ([`embedded`]) or read from a directory
//! ([`from_dir`]). [`migrate`] applies the pending ones in order, each in its
//! own transaction, records each with a SHA-256 checksum in
//! `schema_migrations`, refuses to go on when an applied file has changed or
//! is unknown to this build, turns on WAL, and checks foreign keys.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One numbered SQL file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: u32,
    /// The file name, e.g. `0001_schema.sql`.
    pub file: String,
    pub sql: String,
}

impl Migration {
    /// Parses `NNNN_name.sql` into a migration.
    pub fn new(file: &str, sql: impl Into<String>) -> Result<Self, MigrateError> {
        let bad = || MigrateError::BadFileName {
            file: file.to_owned(),
        };
        let stem = file.strip_suffix(".sql").ok_or_else(bad)?;
        let (num, name) = stem.split_once('_').ok_or_else(bad)?;
        if num.len() != 4 || !num.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            version: num.parse().map_err(|_| bad())?,
            file: file.to_owned(),
            sql: sql.into(),
        })
    }

    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration file name `{file}` is not of the form NNNN_name.sql")]
    BadFileName { file: String },
    #[error("two migration files have number {version}: {first} and {second}")]
    DuplicateVersion {
        version: u32,
        first: String,
        second: String,
    },
    #[error("migration {file} was changed after it was applied (applied checksum {applied}, file checksum {current}); add a new migration instead of editing an applied one")]
    Tampered {
        file: String,
        applied: String,
        current: String,
    },
    #[error("the database has migration {version} ({file}) applied, which this build does not know; it was migrated by a newer version")]
    UnknownApplied { version: u32, file: String },
    #[error("migration {file} failed: {source}")]
    Failed {
        file: String,
        source: rusqlite::Error,
    },
    #[error("foreign key check failed after migrating: {0}")]
    ForeignKeys(String),
    #[error("reading migrations from {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Files applied by this run, in order.
    pub applied: Vec<String>,
    /// Files that were already applied.
    pub already: Vec<String>,
}

const EMBEDDED: &[(&str, &str)] = &[
    ("0001_schema.sql", include_str!("../0001_schema.sql")),
    ("0002_seed.sql", include_str!("../0002_seed.sql")),
    (
        "0003_event_facts.sql",
        include_str!("../0003_event_facts.sql"),
    ),
    (
        "0004_idempotent_turns.sql",
        include_str!("../0004_idempotent_turns.sql"),
    ),
    (
        "0005_drafts_by_reference.sql",
        include_str!("../0005_drafts_by_reference.sql"),
    ),
    (
        "0006_outbox_without_unique.sql",
        include_str!("../0006_outbox_without_unique.sql"),
    ),
    (
        "0007_unused_line_item_indexes.sql",
        include_str!("../0007_unused_line_item_indexes.sql"),
    ),
    (
        "0008_price_rules_and_catalogue.sql",
        include_str!("../0008_price_rules_and_catalogue.sql"),
    ),
    (
        "0009_customer_scoped_identity.sql",
        include_str!("../0009_customer_scoped_identity.sql"),
    ),
    (
        "0010_idempotency_claims.sql",
        include_str!("../0010_idempotency_claims.sql"),
    ),
    (
        "0011_retired_aliases.sql",
        include_str!("../0011_retired_aliases.sql"),
    ),
    (
        "0012_gateway_calls.sql",
        include_str!("../0012_gateway_calls.sql"),
    ),
    (
        "0013_open_gateway_calls.sql",
        include_str!("../0013_open_gateway_calls.sql"),
    ),
    (
        "0014_line_item_class_check.sql",
        include_str!("../0014_line_item_class_check.sql"),
    ),
    (
        "0015_unused_api_events_index.sql",
        include_str!("../0015_unused_api_events_index.sql"),
    ),
];

/// The migrations compiled into this build.
pub fn embedded() -> Vec<Migration> {
    let list: Vec<Migration> = EMBEDDED
        .iter()
        .map(|(f, sql)| Migration::new(f, *sql).expect("embedded names are valid"))
        .collect();
    check_sequence(&list).expect("embedded migrations are in order");
    list
}

/// The directory holding the SQL files (this crate's directory).
pub fn source_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Reads every `*.sql` file of `dir`, sorted by number.
pub fn from_dir(dir: &Path) -> Result<Vec<Migration>, MigrateError> {
    let io = |source| MigrateError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut list = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "sql") {
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let sql = std::fs::read_to_string(&path).map_err(|source| MigrateError::Io {
                path: path.clone(),
                source,
            })?;
            list.push(Migration::new(&file, sql)?);
        }
    }
    list.sort_by_key(|m| m.version);
    check_sequence(&list)?;
    Ok(list)
}

fn check_sequence(list: &[Migration]) -> Result<(), MigrateError> {
    for w in list.windows(2) {
        if w[0].version == w[1].version {
            return Err(MigrateError::DuplicateVersion {
                version: w[0].version,
                first: w[0].file.clone(),
                second: w[1].file.clone(),
            });
        }
    }
    Ok(())
}

const BUSY_STEP: Duration = Duration::from_micros(500);
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// Opens (creating if needed) the database at `path` with the settings every
/// native process uses: WAL, foreign keys on, a busy wait of 10 s.
pub fn open(path: &Path) -> Result<Connection, MigrateError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| MigrateError::Io {
            path: dir.to_owned(),
            source,
        })?;
    }
    let conn = Connection::open(path)?;
    // Wait up to 10 s for another writer, in 0.5 ms steps: SQLite's own
    // handler (`busy_timeout`) sleeps up to 100 ms at a time, so writers
    // that take turns (the relay's deletes, the consumers' batches, the
    // components) would wait far longer than the lock is held.
    conn.busy_handler(Some(|attempt| {
        std::thread::sleep(BUSY_STEP);
        attempt < (BUSY_WAIT.as_micros() / BUSY_STEP.as_micros()) as i32
    }))?;
    // Every statement of the bridge's loops stays prepared.
    conn.set_prepared_statement_cache_capacity(64);
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

/// Applies the pending migrations of `list` to `conn`, in order.
///
/// Safe to run from several processes at once: each file is applied inside
/// an IMMEDIATE transaction that first re-checks whether another process
/// applied it meanwhile.
pub fn migrate(conn: &mut Connection, list: &[Migration]) -> Result<Report, MigrateError> {
    check_sequence(list)?;
    // WAL is a property of the file and cannot change inside a transaction.
    // Switching needs the file to itself, and SQLite answers BUSY at once
    // (without the busy handler) while another process holds it: retry.
    let mut tries = 0;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Ok(()) => break,
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && tries < 200 =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             file       TEXT    NOT NULL,
             checksum   TEXT    NOT NULL,
             applied_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
         )",
    )?;

    verify_applied(conn, list)?;

    let mut report = Report {
        applied: Vec::new(),
        already: Vec::new(),
    };
    for m in list {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let done: Option<String> = tx
            .query_row(
                "SELECT checksum FROM schema_migrations WHERE version = ?1",
                [m.version],
                |r| r.get(0),
            )
            .optional()?;
        match done {
            Some(sum) if sum == m.checksum() => report.already.push(m.file.clone()),
            Some(sum) => {
                return Err(MigrateError::Tampered {
                    file: m.file.clone(),
                    applied: sum,
                    current: m.checksum(),
                })
            }
            None => {
                tx.execute_batch(&m.sql)
                    .map_err(|source| MigrateError::Failed {
                        file: m.file.clone(),
                        source,
                    })?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, file, checksum) VALUES (?1, ?2, ?3)",
                    (m.version, &m.file, m.checksum()),
                )?;
                report.applied.push(m.file.clone());
            }
        }
        tx.commit()?;
    }

    let violations = foreign_key_violations(conn)?;
    if !violations.is_empty() {
        return Err(MigrateError::ForeignKeys(violations.join("; ")));
    }
    Ok(report)
}

/// Refuses a database whose applied files differ from `list`.
fn verify_applied(conn: &Connection, list: &[Migration]) -> Result<(), MigrateError> {
    let mut stmt =
        conn.prepare("SELECT version, file, checksum FROM schema_migrations ORDER BY version")?;
    let applied = stmt.query_map([], |r| {
        Ok((
            r.get::<_, u32>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    for row in applied {
        let (version, file, checksum) = row?;
        match list.iter().find(|m| m.version == version) {
            None => return Err(MigrateError::UnknownApplied { version, file }),
            Some(m) if m.checksum() != checksum => {
                return Err(MigrateError::Tampered {
                    file: m.file.clone(),
                    applied: checksum,
                    current: m.checksum(),
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// `PRAGMA foreign_key_check`, one line per violation.
pub fn foreign_key_violations(conn: &Connection) -> Result<Vec<String>, MigrateError> {
    let mut stmt = conn.prepare("PRAGMA foreign_key_check")?;
    let rows = stmt.query_map([], |r| {
        Ok(format!(
            "{} row {} references missing {}",
            r.get::<_, String>(0)?,
            r.get::<_, Option<i64>>(1)?.unwrap_or(-1),
            r.get::<_, String>(2)?
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The applied migrations: (version, file, applied_at).
pub fn status(conn: &Connection) -> Result<Vec<(u32, String, String)>, MigrateError> {
    let exists: bool = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(Vec::new());
    }
    let mut stmt =
        conn.prepare("SELECT version, file, applied_at FROM schema_migrations ORDER BY version")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Opens `path` and applies the embedded migrations: what a native process
/// calls at start-up.
pub fn open_and_migrate(path: &Path) -> Result<(Connection, Report), MigrateError> {
    let mut conn = open(path)?;
    let report = migrate(&mut conn, &embedded())?;
    Ok((conn, report))
}
