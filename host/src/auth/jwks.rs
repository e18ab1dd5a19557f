//! Where the keys that verify tokens come from: a remote JSON Web Key Set
//! (`STATEGATE_JWKS_URI`), a local JWKS or PEM file, or an HMAC secret.
//!
//! Each key carries the algorithms it may verify, decided by the key itself
//! (its JWK `alg`, else its type and curve), never by the token: an RSA key
//! verifies RS*/PS* only, so a token that says `HS256` cannot make the
//! gateway use an RSA public key as an HMAC secret. HS* is only possible
//! with a configured secret (`oct` keys in a JWKS are ignored).
//!
//! The remote set is fetched at start (failure stops the start), refreshed
//! periodically, and refreshed when a token names an unknown `kid`, at most
//! once per `min_refresh`, so a flood of bad tokens cannot make the gateway
//! hammer the identity provider. A failed refresh keeps the previous keys.
//! Local key files are polled and reloaded when they change.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use arc_swap::ArcSwap;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One key, with the algorithms it may verify.
pub struct VerifyKey {
    pub kid: Option<String>,
    pub key: DecodingKey,
    pub algs: Vec<Algorithm>,
}

/// The keys in force. `generation` changes whenever the remote set changes,
/// which invalidates every cached verification.
pub struct KeySet {
    pub keys: Vec<Arc<VerifyKey>>,
    pub generation: u64,
}

impl KeySet {
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

#[derive(Debug, Clone, Default)]
pub struct KeyConfig {
    pub jwks_uri: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub public_key_files: Vec<PathBuf>,
    pub hmac_secret: Option<Vec<u8>>,
    /// Periodic refresh of the remote set.
    pub refresh: Duration,
    /// Least time between two fetches triggered by unknown `kid`s.
    pub min_refresh: Duration,
    /// How often local key files are checked for changes.
    pub file_poll: Duration,
}

impl KeyConfig {
    pub fn is_empty(&self) -> bool {
        self.jwks_uri.is_none()
            && self.jwks_file.is_none()
            && self.public_key_files.is_empty()
            && self.hmac_secret.is_none()
    }
}

struct Remote {
    uri: String,
    client: reqwest::Client,
    /// When the last fetch started; the lock makes concurrent refreshes
    /// single-flight.
    last_fetch: tokio::sync::Mutex<Instant>,
    min_refresh: Duration,
    /// Digest of the last fetched document, to publish only on change.
    digest: Mutex<[u8; 32]>,
    keys: Mutex<Vec<Arc<VerifyKey>>>,
}

/// A local key file's identity for change detection.
type FileStamp = Vec<(PathBuf, Option<SystemTime>, u64)>;

pub struct KeyStore {
    config: KeyConfig,
    /// Keys from files and the secret.
    local: Mutex<Vec<Arc<VerifyKey>>>,
    local_stamp: Mutex<FileStamp>,
    remote: Option<Remote>,
    current: ArcSwap<KeySet>,
    generation: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl KeyStore {
    /// Loads the configured keys; fetches the remote set once. Errors name
    /// the variable at fault. Local key files are watched and reloaded when
    /// they change (a broken replacement is refused, the old keys stay).
    pub async fn open(config: &KeyConfig) -> Result<Arc<Self>, (&'static str, String)> {
        let local = load_local(config)?;
        let remote = match &config.jwks_uri {
            None => None,
            Some(uri) => {
                let client = reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .build()
                    .map_err(|e| ("STATEGATE_JWKS_URI", e.to_string()))?;
                Some(Remote {
                    uri: uri.clone(),
                    client,
                    last_fetch: tokio::sync::Mutex::new(Instant::now()),
                    min_refresh: config.min_refresh,
                    digest: Mutex::new([0; 32]),
                    keys: Mutex::new(Vec::new()),
                })
            }
        };
        let store = Arc::new(KeyStore {
            current: ArcSwap::from_pointee(KeySet {
                keys: local.clone(),
                generation: 0,
            }),
            local: Mutex::new(local),
            local_stamp: Mutex::new(stamp(config)),
            config: config.clone(),
            remote,
            generation: AtomicU64::new(0),
        });
        if let Some(remote) = &store.remote {
            let _guard = remote.last_fetch.lock().await;
            store.fetch().await.map_err(|e| ("STATEGATE_JWKS_URI", e))?;
            let weak = Arc::downgrade(&store);
            tokio::spawn(refresh_periodically(weak, config.refresh.max(Duration::from_secs(1))));
        }
        if config.jwks_file.is_some() || !config.public_key_files.is_empty() {
            tokio::spawn(watch_files(Arc::downgrade(&store), config.file_poll.max(Duration::from_millis(50))));
        }
        Ok(store)
    }

    pub fn current(&self) -> Arc<KeySet> {
        self.current.load_full()
    }

    /// Publishes local + remote keys as a new generation.
    fn publish(&self) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let mut keys = lock(&self.local).clone();
        if let Some(remote) = &self.remote {
            keys.extend(lock(&remote.keys).iter().cloned());
        }
        self.current.store(Arc::new(KeySet { keys, generation }));
    }

