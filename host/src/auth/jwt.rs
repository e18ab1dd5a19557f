//! Token verification: `authorization: Bearer <JWT>` into verified claims.
//!
//! The header's `alg` only selects among what the keys allow (see `jwks`);
//! `alg: none` does not parse. `exp` is required and checked with `nbf`
//! (both with a small leeway), `iss`/`aud` when configured. There is no
//! path that returns claims from a token whose signature was not verified.
//!
//! A verified token is remembered, keyed by its SHA-256, until its `exp` or
//! until the key set changes, so a hot client pays for one signature check
//! per token, not per call. Refusals are never cached.

use super::jwks::{KeySet, KeyStore, VerifyKey};
use super::Metadata;
use crate::model::{Claims, Result, TokenRefusal};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Validation, decode, decode_header};
use lru::LruCache;
use sha2::{Digest, Sha256};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct VerifyConfig {
    pub issuers: Vec<String>,
    pub audiences: Vec<String>,
    pub leeway_secs: u64,
    pub cache_size: usize,
}

struct Cached {
    claims: Claims,
    /// `exp`, seconds since the epoch.
    exp: u64,
    generation: u64,
}

pub struct Verifier {
    keys: Arc<KeyStore>,
    config: VerifyConfig,
    cache: Option<Mutex<LruCache<[u8; 32], Cached>>>,
}

/// Most keys tried for a token without `kid` (or against kid-less keys).
const MAX_CANDIDATES: usize = 8;

impl Verifier {
    pub fn new(keys: Arc<KeyStore>, config: VerifyConfig) -> Self {
        let cache = NonZeroUsize::new(config.cache_size).map(|n| Mutex::new(LruCache::new(n)));
        Verifier { keys, config, cache }
    }

