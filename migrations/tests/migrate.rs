//! The migration runner against real SQLite files.

use billing_migrations::{embedded, from_dir, migrate, open, source_dir, MigrateError, Migration};
use rusqlite::Connection;
use std::path::Path;

fn count(conn: &Connection, table: &str) -> i64 {
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

fn copy_sql(to: &Path) {
    for m in from_dir(source_dir()).unwrap() {
        std::fs::write(to.join(&m.file), &m.sql).unwrap();
    }
}

// Migrating an empty file applies everything and turns on WAL; the second run applies nothing and changes nothing.
#[test]
fn second_run_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nested/billing.db");
    let mut conn = open(&db).unwrap();
    let first = migrate(&mut conn, &embedded()).unwrap();
    assert_eq!(
        first.applied,
        [
            "0001_schema.sql",
            "0002_seed.sql",
            "0003_event_facts.sql",
            "0004_idempotent_turns.sql",
            "0005_drafts_by_reference.sql",
            "0006_outbox_without_unique.sql",
            "0007_unused_line_item_indexes.sql",
            "0008_price_rules_and_catalogue.sql",
            "0009_customer_scoped_identity.sql",
            "0010_idempotency_claims.sql",
            "0011_retired_aliases.sql",
            "0012_gateway_calls.sql",
            "0013_open_gateway_calls.sql",
            "0014_line_item_class_check.sql",
            "0015_unused_api_events_index.sql"
        ]
    );
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let users = count(&conn, "dim_users");
    let stamps: Vec<String> = conn
        .prepare("SELECT applied_at FROM schema_migrations")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    drop(conn);

    let mut conn = open(&db).unwrap();
    let second = migrate(&mut conn, &embedded()).unwrap();
    assert!(second.applied.is_empty());
    assert_eq!(second.already.len(), embedded().len());
    assert_eq!(count(&conn, "dim_users"), users);
    let again: Vec<String> = conn
        .prepare("SELECT applied_at FROM schema_migrations")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(stamps, again);
}

// An applied file that was edited afterwards is refused, and the error names the file.
#[test]
fn tampered_migration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_sql(dir.path());
    let mut conn = open(&dir.path().join("b.db")).unwrap();
    migrate(&mut conn, &from_dir(dir.path()).unwrap()).unwrap();

    let seed = dir.path().join("0002_seed.sql");
    let mut sql = std::fs::read_to_string(&seed).unwrap();
    sql.push_str("\nUPDATE dim_token_pricing SET input_price = 0;\n");
    std::fs::write(&seed, sql).unwrap();
    let err = migrate(&mut conn, &from_dir(dir.path()).unwrap()).unwrap_err();
    assert!(
        matches!(&err, MigrateError::Tampered { file, .. } if file == "0002_seed.sql"),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("0002_seed.sql was changed after it was applied"));
    let price: i64 = conn
        .query_row(
            "SELECT input_price FROM dim_token_pricing WHERE pricing_id = 3",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(price, 3_000_000, "nothing of the edited file ran");
}

// A database migrated by a newer build (a version this list lacks) is refused.
#[test]
fn unknown_applied_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open(&dir.path().join("b.db")).unwrap();
    migrate(&mut conn, &embedded()).unwrap();
    let older: Vec<Migration> = embedded().into_iter().take(1).collect();
    let err = migrate(&mut conn, &older).unwrap_err();
    assert!(
        matches!(err, MigrateError::UnknownApplied { version: 2, .. }),
        "{err}"
    );
}

// A failing file rolls back whole: no half-made tables, no record, and the error names the file.
#[test]
fn failed_migration_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open(&dir.path().join("b.db")).unwrap();
    let mut list = embedded();
    let shipped = list.len() as i64;
    let broken = format!("{:04}_broken.sql", shipped + 1);
    list.push(
        Migration::new(
            &broken,
            "CREATE TABLE half_made (x INTEGER); INSERT INTO nowhere VALUES (1);",
        )
        .unwrap(),
    );
    let err = migrate(&mut conn, &list).unwrap_err();
    assert!(
        matches!(&err, MigrateError::Failed { file, .. } if *file == broken),
        "{err}"
    );
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'half_made'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0);
    assert_eq!(count(&conn, "schema_migrations"), shipped);
}

