//! Application variables and component variable templates, resolved once at
//! start-up as Spin's environment provider does: `SPIN_VARIABLE_<NAME>` in
//! the environment (or a dotenv file) beats the manifest default; a required
//! variable without a value stops start-up.

use crate::manifest::{check_variable_name, Manifest};
use anyhow::{bail, Result};
use std::collections::{BTreeMap, HashMap};

/// The names `{{ name }}` references in a template.
pub fn template_references(template: &str) -> Result<Vec<String>, String> {
    Ok(parse_template(template)?
        .into_iter()
        .filter_map(|p| match p {
            Part::Var(v) => Some(v),
            Part::Lit(_) => None,
        })
        .collect())
}

enum Part {
    Lit(String),
    Var(String),
}

fn parse_template(t: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            parts.push(Part::Lit(rest[..start].to_owned()));
        }
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed {{{{ in template {t:?}"))?;
        let name = after[..end].trim();
        check_variable_name(name).map_err(|e| format!("template {t:?} refers to {name:?}: {e}"))?;
        parts.push(Part::Var(name.to_owned()));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Lit(rest.to_owned()));
    }
    Ok(parts)
}

/// Where variable values come from besides the manifest defaults.
#[derive(Debug, Clone)]
pub struct EnvProvider {
    pub prefix: String,
    /// Values from a dotenv file, used when the environment lacks them.
    pub dotenv: HashMap<String, String>,
}

impl Default for EnvProvider {
    fn default() -> Self {
        Self {
            prefix: "SPIN_VARIABLE".into(),
            dotenv: HashMap::new(),
        }
    }
}

impl EnvProvider {
    fn get(&self, name: &str) -> Option<String> {
        let key = format!("{}_{}", self.prefix, name.to_ascii_uppercase());
        std::env::var(&key)
            .ok()
            .or_else(|| self.dotenv.get(&key).cloned())
    }
}

/// Every component's variables, resolved.
#[derive(Debug, Clone, Default)]
pub struct ResolvedVariables {
    by_component: HashMap<String, HashMap<String, String>>,
}

/// Why a guest's `variables.get` failed, mapped onto Spin's error variants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetError {
    InvalidName(String),
    Undefined(String),
}

impl ResolvedVariables {
    pub fn resolve(m: &Manifest, env: &EnvProvider) -> Result<Self> {
        let mut app: BTreeMap<&str, String> = BTreeMap::new();
        for (name, decl) in &m.variables {
            match env.get(name).or_else(|| decl.default.clone()) {
                Some(v) => {
                    app.insert(name, v);
                }
                None if decl.required => bail!(
                    "the required variable `{name}` has no value: set {}_{} in the environment",
                    env.prefix,
                    name.to_ascii_uppercase()
                ),
                None => {}
            }
        }
        let mut by_component = HashMap::new();
        for (id, c) in &m.component {
            let mut vars = HashMap::new();
            for (name, template) in &c.variables {
                let mut value = String::new();
                for part in parse_template(template).map_err(anyhow::Error::msg)? {
                    match part {
                        Part::Lit(s) => value.push_str(&s),
                        Part::Var(v) => match app.get(v.as_str()) {
                            Some(x) => value.push_str(x),
                            None => bail!("[component.{id}.variables] {name}: `{v}` has no value"),
                        },
                    }
                }
                vars.insert(name.clone(), value);
            }
            by_component.insert(id.clone(), vars);
        }
        Ok(Self { by_component })
    }

    /// What `fermyon:spin/variables.get(name)` answers for `component`.
    pub fn get(&self, component: &str, name: &str) -> Result<String, GetError> {
        check_variable_name(name)
            .map_err(|reason| GetError::InvalidName(format!("{name:?}: {reason}")))?;
        self.by_component
            .get(component)
            .and_then(|vars| vars.get(name))
            .cloned()
            .ok_or_else(|| GetError::Undefined(format!("no variable for {component:?}.{name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(extra: &str) -> Manifest {
        crate::manifest::parse(&format!(
            r#"spin_manifest_version = 2
[application]
name = "t"
[variables]
greeting = {{ default = "hi" }}
token = {{ required = true, secret = true }}
{extra}
[component.c]
source = "c.wasm"
variables = {{ message = "{{{{ greeting }}}}, {{{{token}}}}!", plain = "x" }}
"#
        ))
        .unwrap()
    }

    // Defaults, the environment provider, templates, and the invalid-name / undefined errors behave as in Spin.
    #[test]
    fn resolution() {
        let mut env = EnvProvider {
            prefix: "TEST_VARS_A".into(),
            dotenv: HashMap::new(),
        };
        let m = manifest("");
        let err = ResolvedVariables::resolve(&m, &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("TEST_VARS_A_TOKEN"), "{err}");
        env.dotenv
            .insert("TEST_VARS_A_TOKEN".into(), "s3cret".into());
        let v = ResolvedVariables::resolve(&m, &env).unwrap();
        assert_eq!(v.get("c", "message").unwrap(), "hi, s3cret!");
        assert_eq!(v.get("c", "plain").unwrap(), "x");
        assert!(
            matches!(v.get("c", "greeting"), Err(GetError::Undefined(_))),
            "app variables are reached through component variables"
        );
        assert!(matches!(
            v.get("c", "Bad-Name"),
            Err(GetError::InvalidName(_))
        ));
        assert!(matches!(
            v.get("other", "message"),
            Err(GetError::Undefined(_))
        ));
    }
}