    /// Reloads local key files if they changed.
    pub fn reload_files_if_changed(&self) -> bool {
        let now = stamp(&self.config);
        {
            let mut seen = lock(&self.local_stamp);
            if *seen == now {
                return false;
            }
            *seen = now;
        }
        match load_local(&self.config) {
            Ok(keys) => {
                *lock(&self.local) = keys;
                self.publish();
                tracing::info!("local verification keys reloaded");
                true
            }
            Err((var, e)) => {
                tracing::error!(variable = var, error = %e, "changed key file refused; the previous keys stay in force");
                false
            }
        }
    }

    /// A token named a `kid` no key has: refetch the remote set unless one
    /// was fetched within `min_refresh`. Concurrent callers share one fetch.
    pub async fn refresh_for_unknown_kid(&self) {
        let Some(remote) = &self.remote else { return };
        let mut last = remote.last_fetch.lock().await;
        if last.elapsed() < remote.min_refresh {
            return;
        }
        *last = Instant::now();
        if let Err(e) = self.fetch().await {
            tracing::warn!(error = %e, "JWKS refresh failed; keeping the previous keys");
        }
    }

    async fn periodic_refresh(&self) {
        let Some(remote) = &self.remote else { return };
        let mut last = remote.last_fetch.lock().await;
        *last = Instant::now();
        if let Err(e) = self.fetch().await {
            tracing::warn!(error = %e, "JWKS refresh failed; keeping the previous keys");
        }
    }

    /// Fetches the remote set and swaps it in (the caller holds `last_fetch`).
    async fn fetch(&self) -> Result<(), String> {
        let remote = self.remote.as_ref().expect("fetch needs a remote");
        let uri = &remote.uri;
        // What errors and logs show: the URL without a password in it.
        let shown = crate::model::spec::redacted_address(uri);
        let response = remote
            .client
            .get(uri)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("fetching {shown}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("fetching {shown}: HTTP {}", response.status()));
        }
        if response.content_length().is_some_and(|n| n as usize > MAX_JWKS_BYTES) {
            return Err(format!("{shown}: larger than {MAX_JWKS_BYTES} bytes"));
        }
        let body = response.bytes().await.map_err(|e| format!("fetching {shown}: {e}"))?;
        if body.len() > MAX_JWKS_BYTES {
            return Err(format!("{shown}: larger than {MAX_JWKS_BYTES} bytes"));
        }
        let keys = parse_jwks(&body).map_err(|e| format!("{shown}: {e}"))?;
        let digest: [u8; 32] = Sha256::digest(&body).into();
        {
            let mut last = lock(&remote.digest);
            if *last == digest {
                return Ok(());
            }
            *last = digest;
        }
        let kids: Vec<String> = keys.iter().filter_map(|k| k.kid.clone()).collect();
        *lock(&remote.keys) = keys;
        self.publish();
        tracing::info!(uri = %shown, ?kids, "JWKS loaded");
        Ok(())
    }
}

/// Keys from the JWKS file, the PEM files and the HMAC secret.
fn load_local(config: &KeyConfig) -> Result<Vec<Arc<VerifyKey>>, (&'static str, String)> {
    let mut out = Vec::new();
    if let Some(path) = &config.jwks_file {
        let text = std::fs::read(path).map_err(|e| ("STATEGATE_JWKS_FILE", format!("cannot read {}: {e}", path.display())))?;
        let keys = parse_jwks(&text).map_err(|e| ("STATEGATE_JWKS_FILE", format!("{}: {e}", path.display())))?;
        if keys.is_empty() {
            return Err(("STATEGATE_JWKS_FILE", format!("{}: no usable signing key", path.display())));
        }
        out.extend(keys);
    }
    for path in &config.public_key_files {
        let text = std::fs::read(path)
            .map_err(|e| ("STATEGATE_JWT_PUBLIC_KEY_FILES", format!("cannot read {}: {e}", path.display())))?;
        let keys = parse_pem(&text).map_err(|e| ("STATEGATE_JWT_PUBLIC_KEY_FILES", format!("{}: {e}", path.display())))?;
        out.extend(keys);
    }
    if let Some(secret) = &config.hmac_secret {
        if secret.len() < 32 {
            return Err(("STATEGATE_JWT_HMAC_SECRET", "must be at least 32 bytes".into()));
        }
        out.push(Arc::new(VerifyKey {
            kid: None,
            key: DecodingKey::from_secret(secret),
            algs: vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        }));
    }
    Ok(out)
}

fn stamp(config: &KeyConfig) -> FileStamp {
    config
        .jwks_file
        .iter()
        .chain(config.public_key_files.iter())
        .map(|p| {
            let meta = std::fs::metadata(p).ok();
            (p.clone(), meta.as_ref().and_then(|m| m.modified().ok()), meta.map(|m| m.len()).unwrap_or(0))
        })
        .collect()
}

async fn watch_files(store: Weak<KeyStore>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(store) = store.upgrade() else { return };
        let _ = tokio::task::spawn_blocking(move || store.reload_files_if_changed()).await;
    }
}