// Bad file names and two files with one number are refused before anything runs.
#[test]
fn file_names_checked() {
    assert!(Migration::new("1_x.sql", "").is_err());
    assert!(Migration::new("0001.sql", "").is_err());
    assert!(Migration::new("0001_x.txt", "").is_err());
    let dir = tempfile::tempdir().unwrap();
    copy_sql(dir.path());
    std::fs::write(dir.path().join("0002_other.sql"), "SELECT 1;").unwrap();
    assert!(matches!(
        from_dir(dir.path()),
        Err(MigrateError::DuplicateVersion { version: 2, .. })
    ));
}

// The build embeds exactly the .sql files of the directory, byte for byte.
#[test]
fn embedded_matches_directory() {
    assert_eq!(embedded(), from_dir(source_dir()).unwrap());
}

// Two processes migrating one file at once apply each file exactly once.
#[test]
fn concurrent_migrations_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("b.db");
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let db = db.clone();
            std::thread::spawn(move || migrate(&mut open(&db).unwrap(), &embedded()).unwrap())
        })
        .collect();
    let applied: usize = handles
        .into_iter()
        .map(|h| h.join().unwrap().applied.len())
        .sum();
    assert_eq!(applied, embedded().len());
    let conn = open(&db).unwrap();
    assert_eq!(count(&conn, "dim_users"), 3);
}

// After seeding, foreign keys are consistent and the seed has what the product needs.
#[test]
fn seed_is_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open(&dir.path().join("b.db")).unwrap();
    migrate(&mut conn, &embedded()).unwrap();
    assert!(billing_migrations::foreign_key_violations(&conn)
        .unwrap()
        .is_empty());
    let families: Vec<String> = conn
        .prepare("SELECT DISTINCT family FROM dim_models ORDER BY family")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(families, ["fable", "haiku", "mythos", "opus", "sonnet"]);
    let unpriced: i64 = conn
        .query_row("SELECT count(*) FROM dim_models m WHERE NOT EXISTS (SELECT 1 FROM dim_token_pricing p WHERE p.model_id = m.model_id)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(unpriced, 0);
    assert_eq!(count(&conn, "dim_event_types"), 5);
    let roles: Vec<(String, i64)> = conn
        .prepare("SELECT role, count(*) FROM dim_users GROUP BY role ORDER BY role")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(roles, [("admin".to_string(), 1), ("user".to_string(), 2)]);
}

// The schema refuses what billing must never hold: fractional or negative money, a line billed twice, a bad timestamp.
#[test]
fn schema_constraints() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open(&dir.path().join("b.db")).unwrap();
    migrate(&mut conn, &embedded()).unwrap();
    let price = |v: &str, from: &str| {
        conn.execute(
            &format!("INSERT INTO dim_token_pricing (model_id, effective_from, input_price, output_price, cache_write_5m_price, cache_write_1h_price, cache_read_price) VALUES (5, '{from}', {v}, 1, 1, 1, 1)"),
            [],
        )
    };
    assert!(
        price("1.5", "2030-01-01T00:00:00.000Z").is_err(),
        "fractional price"
    );
    assert!(
        price("-1", "2030-01-01T00:00:00.000Z").is_err(),
        "negative price"
    );
    assert!(
        price("1", "2030-01-01 00:00:00").is_err(),
        "non-canonical timestamp"
    );
    assert!(price("1", "2030-01-01T00:00:00.000Z").is_ok());
    assert!(
        price("2", "2030-01-01T00:00:00.000Z").is_err(),
        "second version at the same instant"
    );

    let line = |class: &str| {
        conn.execute(
            &format!("INSERT INTO user_invoice_line_item (source, event_id, user_id, model_id, pricing_id, token_class, tokens, unit_price, cost_nanos, occurred_at) VALUES ('s', 'e1', 2, 5, 5, '{class}', 10, 1000000, 10000, '2026-01-01T00:00:00.000Z')"),
            [],
        )
    };
    assert!(line("input").is_ok());
    assert!(line("input").is_err(), "same event and class twice");
    assert!(line("output").is_ok());
    assert!(line("bogus").is_err());
}

