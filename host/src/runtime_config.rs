//! runtime-config.toml: where each SQLite label lives and where variables
//! come from, in Spin's format.
//!
//! ```toml
//! [sqlite_database.default]
//! type = "spin"
//! path = "data/billing.db"      # relative to this file; absent = in memory
//!
//! [[config_provider]]
//! type = "env"
//! prefix = "SPIN_VARIABLE"      # the default
//! dotenv_path = ".env"          # optional
//! ```
//!
//! Without a runtime config, the label `default` is the file
//! `.spin/sqlite_db.db` beside spin.toml, as in Spin.

use crate::variables::EnvProvider;
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    sqlite_database: BTreeMap<String, SqliteEntry>,
    #[serde(default)]
    config_provider: Vec<ConfigProvider>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqliteEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigProvider {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    dotenv_path: Option<PathBuf>,
}

/// Where a SQLite label's data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqliteLocation {
    File(PathBuf),
    InMemory,
}

#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    pub sqlite: HashMap<String, SqliteLocation>,
    pub env: EnvProvider,
}

impl RuntimeConfig {
    /// Reads `path` if given; `app_dir` is where spin.toml lives (for the
    /// default database).
    pub fn load(path: Option<&Path>, app_dir: &Path) -> Result<Self> {
        let (raw, base) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read runtime config {}", p.display()))?;
                let raw: RawConfig = toml::from_str(&text)
                    .map_err(|e| anyhow!("{}", e.to_string().trim_end()))
                    .with_context(|| format!("invalid runtime config {}", p.display()))?;
                (raw, p.parent().map(Path::to_path_buf).unwrap_or_default())
            }
            None => (RawConfig::default(), PathBuf::new()),
        };
        let mut cfg = RuntimeConfig::default();
        for (label, entry) in raw.sqlite_database {
            if entry.kind != "spin" {
                bail!("[sqlite_database.{label}] type = {:?}: billing-host supports only type = \"spin\" (a local file)", entry.kind);
            }
            let loc = match entry.path {
                Some(p) => SqliteLocation::File(base.join(p)),
                None => SqliteLocation::InMemory,
            };
            cfg.sqlite.insert(label, loc);
        }
        cfg.sqlite
            .entry("default".into())
            .or_insert_with(|| SqliteLocation::File(app_dir.join(".spin/sqlite_db.db")));
        for p in raw.config_provider {
            if p.kind != "env" {
                bail!(
                    "[[config_provider]] type = {:?}: billing-host supports only type = \"env\"",
                    p.kind
                );
            }
            if let Some(prefix) = p.prefix {
                cfg.env.prefix = prefix;
            }
            if let Some(dotenv) = p.dotenv_path {
                let dotenv = base.join(dotenv);
                if dotenv.exists() {
                    cfg.env.dotenv = parse_dotenv(&std::fs::read_to_string(&dotenv)?);
                }
            }
        }
        Ok(cfg)
    }
}

fn parse_dotenv(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Labels map to files relative to the config file; `default` exists without config; unknown keys fail.
    #[test]
    fn loads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rc.toml");
        std::fs::write(&p, "[sqlite_database.billing]\ntype = \"spin\"\npath = \"data/b.db\"\n[sqlite_database.mem]\ntype = \"spin\"\n").unwrap();
        let c = RuntimeConfig::load(Some(&p), Path::new("/app")).unwrap();
        assert_eq!(
            c.sqlite["billing"],
            SqliteLocation::File(dir.path().join("data/b.db"))
        );
        assert_eq!(c.sqlite["mem"], SqliteLocation::InMemory);
        assert_eq!(
            c.sqlite["default"],
            SqliteLocation::File(PathBuf::from("/app/.spin/sqlite_db.db"))
        );
        std::fs::write(&p, "[sqlite_database.x]\ntype = \"spin\"\nfile = \"a\"\n").unwrap();
        assert!(format!(
            "{:#}",
            RuntimeConfig::load(Some(&p), Path::new("/")).unwrap_err()
        )
        .contains("unknown field `file`"));
    }
}
