//! What halley-load writes for people: `--json` results and capped error lines.

use anyhow::{Context, Result};
use std::cell::Cell;
use std::path::Path;

pub fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))?;
    eprintln!("halley-load: results written to {}", path.display());
    Ok(())
}

/// Prints the first few errors of one kind of task to stderr, then only counts them, so
/// that a run against a failing server stays readable.
pub struct ErrorLog {
    who: &'static str,
    printed: Cell<u32>,
}

impl ErrorLog {
    /// Errors printed in full before the rest are only counted.
    const SHOWN: u32 = 5;

    pub fn new(who: &'static str) -> ErrorLog {
        ErrorLog {
            who,
            printed: Cell::new(0),
        }
    }

    pub fn note(&self, what: &str) {
        let n = self.printed.get();
        if n < Self::SHOWN {
            eprintln!("halley-load: {}: {what}", self.who);
        } else if n == Self::SHOWN {
            eprintln!("halley-load: {}: (further errors only counted)", self.who);
        }
        self.printed.set(n + 1);
    }
}