// 0006 rebuilds the outbox without its unique index: rows waiting to be
// relayed stay, in order, and ids keep growing past every id ever used.
#[test]
fn outbox_rebuild_keeps_rows_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open(&dir.path().join("b.db")).unwrap();
    let all = embedded();
    let before: Vec<Migration> = all
        .iter()
        .filter(|m| m.file.as_str() < "0006")
        .cloned()
        .collect();
    let through_0006: Vec<Migration> = all
        .iter()
        .filter(|m| m.file.as_str() < "0007")
        .cloned()
        .collect();
    migrate(&mut conn, &before).unwrap();
    let insert = "INSERT INTO outbox (topic, event_key, source, event_id, payload) VALUES ('inference-events', '2', '/s', ?1, '{}')";
    for id in ["a", "b", "c", "d"] {
        conn.execute(insert, [id]).unwrap();
    }
    // Relayed: the newest row went, so the highest id is no longer in the table.
    conn.execute("DELETE FROM outbox WHERE event_id IN ('a', 'd')", [])
        .unwrap();
    let report = migrate(&mut conn, &through_0006).unwrap();
    assert_eq!(report.applied, ["0006_outbox_without_unique.sql"]);
    let rows: Vec<(i64, String)> = conn
        .prepare("SELECT outbox_id, event_id FROM outbox ORDER BY outbox_id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, [(2, "b".to_owned()), (3, "c".to_owned())]);
    conn.execute(insert, ["e"]).unwrap();
    assert_eq!(
        conn.last_insert_rowid(),
        5,
        "id 4 was used once and is never used again"
    );
    let indexes: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'outbox'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexes, 0);
    assert!(billing_migrations::foreign_key_violations(&conn)
        .unwrap()
        .is_empty());
}

