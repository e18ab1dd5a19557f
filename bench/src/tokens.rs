//! HS256 tokens for the gateways that verify them (auth and wasm policy
//! scenarios), made in-process.

use anyhow::Result;

/// A fresh random HMAC secret for a gateway started by a scenario.
pub fn hmac_secret() -> String {
    format!("bench-{}-{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// An HS256 token with these claims, valid for an hour.
pub fn hs256_token(secret: &str, mut claims: serde_json::Value) -> Result<String> {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() + 3600;
    claims["exp"] = exp.into();
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}
