//! Writing `--json` results.

use anyhow::{Context, Result};
use std::path::Path;

pub fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))?;
    eprintln!("halley-load: results written to {}", path.display());
    Ok(())
}
