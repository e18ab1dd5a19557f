//! The `auth-jwt-rego` scenario: Get and Set through JWT verification and a
//! Rego request policy, relative to the same calls with auth off.

use super::Relative;
use crate::bench::Bench;
use crate::load::Load;
use crate::report::Row;
use crate::requests::Op;
use crate::tokens::{hmac_secret, hs256_token};
use anyhow::{Context, Result};

impl Bench {
    /// Get and Set with auth on (JWT HS256 + the Rego request policy
    /// examples/policies/read_only_role.rego: a "reader" token for Get, a
    /// "writer" token for Set) on a second gateway sharing the first one's
    /// storage, relative to the first gateway (auth off) in the same run.
    pub(super) async fn auth_all(&mut self) -> Result<Vec<Row>> {
        let dir = tempfile::tempdir()?;
        let policy = dir.path().join("read_only_role.rego");
        std::fs::write(&policy, include_str!("../../../examples/policies/read_only_role.rego"))?;
        let secret = hmac_secret();
        let mut config = self.config.clone();
        config.auth.auth_disabled = self.args.auth_mode == "none";
        config.auth.jwt_hmac_secret = Some(secret.clone());
        if self.args.auth_mode == "jwt-rego" {
            config.auth.request_policy_path = vec![policy];
        } else {
            // Auth on without a request policy refuses every request (deny
            // by default): `jwt` measures the token with the least policy.
            let allow_all = dir.path().join("allow_all.rego");
            std::fs::write(&allow_all, include_str!("../../../examples/policies/allow_all.rego"))?;
            config.auth.request_policy_path = vec![allow_all];
        }
        let storage = self.gateway.gateway.storage().clone();
        let gw = self
            .server_rt
            .spawn(stategate::server::start_with_storage(config, Some(storage)))
            .await?
            .context("starting the gateway with auth on")?;
        let token = |role: &str| hs256_token(&secret, serde_json::json!({"sub": "bench", "roles": [role]}));
        let mut rows = Vec::new();
        for (op, role) in [(Op::Get, "reader"), (Op::Set, "writer")] {
            let tok = token(role)?;
            for &clients in &self.args.auth_clients.clone() {
                let off = Load::new(op, self.args.records);
                let on = Load { token: Some(&tok), ..off };
                rows.push(
                    self.relative(Relative {
                        scenario: format!("auth-{}", op.label()),
                        clients,
                        off: (self.gateway_addr, off),
                        on: (gw.addr, on),
                        target: 0.8,
                        note: format!(
                            "\"ceiling\" = the same calls on the gateway with auth off (same storage, same run); HS256 token with roles [{role}], \
                             request policy read_only_role.rego"
                        ),
                    })
                    .await?,
                );
            }
        }
        self.server_rt.spawn(gw.shutdown()).await?;
        Ok(rows)
    }
}
