//! The environment as stategate v0.5.0 read it, made ready for the flag
//! parser: a `.env` file, empty variables, and Go's booleans.
//!
//! - `.env` in the working directory (or the file `--env-file` names) is
//!   read first; a variable already set, even to an empty value, is not
//!   overridden (v0.5.0 used godotenv's `Load`, which behaves the same).
//! - An empty `STATEGATE_*` variable means unset, as v0.5.0 read them
//!   (`if v != ""`): it is removed before the flags are parsed, so a
//!   template's `STATEGATE_PORT=` takes the default instead of stopping the
//!   start.
//! - Booleans are read as Go's `strconv.ParseBool` reads them
//!   (`model::flags::GoBool`).
//!
//! `prepare` changes the process environment, so it runs first thing in
//! `main`, before any other thread exists.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The flag that names another `.env` file.
pub const ENV_FILE_FLAG: &str = "--env-file";

/// Loads the `.env` file and removes empty `STATEGATE_*` variables; `args`
/// are the command-line arguments (for `--env-file`). An explicitly named
/// file that cannot be read is an error; a missing `./.env` is not.
///
/// # Safety
///
/// Changes the process environment: call it while the process has one
/// thread (before the async runtime starts).
pub unsafe fn prepare(args: &[OsString]) -> Result<Option<PathBuf>, String> {
    let loaded = match env_file_arg(args)? {
        Some(path) => {
            load(&path).map_err(|e| format!("{ENV_FILE_FLAG} {}: {e}", path.display()))?;
            Some(path)
        }
        None => {
            let path = PathBuf::from(".env");
            // A missing `./.env` is the common case, not an error.
            match load(&path) {
                Ok(()) => Some(path),
                Err(e) if e.not_found() => None,
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
    };
    let empty: Vec<OsString> = std::env::vars_os()
        .filter(|(k, v)| k.to_str().is_some_and(|k| k.starts_with("STATEGATE_")) && v.is_empty())
        .map(|(k, _)| k)
        .collect();
    for k in empty {
        // SAFETY: the caller guarantees a single-threaded process.
        unsafe { std::env::remove_var(k) };
    }
    Ok(loaded)
}

/// Reads `path` into the environment without overriding what is set
/// (even to an empty value), as godotenv's `Load` did.
fn load(path: &Path) -> Result<(), LoadError> {
    let text = std::fs::read_to_string(path)?;
    for (key, value) in parse(&text)? {
        if std::env::var_os(&key).is_none() {
            // SAFETY: `prepare`'s caller guarantees a single-threaded process.
            unsafe { std::env::set_var(&key, value) };
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("line {0}: {1}")]
    Line(usize, &'static str),
}

impl LoadError {
    fn not_found(&self) -> bool {
        matches!(self, LoadError::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

/// The `KEY=value` lines of a `.env` file, in the forms v0.5.0's files use:
/// blank lines and `#` comments, an optional `export `, values unquoted
/// (taken as they are, spaces inside included, up to a ` #` comment),
/// 'single-quoted' (literal) or "double-quoted" (`\n`, `\r`, `\"`, `\\`).
/// dotenvy, the maintained Rust parser, refuses unquoted values with
/// spaces, such as v0.5.0's own sample `{ "name": "redis", … }`, hence this.
/// No `$VAR` expansion.
fn parse(text: &str) -> Result<Vec<(String, String)>, LoadError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let (key, value) = line.split_once('=').ok_or(LoadError::Line(n + 1, "expected KEY=value"))?;
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
            return Err(LoadError::Line(n + 1, "the name must be letters, digits and _"));
        }
        out.push((key.to_owned(), value_of(value.trim()).ok_or(LoadError::Line(n + 1, "a quote is not closed"))?));
    }
    Ok(out)
}

fn value_of(raw: &str) -> Option<String> {
    let quoted = |q: char| raw.len() >= 2 && raw.starts_with(q);
    if quoted('\'') {
        let end = raw[1..].find('\'')? + 1;
        return Some(raw[1..end].to_owned());
    }
    if quoted('"') {
        let mut out = String::new();
        let mut chars = raw[1..].chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Some(out),
                '\\' => match chars.next()? {
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    other => out.push(other),
                },
                c => out.push(c),
            }
        }
        return None;
    }
    // An unquoted value ends at a comment that follows white space.
    let end = raw
        .char_indices()
        .find(|&(i, c)| c == '#' && raw[..i].ends_with([' ', '\t']))
        .map_or(raw.len(), |(i, _)| i);
    Some(raw[..end].trim_end().to_owned())
}

/// The value of `--env-file PATH` or `--env-file=PATH`, looked for before
/// the parser runs (the file feeds the variables the parser reads). Stops
/// at `--`, after which everything is a value.
fn env_file_arg(args: &[OsString]) -> Result<Option<PathBuf>, String> {
    let mut found = None;
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        if text == ENV_FILE_FLAG {
            let value = it.next().ok_or_else(|| format!("{ENV_FILE_FLAG} needs a file path"))?;
            found = Some(PathBuf::from(value));
        } else if let Some(value) = text.strip_prefix("--env-file=") {
            found = Some(PathBuf::from(value));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_as_v050_wrote_them() {
        let text = "# port\nSTATEGATE_PORT=8080\n\nexport STATEGATE_DEBUG=true # on\n\
            STATEGATE_CHANNEL_PROVIDER={ \"name\": \"redis\", \"addr\": \"redis:6379\" }\n\
            STATEGATE_EMPTY=\nA='x # y'\nB=\"a\\nb \\\"c\\\"\"\nC=p#ss\n";
        let got = parse(text).unwrap();
        let want = [
            ("STATEGATE_PORT", "8080"),
            ("STATEGATE_DEBUG", "true"),
            ("STATEGATE_CHANNEL_PROVIDER", "{ \"name\": \"redis\", \"addr\": \"redis:6379\" }"),
            ("STATEGATE_EMPTY", ""),
            ("A", "x # y"),
            ("B", "a\nb \"c\""),
            ("C", "p#ss"),
        ];
        assert_eq!(got, want.map(|(k, v)| (k.to_owned(), v.to_owned())));
        assert!(matches!(parse("JUSTAWORD\n"), Err(LoadError::Line(1, _))));
        assert!(matches!(parse("X=1\nA=\"open\n"), Err(LoadError::Line(2, _))));
        // v0.5.0's own sample file parses.
        let sample = "STATEGATE_STORAGE_PROVIDER={ \"name\": \"mongo\", \"database\": \"testing\", \"addr\": \"mongodb://mongo:27017/testing\" }\n# STATEGATE_JWKS_URI=https://x\n";
        assert_eq!(parse(sample).unwrap().len(), 1);
    }

    #[test]
    fn env_file_flag_is_found_before_parsing() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(env_file_arg(&args(&["sg", "--port", "1"])).unwrap(), None);
        assert_eq!(env_file_arg(&args(&["sg", "--env-file", "a.env"])).unwrap(), Some("a.env".into()));
        assert_eq!(env_file_arg(&args(&["sg", "migrate", "--env-file=b.env"])).unwrap(), Some("b.env".into()));
        assert_eq!(env_file_arg(&args(&["sg", "set", "--", "--env-file", "x"])).unwrap(), None);
        assert!(env_file_arg(&args(&["sg", "--env-file"])).is_err());
    }
}
