//! spin.toml, manifest version 2, read as Spin reads it: unknown fields are
//! errors, and every error names the file and what is wrong.

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub spin_manifest_version: u32,
    pub application: Application,
    #[serde(default)]
    pub variables: BTreeMap<String, VariableDecl>,
    #[serde(default)]
    pub trigger: Triggers,
    #[serde(default)]
    pub component: BTreeMap<String, Component>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub authors: Vec<String>,
}

/// An application variable: a default, or required; secret values are never logged.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableDecl {
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub secret: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    #[serde(default)]
    pub http: Vec<HttpTrigger>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTrigger {
    #[serde(default)]
    pub id: Option<String>,
    pub route: RouteConfig,
    pub component: String,
    #[serde(default)]
    pub executor: Option<Executor>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RouteConfig {
    Route(String),
    Private(PrivateRoute),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateRoute {
    pub private: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Executor {
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    pub source: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    pub sqlite_databases: Vec<String>,
    #[serde(default)]
    pub key_value_stores: Vec<String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    #[serde(default)]
    pub files: Vec<FileMount>,
    #[serde(default)]
    pub exclude_files: Vec<String>,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    #[serde(default)]
    pub build: Option<Build>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FileMount {
    /// A directory, mounted at the same path relative to the guest's root.
    Path(String),
    Placement {
        source: String,
        destination: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    pub command: String,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub watch: Vec<String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
}

/// A manifest with the directory its relative paths start from.
#[derive(Debug, Clone)]
pub struct LoadedManifest {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl LoadedManifest {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read manifest {}", path.display()))?;
        let manifest =
            parse(&text).with_context(|| format!("invalid manifest {}", path.display()))?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(Self {
            path: path.to_owned(),
            dir,
            manifest,
        })
    }

    pub fn resolve(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }
}

/// Parses and checks a manifest's text.
pub fn parse(text: &str) -> Result<Manifest> {
    let m: Manifest = toml::from_str(text).map_err(|e| anyhow!("{}", e.to_string().trim_end()))?;
    validate(&m)?;
    Ok(m)
}

fn validate(m: &Manifest) -> Result<()> {
    if m.spin_manifest_version != 2 {
        bail!(
            "spin_manifest_version = {}: only manifest version 2 is supported",
            m.spin_manifest_version
        );
    }
    for (name, decl) in &m.variables {
        check_variable_name(name).map_err(|e| anyhow!("[variables] {name}: {e}"))?;
        if decl.required && decl.default.is_some() {
            bail!("[variables] {name}: a variable cannot be both required and have a default");
        }
        if !decl.required && decl.default.is_none() {
            bail!("[variables] {name}: give a default or set required = true");
        }
    }
    for (id, c) in &m.component {
        check_component_id(id).map_err(|e| anyhow!("[component.{id}]: {e}"))?;
        if !c.key_value_stores.is_empty() {
            bail!("[component.{id}] key_value_stores: key-value stores are not provided by billing-host");
        }
        for (name, template) in &c.variables {
            check_variable_name(name)
                .map_err(|e| anyhow!("[component.{id}.variables] {name}: {e}"))?;
            for reference in crate::variables::template_references(template)
                .map_err(|e| anyhow!("[component.{id}.variables] {name}: {e}"))?
            {
                if !m.variables.contains_key(&reference) {
                    bail!("[component.{id}.variables] {name}: the template refers to `{reference}`, which is not an application variable");
                }
            }
        }
        for host in &c.allowed_outbound_hosts {
            crate::allowed_hosts::AllowedHost::parse(host)
                .map_err(|e| anyhow!("[component.{id}] allowed_outbound_hosts: {e}"))?;
        }
    }
    for (i, t) in m.trigger.http.iter().enumerate() {
        if !m.component.contains_key(&t.component) {
            bail!(
                "[[trigger.http]] #{} (route {:?}): component `{}` is not defined",
                i + 1,
                t.route,
                t.component
            );
        }
        match &t.route {
            RouteConfig::Route(r) if !r.starts_with('/') => {
                bail!("[[trigger.http]] #{}: route `{r}` must start with /", i + 1)
            }
            RouteConfig::Private(p) if !p.private => {
                bail!(
                    "[[trigger.http]] #{}: route must be a string pattern or {{ private = true }}",
                    i + 1
                )
            }
            _ => {}
        }
        if let Some(e) = &t.executor {
            if e.kind != "spin" {
                bail!("[[trigger.http]] #{}: executor type `{}` is not supported; billing-host runs `spin` (wasi:http) components", i + 1, e.kind);
            }
        }
    }
    Ok(())
}

/// Spin's rule for variable names: lower-case letters, digits and single
/// underscores, starting with a letter and ending with a letter or digit.
pub fn check_variable_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!("invalid character {c:?}. Variable names may contain only lower-case letters, numbers, and underscores."));
    }
    if !name.as_bytes()[0].is_ascii_lowercase() {
        return Err("must start with a lowercase ASCII letter".into());
    }
    if !name.as_bytes()[name.len() - 1].is_ascii_alphanumeric() {
        return Err("must end with a lowercase ASCII letter or digit".into());
    }
    if name.contains("__") {
        return Err("must not contain multiple consecutive underscores".into());
    }
    Ok(())
}

/// Component ids: lower-case letters, digits and single dashes (kebab case).
fn check_component_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.split('-').all(|w| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
        && id.as_bytes()[0].is_ascii_lowercase();
    if ok {
        Ok(())
    } else {
        Err(format!("`{id}` is not a valid component id: use lower-case letters, digits and single dashes, starting with a letter"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
spin_manifest_version = 2
[application]
name = "t"
[variables]
key = { required = true, secret = true }
greeting = { default = "hi" }
[[trigger.http]]
route = "/..."
component = "probe"
[component.probe]
source = "probe.wasm"
variables = { message = "{{ greeting }}, world" }
"#;

    // A valid manifest parses with its variables, trigger and component.
    #[test]
    fn parses() {
        let m = parse(BASE).unwrap();
        assert_eq!(
            m.component["probe"].variables["message"],
            "{{ greeting }}, world"
        );
        assert!(m.variables["key"].secret);
    }

    // Unknown fields, bad versions, dangling components and bad names fail with the field in the message.
    #[test]
    fn errors_name_the_field() {
        let err = |text: String| format!("{:#}", parse(&text).unwrap_err());
        assert!(err(BASE.replace("source = ", "sorce = ")).contains("unknown field `sorce`"));
        assert!(
            err(BASE.replace("spin_manifest_version = 2", "spin_manifest_version = 1"))
                .contains("version 2")
        );
        assert!(
            err(BASE.replace("component = \"probe\"", "component = \"nope\""))
                .contains("component `nope` is not defined")
        );
        assert!(err(BASE.replace("greeting = {", "Greeting = {")).contains("[variables] Greeting"));
        assert!(err(BASE.replace("{{ greeting }}", "{{ missing }}"))
            .contains("`missing`, which is not an application variable"));
        assert!(err(BASE.replace(
            "[component.probe]",
            "[component.probe]\nallowed_outbound_hosts = [\"example.com\"]"
        ))
        .contains("allowed_outbound_hosts"));
        assert!(
            err(BASE.replace("route = \"/...\"", "route = \"api\"")).contains("must start with /")
        );
        assert!(err(BASE.replace(
            "key = { required = true, secret = true }",
            "key = { secret = true }"
        ))
        .contains("required"));
    }
}
