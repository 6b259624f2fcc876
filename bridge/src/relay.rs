//! The transactional-outbox relay.
//!
//! Components write an event's outbox row in the same SQLite transaction as
//! the rows it describes. The relay reads the outbox in `outbox_id` order,
//! produces each row to its topic (key = user id, CloudEvents structured
//! mode) with an idempotent producer and `acks=all`, and deletes a row only
//! after its delivery report says the broker stored it. A row the broker did
//! not take stays for the next round, so nothing is lost while the broker is
//! away; the outbox is the backlog. A crash between delivery and delete
//! sends a row twice: consumers are idempotent on the event identity.

use crate::config::{Config, RelayConfig};
use crate::kafka::Producer;
use anyhow::{Context, Result};
use futures::future::join_all;
use rusqlite::Connection;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// The Redis channel components publish on after writing outbox rows.
pub const NUDGE_CHANNEL: &str = "billing:outbox";

#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub outbox_id: i64,
    pub topic: String,
    pub key: String,
    pub payload: String,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub read: usize,
    pub delivered: usize,
    pub failed: usize,
}

pub struct Relay {
    db: Mutex<Connection>,
    brokers: String,
    /// Replaced after a round with failed deliveries: the timed-out messages
    /// used up sequence numbers, and a broker that cannot bump the
    /// producer's epoch would refuse everything after them.
    producer: Mutex<Producer>,
    cfg: RelayConfig,
    /// This process's name in the relay lease.
    holder: String,
    /// Until when (ms since the epoch) this process last took the lease;
    /// nobody else can take it before then.
    held_until: std::sync::atomic::AtomicI64,
}

impl Relay {
    pub fn new(cfg: &Config) -> Result<Self> {
        Self::with(&cfg.database, &cfg.brokers, cfg.relay.clone())
    }

    pub fn with(database: &Path, brokers: &str, cfg: RelayConfig) -> Result<Self> {
        let db = billing_migrations::open(database)
            .with_context(|| format!("opening {}", database.display()))?;
        // Unique per relay, even two made in one process in one millisecond.
        static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let holder = format!(
            "{}-{}-{}-{}",
            std::env::var("HOSTNAME").unwrap_or_default(),
            std::process::id(),
            crate::now_ms(),
            MADE.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        Ok(Self {
            db: Mutex::new(db),
            brokers: brokers.to_owned(),
            producer: Mutex::new(crate::kafka::producer(brokers, cfg.delivery_timeout_ms)?),
            cfg,
            holder,
            held_until: std::sync::atomic::AtomicI64::new(0),
        })
    }

    /// Takes or renews the relay lease; false while another process holds
    /// it. Renewed only once half of it has passed: each renewal is a write
    /// transaction (a WAL fsync under SQLite's one write lock, which the
    /// components and the consumers wait for), and a round every few
    /// milliseconds under load would renew it hundreds of times a second.
    fn lease(&self) -> Result<bool> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = crate::now_ms();
        if now < self.held_until.load(SeqCst) - self.cfg.lease_ms as i64 / 2 {
            return Ok(true);
        }
        let db = self.db.lock().unwrap();
        let until = now + self.cfg.lease_ms as i64;
        let taken = db
            .prepare_cached("UPDATE relay_lease SET holder = ?1, expires_ms = ?2 WHERE lease_id = 1 AND (holder = ?1 OR expires_ms < ?3)")?
            .execute(rusqlite::params![self.holder, until, now])?;
        self.held_until
            .store(if taken == 1 { until } else { 0 }, SeqCst);
        Ok(taken == 1)
    }

    /// Rows waiting in the outbox, as the span of their ids (two index
    /// look-ups instead of a count that reads every row): exact while rows
    /// leave in order, an upper bound while failed rows wait between
    /// delivered ones.
    pub fn backlog(&self) -> Result<i64> {
        Ok(self.db.lock().unwrap().query_row(
            // Two sub-queries: `max(x) - min(x)` in one query scans the
            // table; alone, each is one look-up at an end of the rowid tree.
            "SELECT coalesce((SELECT max(outbox_id) FROM outbox) - (SELECT min(outbox_id) FROM outbox) + 1, 0)",
            [],
            |r| r.get(0),
        )?)
    }

