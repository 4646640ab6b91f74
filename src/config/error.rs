//! The one error type of config loading: which file, which key, what is wrong, on one line.

use std::fmt;
use std::path::{Path, PathBuf};

/// A refused configuration. `Display` is `{file}: {key}: {reason}` on one line, what `check` and
/// `serve` print before exiting non-zero. `key` is a dotted path as written in the file
/// (`server.listen`, `clients[1].key_sha256[0]`; indexes count from 0), `line N, column M` for
/// TOML syntax errors, or `(file)` when the file itself cannot be read. Never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(file: &Path, key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Writes `s` with control characters (newlines included) turned into spaces, so the message
/// stays one line whatever an OS or parser error contained.
fn one_line(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    if !s.chars().any(char::is_control) {
        return f.write_str(s);
    }
    for c in s.chars() {
        fmt::Write::write_char(f, if c.is_control() { ' ' } else { c })?;
    }
    Ok(())
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        one_line(f, &self.file.display().to_string())?;
        f.write_str(": ")?;
        one_line(f, &self.key)?;
        f.write_str(": ")?;
        one_line(f, &self.reason)
    }
}

impl std::error::Error for ConfigError {}