    /// The bearer token of a call: `authorization: Bearer <token>` only
    /// (the scheme is case-insensitive, as RFC 6750 allows).
    pub fn bearer(metadata: &Metadata) -> Result<&str> {
        let value = metadata.get("authorization").ok_or_else(|| TokenRefusal::Missing.error())?;
        let (scheme, token) = value.trim().split_once(' ').ok_or_else(|| TokenRefusal::Missing.error())?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(TokenRefusal::Missing.error());
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenRefusal::Missing.error());
        }
        Ok(token)
    }

    pub async fn authenticate(&self, metadata: &Metadata) -> Result<Claims> {
        let token = Self::bearer(metadata)?;
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(cache) = &self.cache {
            let generation = self.keys.current().generation;
            let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
            match cache.get(&hash) {
                Some(c) if c.exp > now && c.generation == generation => return Ok(c.claims.clone()),
                Some(_) => {
                    cache.pop(&hash);
                }
                None => {}
            }
        }
        let keys = self.keys.current();
        let (claims, generation) = match self.verify(token, &keys) {
            Err(TokenRefusal::UnknownKey) => {
                self.keys.refresh_for_unknown_kid().await;
                let keys = self.keys.current();
                (self.verify(token, &keys).map_err(TokenRefusal::error)?, keys.generation)
            }
            other => (other.map_err(TokenRefusal::error)?, keys.generation),
        };
        if let Some(cache) = &self.cache {
            let exp = claims.get("exp").and_then(serde_json::Value::as_u64).unwrap_or(0);
            if exp > now {
                let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
                cache.put(
                    hash,
                    Cached {
                        claims: claims.clone(),
                        exp,
                        generation,
                    },
                );
            }
        }
        Ok(claims)
    }

    /// Verifies the token against the keys that may verify it.
    fn verify(&self, token: &str, keys: &KeySet) -> std::result::Result<Claims, TokenRefusal> {
        let header = decode_header(token).map_err(|e| match e.kind() {
            // An algorithm the library does not know ("none" among them).
            ErrorKind::Json(_) if token_alg_is_foreign(token) => TokenRefusal::Algorithm,
            _ => TokenRefusal::Malformed,
        })?;
        let alg = header.alg;
        let fits = |k: &&Arc<VerifyKey>| k.algs.contains(&alg);
        let mut kid_unknown = false;
        let candidates: Vec<&Arc<VerifyKey>> = match header.kid.as_deref() {
            Some(kid) => {
                let named: Vec<_> = keys.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).collect();
                if named.is_empty() {
                    kid_unknown = true;
                    // No key has this kid: kid-less keys (PEM files, the
                    // HMAC secret) may still verify it.
                    let kidless: Vec<_> = keys.keys.iter().filter(|k| k.kid.is_none()).filter(fits).collect();
                    if kidless.is_empty() {
                        return Err(TokenRefusal::UnknownKey);
                    }
                    kidless
                } else {
                    named.into_iter().filter(fits).collect()
                }
            }
            None => keys.keys.iter().filter(fits).collect(),
        };
        if candidates.is_empty() {
            return Err(TokenRefusal::Algorithm);
        }
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = self.config.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if !self.config.issuers.is_empty() {
            validation.set_issuer(&self.config.issuers);
            validation.required_spec_claims.insert("iss".into());
        }
        if self.config.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.config.audiences);
            validation.required_spec_claims.insert("aud".into());
        }
        let mut last = TokenRefusal::BadSignature;
        for key in candidates.into_iter().take(MAX_CANDIDATES) {
            // Defence in depth: the allow-list above already holds.
            debug_assert!(key.algs.contains(&alg));
            match decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature
                        | ErrorKind::InvalidEcdsaKey
                        | ErrorKind::InvalidEddsaKey
                        | ErrorKind::InvalidRsaKey(_)
                        | ErrorKind::InvalidKeyFormat => TokenRefusal::BadSignature,
                        ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => TokenRefusal::Algorithm,
                        ErrorKind::ExpiredSignature => return Err(TokenRefusal::Expired),
                        ErrorKind::ImmatureSignature => return Err(TokenRefusal::NotYetValid),
                        ErrorKind::InvalidIssuer => return Err(TokenRefusal::Issuer),
                        ErrorKind::InvalidAudience => return Err(TokenRefusal::Audience),
                        ErrorKind::MissingRequiredClaim(c) if c == "iss" => return Err(TokenRefusal::Issuer),
                        ErrorKind::MissingRequiredClaim(c) if c == "aud" => return Err(TokenRefusal::Audience),
                        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) | ErrorKind::InvalidSubject => {
                            return Err(TokenRefusal::Claims);
                        }
                        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => TokenRefusal::Malformed,
                        ErrorKind::Json(_) => TokenRefusal::Claims,
                        _ => TokenRefusal::BadSignature,
                    };
                }
            }
        }
        if kid_unknown && last == TokenRefusal::BadSignature {
            // Kid-less keys did not verify a token naming a kid no key has:
            // report (and refresh for) the unknown kid.
            return Err(TokenRefusal::UnknownKey);
        }
        Err(last)
    }
}

/// Whether the token's header names an algorithm (such as `none`) at all:
/// then it parsed as JSON but the algorithm is foreign.
fn token_alg_is_foreign(token: &str) -> bool {
    use base64::Engine;
    let Some(head) = token.split('.').next() else { return false };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(head.trim_end_matches('=')) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("alg").map(|a| a.is_string()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Error;

    fn refusal(e: Error) -> Option<TokenRefusal> {
        match e {
            Error::Unauthenticated { reason, .. } => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn bearer_only_from_the_authorization_header() {
        let md = |k: &str, v: &str| Metadata::from([(k.to_owned(), v.to_owned())]);
        assert_eq!(Verifier::bearer(&md("authorization", "Bearer abc")).unwrap(), "abc");
        assert_eq!(Verifier::bearer(&md("authorization", "bearer abc")).unwrap(), "abc");
        for bad in [md("authorization", "Basic abc"), md("authorization", "Bearer "), md("x-token", "Bearer abc"), Metadata::new()] {
            assert_eq!(refusal(Verifier::bearer(&bad).unwrap_err()), Some(TokenRefusal::Missing));
        }
    }
}