    fn read(&self) -> Result<Vec<OutboxRow>> {
        let db = self.db.lock().unwrap();
        let mut stmt = db.prepare_cached(
            "SELECT outbox_id, topic, event_key, payload FROM outbox ORDER BY outbox_id LIMIT ?1",
        )?;
        let rows = stmt.query_map([self.cfg.batch_size as i64], |r| {
            Ok(OutboxRow {
                outbox_id: r.get(0)?,
                topic: r.get(1)?,
                key: r.get(2)?,
                payload: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes delivered rows. When every row read was delivered, one range
    /// delete: a read takes the lowest ids, and ids are given in commit
    /// order (one writer at a time, AUTOINCREMENT), so no row at or below
    /// the highest id read can have been missed.
    fn delete(&self, ids: &[i64], all_read: bool) -> Result<()> {
        let mut db = self.db.lock().unwrap();
        let tx = db.transaction()?;
        match (all_read, ids.last()) {
            (true, Some(&last)) => {
                tx.prepare_cached("DELETE FROM outbox WHERE outbox_id <= ?1")?
                    .execute([last])?;
            }
            _ => {
                let mut stmt = tx.prepare_cached("DELETE FROM outbox WHERE outbox_id = ?1")?;
                for id in ids {
                    stmt.execute([id])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn note_failures(&self, failed: &[(i64, String)]) -> Result<()> {
        let db = self.db.lock().unwrap();
        let mut stmt = db.prepare_cached(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?2 WHERE outbox_id = ?1",
        )?;
        for (id, err) in failed {
            stmt.execute(rusqlite::params![id, err])?;
        }
        Ok(())
    }

    /// Produces one batch and deletes what the broker acknowledged.
    pub async fn round(&self) -> Result<Round> {
        // SQLite blocks (and may wait for the consumers' write lock): the
        // runtime moves this worker's other tasks elsewhere meanwhile.
        use tokio::task::block_in_place;
        if !block_in_place(|| self.lease())? {
            return Ok(Round::default());
        }
        let rows = block_in_place(|| self.read())?;
        if rows.is_empty() {
            crate::telemetry::emit(crate::telemetry::OutboxBacklog { rows: 0 });
            return Ok(Round::default());
        }
        // A short read is the whole outbox; only a full one needs counting.
        let backlog = if rows.len() < self.cfg.batch_size {
            rows.len() as i64
        } else {
            block_in_place(|| self.backlog())?
        };
        crate::telemetry::emit(crate::telemetry::OutboxBacklog { rows: backlog });
        let sender = self.producer.lock().unwrap().clone();
        let sends = rows.iter().map(|row| {
            sender.send(
                &row.topic,
                row.key.as_bytes(),
                row.payload.as_bytes(),
                &[(
                    "content-type",
                    "application/cloudevents+json; charset=utf-8",
                )],
            )
        });
        let results = join_all(sends).await;
        let mut delivered = Vec::new();
        let mut failed = Vec::new();
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(_) => delivered.push(row.outbox_id),
                Err(e) => failed.push((row.outbox_id, e)),
            }
        }
        block_in_place(|| self.delete(&delivered, failed.is_empty()))?;
        crate::telemetry::emit(crate::telemetry::RelayRound {
            delivered: delivered.len(),
            failed: failed.len(),
            backlog: backlog - delivered.len() as i64,
            first_error: failed.first().map(|(_, e)| e.as_str()),
        });
        if !failed.is_empty() {
            block_in_place(|| self.note_failures(&failed))?;
            *self.producer.lock().unwrap() =
                crate::kafka::producer(&self.brokers, self.cfg.delivery_timeout_ms)?;
        }
        Ok(Round {
            read: rows.len(),
            delivered: delivered.len(),
            failed: failed.len(),
        })
    }

    /// Relays until `shutdown` resolves: at once while rows keep coming, else
    /// when `nudge` fires or the poll interval passes.
    pub async fn run(
        &self,
        mut nudge: tokio::sync::mpsc::Receiver<()>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        tokio::pin!(shutdown);
        let poll = Duration::from_millis(self.cfg.poll_interval_ms);
        loop {
            let round = match self.round().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "Relay round failed; retrying.");
                    Round {
                        failed: 1,
                        ..Round::default()
                    }
                }
            };
            if round.read == self.cfg.batch_size && round.failed == 0 {
                continue;
            }
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = nudge.recv() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }
}

/// Forwards Redis nudges on [`NUDGE_CHANNEL`] into `tx`, reconnecting
/// while Redis is away (the relay polls meanwhile).
pub async fn listen_for_nudges(redis_url: String, tx: tokio::sync::mpsc::Sender<()>) {
    loop {
        let result: redis::RedisResult<()> = async {
            let client = redis::Client::open(redis_url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(NUDGE_CHANNEL).await?;
            let mut stream = pubsub.on_message();
            use futures::StreamExt;
            while stream.next().await.is_some() {
                let _ = tx.try_send(());
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "No Redis nudges for now; polling.");
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expires(db: &Path) -> i64 {
        Connection::open(db)
            .unwrap()
            .query_row("SELECT expires_ms FROM relay_lease", [], |r| r.get(0))
            .unwrap()
    }

    // One relay holds the lease; it writes a renewal only once half of the
    // lease has passed, and another relay takes it only after it expired.
    #[test]
    fn the_lease_is_renewed_at_half_time_and_held_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("billing.db");
        billing_migrations::open_and_migrate(&db).unwrap();
        let cfg = RelayConfig {
            lease_ms: 1_000,
            ..RelayConfig::default()
        };
        // No broker is reached: the producer connects only to send.
        let (a, b) = (
            Relay::with(&db, "127.0.0.1:9", cfg.clone()).unwrap(),
            Relay::with(&db, "127.0.0.1:9", cfg).unwrap(),
        );
        assert!(a.lease().unwrap(), "a free lease is taken");
        let first = expires(&db);
        assert!(!b.lease().unwrap(), "held by the other");
        assert!(a.lease().unwrap());
        assert_eq!(expires(&db), first, "not renewed before half time");
        std::thread::sleep(Duration::from_millis(600));
        assert!(a.lease().unwrap());
        assert!(expires(&db) > first, "renewed after half time");
        assert!(!b.lease().unwrap(), "still held by the other");
        std::thread::sleep(Duration::from_millis(1_100));
        assert!(b.lease().unwrap(), "taken once expired");
        assert!(!a.lease().unwrap(), "the first lost it");
    }
}
