//! Connection settings common to the SQL providers: TLS mode, where the
//! password comes from, pool size and timeouts.

use crate::model::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `sslmode`, in PostgreSQL's words (MySQL's equivalents in brackets):
/// `disable` (DISABLED), `prefer` (PREFERRED: TLS when the server offers
/// it, unverified), `require` (REQUIRED: TLS, certificate unverified),
/// `verify-ca` (VERIFY_CA: the certificate chains to `ca_file` or a public
/// root), `verify-full` (VERIFY_IDENTITY: and names the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Default number of pooled read connections per gateway.
pub const DEFAULT_POOL_SIZE: u32 = 16;
/// Default number of writer connections per gateway (see `writer`).
pub const DEFAULT_WRITERS: u32 = 1;
/// Default bound on opening one connection.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default bound on one storage call, retries included.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 10_000;

/// The settings both providers read, resolved (password read from its file
/// or variable).
#[derive(Debug, Clone)]
pub struct Settings {
    pub pool_size: usize,
    pub writers: usize,
    pub connect_timeout: Duration,
    pub call_timeout: Duration,
    pub password: Option<String>,
}

impl Settings {
    pub fn resolve(
        pool_size: Option<u32>,
        writers: Option<u32>,
        connect_timeout_ms: Option<u64>,
        call_timeout_ms: Option<u64>,
        password_file: Option<&PathBuf>,
        password_env: Option<&str>,
    ) -> Result<Settings> {
        let pool_size = pool_size.unwrap_or(DEFAULT_POOL_SIZE);
        if pool_size == 0 || pool_size > 1024 {
            return Err(Error::invalid("pool_size", format!("must be 1..=1024, got {pool_size}")));
        }
        let writers = writers.unwrap_or(DEFAULT_WRITERS);
        if writers == 0 || writers > 16 {
            return Err(Error::invalid("writers", format!("must be 1..=16, got {writers}")));
        }
        let positive = |field: &str, v: u64| {
            if v == 0 {
                Err(Error::invalid(field, "must be positive"))
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        let password = match (password_file, password_env) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid("password_file", "give password_file or password_env, not both"));
            }
            (Some(path), None) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::invalid("password_file", format!("cannot read {}: {e}", path.display())))?;
                // Files written by `echo` or secret mounts end with a newline
                // that is not part of the password.
                Some(text.trim_end_matches(['\r', '\n']).to_owned())
            }
            (None, Some(var)) => Some(
                std::env::var(var)
                    .map_err(|_| Error::invalid("password_env", format!("environment variable {var} is not set")))?,
            ),
            (None, None) => None,
        };
        Ok(Settings {
            pool_size: pool_size as usize,
            writers: writers as usize,
            connect_timeout: positive("connect_timeout_ms", connect_timeout_ms.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS))?,
            call_timeout: positive("call_timeout_ms", call_timeout_ms.unwrap_or(DEFAULT_CALL_TIMEOUT_MS))?,
            password,
        })
    }
}

/// An error message without anything that looks like a URL's credentials:
/// a connection string may hold a password, and errors are logged and shown.
pub fn without_credentials(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    match (text.find("://"), text.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…{}", &text[..scheme], &text[at..]),
        _ => text,
    }
}

/// `ca_file`, checked to be a file before a driver is handed it (drivers
/// report a missing one only at the first connection, as a TLS failure).
pub fn checked_ca_file(ca: &Path) -> Result<&Path> {
    if !ca.is_file() {
        return Err(Error::invalid("ca_file", format!("{} is not a readable file", ca.display())));
    }
    Ok(ca)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_comes_from_a_file_or_a_variable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret:/@ \n").unwrap();
        let s = Settings::resolve(None, None, None, None, Some(&file), None).unwrap();
        assert_eq!(s.password.as_deref(), Some("s3cret:/@ "), "only the trailing newline goes");
        assert_eq!((s.pool_size, s.call_timeout), (DEFAULT_POOL_SIZE as usize, Duration::from_millis(DEFAULT_CALL_TIMEOUT_MS)));
        let missing = Settings::resolve(None, None, None, None, Some(&dir.path().join("nope")), None).unwrap_err();
        assert!(missing.to_string().contains("password_file"), "{missing}");
        let var = "STATEGATE_UNIT_TEST_UNSET_PASSWORD_VARIABLE";
        let unset = Settings::resolve(None, None, None, None, None, Some(var)).unwrap_err();
        assert!(unset.to_string().contains(var), "{unset}");
        let home = Settings::resolve(None, None, None, None, None, Some("HOME")).unwrap();
        assert_eq!(home.password, std::env::var("HOME").ok());
        assert!(Settings::resolve(None, None, None, None, Some(&file), Some("HOME")).is_err(), "not both");
        assert!(Settings::resolve(Some(0), None, None, None, None, None).unwrap_err().to_string().contains("pool_size"));
        assert!(Settings::resolve(None, Some(0), None, None, None, None).unwrap_err().to_string().contains("writers"));
        assert!(Settings::resolve(None, Some(17), None, None, None, None).unwrap_err().to_string().contains("writers"));
        assert!(Settings::resolve(None, None, Some(0), None, None, None).unwrap_err().to_string().contains("connect_timeout_ms"));
    }
}
