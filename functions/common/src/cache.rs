//! Redis as a cache: every read may miss, every write may fail, and neither
//! ever fails a request. The address is the component variable `redis_url`.

use spin_sdk::redis::{Connection, RedisParameter};

pub struct Cache {
    conn: Option<Connection>,
}

impl Cache {
    /// Connects if Redis is configured and reachable; otherwise every call
    /// is a miss or a no-op. (The host logs an unreachable Redis once.)
    pub fn open() -> Self {
        let Ok(url) = spin_sdk::variables::get("redis_url") else {
            return Self { conn: None };
        };
        if url.is_empty() {
            return Self { conn: None };
        }
        match Connection::open(&url) {
            Ok(conn) => Self { conn: Some(conn) },
            Err(_) => Self { conn: None },
        }
    }

    pub fn is_up(&self) -> bool {
        self.conn.is_some()
    }

    pub fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        let bytes = self.conn.as_ref()?.get(key).ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// SET key value EX ttl.
    pub fn set_json<T: serde::Serialize>(&self, key: &str, value: &T, ttl_s: i64) {
        if let Some(c) = &self.conn {
            let args = [
                RedisParameter::Binary(key.as_bytes().to_vec()),
                RedisParameter::Binary(serde_json::to_vec(value).unwrap_or_default()),
                RedisParameter::Binary(b"EX".to_vec()),
                RedisParameter::Int64(ttl_s),
            ];
            let _ = c.execute("SET", &args);
        }
    }

    pub fn del(&self, keys: &[String]) {
        if let Some(c) = &self.conn {
            let _ = c.del(keys);
        }
    }

    pub fn publish(&self, channel: &str, payload: &[u8]) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| c.publish(channel, payload).is_ok())
    }

    /// Runs a raw command; `None` when Redis is down or the command failed.
    pub fn execute(
        &self,
        command: &str,
        args: &[RedisParameter],
    ) -> Option<Vec<spin_sdk::redis::RedisResult>> {
        self.conn.as_ref()?.execute(command, args).ok()
    }

    /// INCR, returning the new value.
    pub fn incr(&self, key: &str) -> Option<i64> {
        self.conn.as_ref()?.incr(key).ok()
    }
}