// 0014 rebuilds the line items with the token-class rule as comparisons:
// every row stays as it was (ids, invoices, times), the rule still refuses
// an unknown class and a repeated (event, class), the invoices' index is
// back, and an insert no longer builds a temporary b-tree per row.
#[test]
fn line_item_rebuild_keeps_rows_and_rules() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open(&dir.path().join("b.db")).unwrap();
    let all = embedded();
    let before: Vec<Migration> = all
        .iter()
        .filter(|m| m.file.as_str() < "0014")
        .cloned()
        .collect();
    migrate(&mut conn, &before).unwrap();
    conn.execute_batch(
        "INSERT INTO user_invoices (invoice_id, user_id, period_start, period_end, total_nanos)
             VALUES (7, 2, '2026-01-01T00:00:00.000Z', '2026-02-01T00:00:00.000Z', 20000);",
    )
    .unwrap();
    let insert = |id: i64, event: &str, class: &str, invoice: Option<i64>| {
        conn.execute(
            "INSERT INTO user_invoice_line_item (line_item_id, source, event_id, user_id, model_id, pricing_id, token_class, tokens, unit_price, cost_nanos, occurred_at, invoice_id, created_at)
             VALUES (?1, 's', ?2, 2, 5, 5, ?3, 10, 1000000, 10000, '2026-01-01T00:00:00.000Z', ?4, '2026-01-02T03:04:05.678Z')",
            rusqlite::params![id, event, class, invoice],
        )
    };
    insert(3, "e1", "input", Some(7)).unwrap();
    insert(9, "e1", "cache_read", Some(7)).unwrap();
    insert(12, "e2", "cache_write_1h", None).unwrap();
    let rows = |conn: &Connection| -> Vec<Vec<String>> {
        conn.prepare("SELECT * FROM user_invoice_line_item ORDER BY line_item_id")
            .unwrap()
            .query_map([], |r| {
                (0..15)
                    .map(|i| {
                        r.get::<_, rusqlite::types::Value>(i)
                            .map(|v| format!("{v:?}"))
                    })
                    .collect()
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let kept = rows(&conn);
    assert_eq!(kept.len(), 3);
    let through_0014: Vec<Migration> = all
        .iter()
        .filter(|m| m.file.as_str() < "0015")
        .cloned()
        .collect();
    let report = migrate(&mut conn, &through_0014).unwrap();
    assert_eq!(report.applied, ["0014_line_item_class_check.sql"]);
    assert_eq!(rows(&conn), kept, "every row and column as it was");

    let line = |class: &str| {
        conn.execute(
            &format!("INSERT INTO user_invoice_line_item (source, event_id, user_id, model_id, pricing_id, token_class, tokens, unit_price, cost_nanos, occurred_at) VALUES ('s', 'e3', 2, 5, 5, '{class}', 10, 1000000, 10000, '2026-01-01T00:00:00.000Z')"),
            [],
        )
    };
    for class in [
        "input",
        "output",
        "cache_write_5m",
        "cache_write_1h",
        "cache_read",
    ] {
        line(class).unwrap();
    }
    assert!(line("input").is_err(), "same event and class twice");
    assert!(line("bogus").is_err(), "unknown class");
    assert!(line("INPUT").is_err(), "the class is compared exactly");
    assert_eq!(
        conn.last_insert_rowid(),
        17,
        "new ids go on from the highest kept one"
    );
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'user_invoice_line_item' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        indexes,
        [
            "sqlite_autoindex_user_invoice_line_item_1",
            "user_invoice_line_item_billing"
        ]
    );
    let program: Vec<String> = conn
        .prepare("EXPLAIN INSERT INTO user_invoice_line_item (source, event_id, user_id, model_id, pricing_id, token_class, tokens, unit_price, cost_nanos, occurred_at) VALUES ('s', 'e4', 2, 5, 5, 'input', 1, 1, 1, '2026-01-01T00:00:00.000Z')")
        .unwrap()
        .query_map([], |r| r.get(1))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        !program.iter().any(|op| op == "OpenEphemeral"),
        "the insert builds a temporary b-tree: {program:?}"
    );
    assert!(billing_migrations::foreign_key_violations(&conn)
        .unwrap()
        .is_empty());
}

