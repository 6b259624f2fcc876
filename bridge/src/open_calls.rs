//! Gateway calls left open (migration 0013), billed.
//!
//! The gateway records a stream open as soon as the provider's
//! `message_start` tells its input, and keeps a call whose billing write
//! failed open with its whole usage. A row still open
//! `open_gateway_calls_after_s` after its last write belongs to a gateway
//! instance that ended first (the process killed, or stopped at its time
//! limit): the provider charged, so the bridge bills it here with the usage
//! the row holds, the way the gateway would have: its `gateway_calls` row
//! completed (cost, `open_usage` cleared) and its `llm-billing.inference`
//! event (source `/functions/gateway`, id = the call id) written to the
//! outbox in one transaction. The row is taken only while still open, and
//! the event id is the call id, so a call is billed once whichever of the
//! gateway and the bridge gets there first. A row whose usage can never be
//! priced is closed with the reason in `billing_error`.

use crate::billing::inference_cost;
use anyhow::{Context, Result};
use billing_core::events::{gateway_call_event, EventData, InferenceEvent, GATEWAY_SOURCE};
use billing_core::{ModelName, Timestamp, Usage};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

/// Bills every gateway call open since before `open_before`, at most
/// `limit` of them; returns how many were billed.
pub fn bill_stale(conn: &mut Connection, open_before: Timestamp, limit: usize) -> Result<usize> {
    let ids: Vec<String> = conn
        .prepare_cached(
            "SELECT call_id FROM gateway_calls WHERE open_usage IS NOT NULL AND occurred_at < ?1 ORDER BY occurred_at LIMIT ?2",
        )?
        .query_map(rusqlite::params![open_before.to_rfc3339(), limit as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut billed = 0;
    for id in ids {
        // One call that fails (its row, say) does not hold up the others.
        match bill_one(conn, &id).with_context(|| format!("gateway call {id}")) {
            Ok(true) => billed += 1,
            Ok(false) => {}
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "An open gateway call was not billed; trying again later."
            ),
        }
    }
    Ok(billed)
}

/// Bills one open call; false when it was no longer open.
fn bill_one(conn: &mut Connection, call_id: &str) -> Result<bool> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let row = tx
        .query_row(
            "SELECT c.user_id, m.model_name, c.open_usage, c.occurred_at, c.partial, c.latency_ms, c.provider_message_id
             FROM gateway_calls c JOIN dim_models m USING (model_id) WHERE c.call_id = ?1 AND c.open_usage IS NOT NULL",
            [call_id],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ))
            },
        )
        .optional()?;
    let Some((user_id, model, open_usage, at, partial, latency_ms, provider_id)) = row else {
        return Ok(false);
    };
    let priced = serde_json::from_str::<Usage>(&open_usage)
        .map_err(|e| format!("its recorded usage does not read: {e}"))
        .and_then(|usage| {
            let at = Timestamp::parse(&at).map_err(|e| format!("occurred_at: {e}"))?;
            let name = ModelName::parse(&model).map_err(|e| e.to_string())?;
            Ok((usage, at, name))
        });
    let (usage, at, name) = match priced {
        Ok(x) => x,
        Err(why) => return close_unpriced(tx, call_id, &why),
    };
    let cost = match inference_cost(&tx, user_id, &model, at, &usage)? {
        Ok(c) => c,
        Err(why) => return close_unpriced(tx, call_id, &why),
    };
    let event = gateway_call_event(
        call_id,
        at,
        user_id,
        name,
        provider_id.as_deref(),
        partial == 1,
        latency_ms.max(0) as u64,
        usage,
    );
    tx.execute(
        "UPDATE gateway_calls SET cost_nanos = ?2, open_usage = NULL, billing_error = NULL WHERE call_id = ?1",
        rusqlite::params![call_id, cost.0],
    )?;
    tx.execute(
        "INSERT INTO outbox (topic, event_key, source, event_id, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![InferenceEvent::TOPIC, event.key(), GATEWAY_SOURCE, call_id, event.to_json()],
    )?;
    tx.commit()?;
    tracing::warn!(
        call_id,
        cost_nanos = cost.0,
        "A gateway call left open was billed by the bridge."
    );
    Ok(true)
}

fn close_unpriced(tx: rusqlite::Transaction<'_>, call_id: &str, why: &str) -> Result<bool> {
    tx.execute(
        "UPDATE gateway_calls SET open_usage = NULL, billing_error = ?2 WHERE call_id = ?1",
        rusqlite::params![call_id, format!("left open and cannot be priced: {why}")],
    )?;
    tx.commit()?;
    tracing::error!(
        call_id,
        why,
        "A gateway call left open cannot be priced; kept with billing_error."
    );
    Ok(false)
}
