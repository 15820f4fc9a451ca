//! `smelt pull` and `smelt models`.

use std::io::Write;

use anyhow::{bail, Result};
use serde_json::json;
use smelt_assets::{Fetcher, CATALOG};

use crate::cli::{ModelsArgs, PullArgs};

pub fn pull(args: &PullArgs, quiet: bool) -> Result<()> {
    for name in &args.names {
        let Some(asset) = smelt_assets::find(name) else {
            bail!("unknown model {name:?}; known models: {}", CATALOG.iter().map(|a| a.name).collect::<Vec<_>>().join(", "));
        };
        let path = crate::fetch(asset, quiet)?;
        println!("{}  {}", asset.name, path.display());
    }
    Ok(())
}

pub fn models(args: &ModelsArgs) -> Result<()> {
    let f = Fetcher::from_env();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        let v: Vec<_> = CATALOG
            .iter()
            .map(|a| json!({
                "name": a.name, "description": a.description, "license": a.license,
                "packages": a.packages.iter().map(|p| format!("{}=={}", p.name, p.version)).collect::<Vec<_>>(),
                "cached": f.is_cached(a), "path": f.main_path(a).display().to_string(),
            }))
            .collect();
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{:<26} {:<7} DESCRIPTION", "NAME", "CACHED")?;
        for a in CATALOG {
            writeln!(out, "{:<26} {:<7} {}", a.name, if f.is_cached(a) { "yes" } else { "no" }, a.description)?;
        }
        writeln!(out, "\ncache: {} (set SMELT_HOME to move it)", f.home.display())?;
    }
    out.flush()?;
    Ok(())
}