// 0009 scopes a collected event's identity to its customer: collected
// events get their user (from the ledger or the outbox), the ledger's rows
// of inference events are renamed to the customer-scoped source (a chat
// turn's are not), and each partition's watermark starts at its highest
// consumed offset.
#[test]
fn customer_scoped_identity_renames_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open(&dir.path().join("b.db")).unwrap();
    let all = embedded();
    let before: Vec<Migration> = all
        .iter()
        .filter(|m| m.file.as_str() < "0009")
        .cloned()
        .collect();
    migrate(&mut conn, &before).unwrap();
    conn.execute_batch(
        "INSERT INTO collected_events (source, event_id) VALUES ('/svc', 'billed'), ('/svc', 'queued'), ('/svc', 'lost');
         INSERT INTO outbox (topic, event_key, source, event_id, payload)
             VALUES ('inference-events', '3', '/svc', 'queued', '{\"data\": {\"user_id\": 3}}');
         INSERT INTO api_events (source, event_id, event_type_id, user_id, model_id, request_id, status, latency_ms, compute_ms,
             input_tokens, output_tokens, cache_creation_input_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_input_tokens, occurred_at)
             SELECT '/svc', e, event_type_id, 2, 1, 'r', 'succeeded', 1, 0, 1, 0, 0, 0, 0, 0, '2026-03-10T12:00:00.000Z'
             FROM dim_event_types, (SELECT 'billed' AS e UNION ALL SELECT 'early' UNION ALL SELECT 'invoiced') WHERE event_type = 'llm-billing.inference';
         INSERT INTO processed_events (consumer, source, event_id, topic, partition, kafka_offset, user_id, processed_at)
             VALUES ('inference-events', '/svc', 'billed', 'inference-events', 1, 41, 2, '2026-03-10T12:00:00.000Z'),
                    ('inference-events', '/svc', 'early', 'inference-events', 1, 3, 0, '2026-03-10T12:00:00.000Z'),
                    ('token-metrics', '/functions/messages', 'm-1', 'token-metrics', 0, 7, 2, '2026-03-10T12:00:00.000Z'),
                    ('token-metrics', '/functions/messages', 'm-2', 'token-metrics', 0, 9, 2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
         INSERT INTO user_invoices (invoice_id, user_id, period_start, period_end, status, invoice_number, total_nanos, total_cents, rounding_nanos, finalized_at)
             VALUES (1, 2, '2026-03-01T00:00:00.000Z', '2026-04-01T00:00:00.000Z', 'final', 1, 1, 0, 1, '2026-04-02T00:00:00.000Z');
         INSERT INTO user_invoice_line_item (source, event_id, user_id, model_id, pricing_id, token_class, tokens, unit_price, cost_nanos, occurred_at, invoice_id)
             VALUES ('/svc', 'billed', 2, 1, 1, 'input', 1, 1, 1, '2026-03-10T12:00:00.000Z', NULL),
                    ('/functions/messages', 'm-1', 2, 1, 1, 'input', 1, 1, 1, '2026-03-10T12:00:00.000Z', NULL),
                    ('/svc', 'invoiced', 2, 1, 1, 'input', 1, 1, 1, '2026-03-10T12:00:00.000Z', 1);",
    )
    .unwrap();
    migrate(&mut conn, &all).unwrap();
    let rows = |sql: &str| -> Vec<String> {
        conn.prepare(sql)
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(
        rows("SELECT user_id || ' ' || source || ' ' || event_id FROM collected_events ORDER BY event_id"),
        ["2 /svc billed", "0 /svc lost", "3 /svc queued"]
    );
    assert_eq!(
        rows("SELECT source || ' ' || event_id FROM processed_events ORDER BY event_id"),
        [
            "/users/2:/svc billed",
            "/users/2:/svc early",
            "/functions/messages m-1",
            "/functions/messages m-2"
        ],
        "a row from before 0003 (user 0) takes its user from api_events"
    );
    assert_eq!(
        rows("SELECT source FROM api_events ORDER BY event_id"),
        ["/users/2:/svc"; 3]
    );
    assert_eq!(
        rows("SELECT source FROM user_invoice_line_item ORDER BY line_item_id"),
        ["/users/2:/svc", "/functions/messages", "/svc"],
        "a final invoice's line keeps its text"
    );
    assert_eq!(
        rows("SELECT topic || ' ' || partition || ' ' || kafka_offset FROM aggregated_offsets ORDER BY topic"),
        ["inference-events 1 41", "token-metrics 0 7"],
        "offsets consumed within the last hour are left to the marks"
    );
    assert_eq!(
        billing_core::events::customer_source(2, "/svc"),
        "/users/2:/svc",
        "the migration names rows as billing-core does"
    );
}

// 0015: api_events keeps only the index of its identity, UNIQUE (source, event_id),
// which the bridge's duplicate check and the resource lines' reference need.
#[test]
fn api_events_keeps_only_its_identity_index() {
    let dir = tempfile::tempdir().unwrap();
    let (conn, _) = billing_migrations::open_and_migrate(&dir.path().join("b.db")).unwrap();
    let indexes: Vec<(String, String)> = conn
        .prepare("SELECT name, coalesce(sql, '') FROM sqlite_master WHERE type = 'index' AND tbl_name = 'api_events' ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        indexes,
        [("sqlite_autoindex_api_events_1".to_owned(), String::new())],
        "the UNIQUE constraint's automatic index only"
    );
}
