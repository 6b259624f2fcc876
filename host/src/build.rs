//! `billing-host build`: runs each component's `[component.X.build]`
//! command in its workdir (relative to spin.toml), like `spin build`.

use crate::manifest::LoadedManifest;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

pub fn build(manifest: &Path, only: &[String]) -> Result<()> {
    let lm = LoadedManifest::load(manifest)?;
    for id in only {
        if !lm.manifest.component.contains_key(id) {
            bail!("there is no component `{id}` in {}", manifest.display());
        }
    }
    for (id, c) in &lm.manifest.component {
        if !only.is_empty() && !only.contains(id) {
            continue;
        }
        let Some(b) = &c.build else {
            println!("Component {id} has no build command.");
            continue;
        };
        let dir = b
            .workdir
            .as_deref()
            .map_or_else(|| lm.dir.clone(), |w| lm.resolve(w));
        println!("Building component {id} with `{}`", b.command);
        let status = Command::new("sh")
            .arg("-c")
            .arg(&b.command)
            .current_dir(&dir)
            .envs(&b.environment)
            .status()
            .with_context(|| format!("running the build command of component `{id}`"))?;
        if !status.success() {
            bail!("the build command of component `{id}` failed ({status})");
        }
    }
    println!("Finished building all Spin components");
    Ok(())
}