async fn refresh_periodically(store: Weak<KeyStore>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(store) = store.upgrade() else { return };
        store.periodic_refresh().await;
    }
}

/// The signing keys of a JWKS document. Keys this gateway cannot or must not
/// use (encryption keys, `oct` secrets, unknown types or curves) are skipped
/// with a warning, so one odd key does not make the whole set unusable.
pub fn parse_jwks(text: &[u8]) -> Result<Vec<Arc<VerifyKey>>, String> {
    let doc: Value = serde_json::from_slice(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let list = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("not a JSON Web Key Set (no \"keys\" array)")?;
    let mut out = Vec::new();
    for (i, raw) in list.iter().enumerate() {
        match jwk_key(raw) {
            Ok(key) => out.push(Arc::new(key)),
            Err(why) => tracing::warn!(index = i, kid = ?raw.get("kid"), %why, "skipping JWKS key"),
        }
    }
    Ok(out)
}

fn jwk_key(raw: &Value) -> Result<VerifyKey, String> {
    let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|e| format!("not a usable JWK: {e}"))?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key (\"use\": \"enc\")".into());
    }
    let family_algs: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA_ALGS.to_vec(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return Err(format!("unsupported curve {:?}", p.curve)),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => return Err(format!("unsupported curve {:?}", p.curve)),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric (oct) key; HMAC needs STATEGATE_JWT_HMAC_SECRET".into());
        }
        _ => return Err("unsupported key type".into()),
    };
    let algs = match jwk.common.key_algorithm {
        None => family_algs,
        Some(alg) => {
            let alg: Algorithm = alg.to_string().parse().map_err(|_| format!("\"alg\": {alg} is not a signing algorithm"))?;
            if !family_algs.contains(&alg) {
                return Err(format!("\"alg\": {alg:?} does not fit the key type"));
            }
            vec![alg]
        }
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("bad key parameters: {e}"))?;
    Ok(VerifyKey {
        kid: jwk.common.key_id.clone(),
        key,
        algs,
    })
}

const RSA_ALGS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Public keys from a PEM file (RSA, EC P-256/P-384 or Ed25519; several
/// blocks allowed). PEM keys have no `kid`: they are tried for any token
/// whose algorithm fits them.
pub fn parse_pem(text: &[u8]) -> Result<Vec<Arc<VerifyKey>>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "not a PEM text file")?;
    let mut out = Vec::new();
    for block in text.split("-----BEGIN ").skip(1) {
        let pem = format!("-----BEGIN {block}");
        if pem.contains("PRIVATE KEY") {
            return Err("holds a private key; give the public key only".into());
        }
        let key = if let Ok(k) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
            VerifyKey {
                kid: None,
                key: k,
                algs: RSA_ALGS.to_vec(),
            }
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem.as_bytes()) {
            VerifyKey {
                kid: None,
                key: k,
                algs: vec![Algorithm::ES256, Algorithm::ES384],
            }
        } else if let Ok(k) = DecodingKey::from_ed_pem(pem.as_bytes()) {
            VerifyKey {
                kid: None,
                key: k,
                algs: vec![Algorithm::EdDSA],
            }
        } else {
            return Err("a PEM block is not an RSA, EC or Ed25519 public key".into());
        };
        out.push(Arc::new(key));
    }
    if out.is_empty() {
        return Err("no PEM public key found".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_skips_keys_it_must_not_use() {
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "h"},
            {"kty": "RSA", "use": "enc", "n": "sXch", "e": "AQAB", "kid": "e"},
            {"kty": "XYZ", "kid": "x"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "ed"},
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ed"));
        assert_eq!(keys[0].algs, vec![Algorithm::EdDSA]);
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(b"nope").is_err());
    }

    #[test]
    fn jwk_alg_must_fit_the_key() {
        let doc = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "alg": "HS256", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        ]});
        assert!(parse_jwks(doc.to_string().as_bytes()).unwrap().is_empty());
    }
}
