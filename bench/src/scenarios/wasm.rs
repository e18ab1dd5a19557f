//! The `wasm-provider` scenario: the wasm extension points against their
//! native counterparts, in the same run, with the same clients.
//!
//! - storage: `Get` and `Set` on a gateway whose storage is the
//!   `guest-providers/fs-storage` component, against a gateway on a fresh
//!   embedded sqlite; both seeded with the same records;
//! - policy: `Get` on a gateway running the `guest-policies/tenant-isolation`
//!   hook for the `bench` domain, against the same gateway without the hook
//!   (both verify the same HS256 token, which carries the tenant claim the
//!   hook checks; both share the first gateway's storage).

use super::Relative;
use crate::bench::Bench;
use crate::load::Load;
use crate::report::Row;
use crate::requests::{DOMAIN, Op, RECORD_TYPE};
use crate::tokens::{hmac_secret, hs256_token};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

const STORAGE_GUEST: &str = "fs_storage.wasm";
const POLICY_GUEST: &str = "tenant_isolation.wasm";
const TARGET: f64 = 0.6;

/// The directory with the guests: `--guests`, else the output of
/// scripts/build-guests (run first; it rebuilds only what changed), holding
/// every file of `needed`. The error says what is missing and how to get it.
pub(super) fn guests(given: Option<&Path>, needed: &[&str]) -> Result<PathBuf, String> {
    let dir = match given {
        Some(d) => d.to_path_buf(),
        None => {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
            let script = root.join("scripts/build-guests");
            eprintln!("   running {} (pass --guests DIR to skip)", script.display());
            match std::process::Command::new(&script).current_dir(&root).env("CARGO_TARGET_DIR", &target).status() {
                Ok(st) if st.success() => {}
                Ok(st) => eprintln!("   scripts/build-guests failed ({st}); looking for guests built earlier"),
                Err(e) => eprintln!("   cannot run {}: {e}; looking for guests built earlier", script.display()),
            }
            target.join("guests/out")
        }
    };
    let missing: Vec<_> = needed.iter().filter(|g| !dir.join(g).is_file()).copied().collect();
    if !missing.is_empty() {
        return Err(format!(
            "wasm guests not found: {} missing in {} (build them with scripts/build-guests, or pass --guests DIR)",
            missing.join(", "),
            dir.display()
        ));
    }
    dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))
}

impl Bench {
    pub(super) async fn wasm_provider(&mut self) -> Result<Vec<Row>> {
        let dir = match guests(self.args.guests.as_deref(), &[STORAGE_GUEST, POLICY_GUEST]) {
            Ok(d) => d,
            Err(why) => {
                eprintln!("   wasm-provider: skipped: {why}");
                return Ok(["wasm-storage-get", "wasm-storage-set", "wasm-policy-get"]
                    .into_iter()
                    .map(|name| Row { scenario: name.into(), note: format!("skipped: {why}"), ..Row::default() })
                    .collect());
            }
        };
        let mut rows = self.wasm_storage(&dir).await?;
        rows.extend(self.wasm_policy(&dir).await?);
        Ok(rows)
    }

    /// A gateway config for the extra gateways: the first gateway's, with
    /// its own data dir and a compiled-component cache that outlives the
    /// run (keyed by the file's hash, so a rebuilt guest is recompiled).
    pub(super) fn wasm_config(&self, data: &Path) -> stategate::config::Config {
        let mut c = self.config.clone();
        c.data_dir = data.to_path_buf();
        c.wasm_cache_dir = Some(std::env::temp_dir().join("stategate-bench-wasm-cache"));
        c
    }

    async fn wasm_storage(&mut self, guests: &Path) -> Result<Vec<Row>> {
        let data = tempfile::Builder::new().prefix("stategate-bench-wasm").tempdir_in(&self.data_base)?;
        let (native_dir, wasm_dir, fs) = (data.path().join("sqlite"), data.path().join("wasm"), data.path().join("wasm/fs"));
        for d in [&native_dir, &fs] {
            std::fs::create_dir_all(d)?;
        }
        let native = self
            .server_rt
            .spawn(stategate::server::start(self.wasm_config(&native_dir)))
            .await?
            .context("starting the sqlite gateway")?;
        let mut config = self.wasm_config(&wasm_dir);
        config.storage_provider = Some(stategate::storage::StorageSpec::parse(
            &serde_json::json!({"name": "wasm", "path": guests.join(STORAGE_GUEST), "grants": {"dir": fs}}).to_string(),
        )?);
        let wasm = self
            .server_rt
            .spawn(stategate::server::start(config))
            .await?
            .context("starting the gateway on the wasm storage provider")?;
        let records = self.args.wasm_records.max(1);
        for g in [&native, &wasm] {
            let line = self.seed_into(g.gateway.storage(), RECORD_TYPE, records, records, 950).await?;
            eprintln!("   {line}");
            self.seeding.push(line);
        }
        let mut rows = Vec::new();
        for op in [Op::Get, Op::Set] {
            for &clients in &self.args.wasm_clients.clone() {
                let load = Load::new(op, records);
                rows.push(
                    self.relative(Relative {
                        scenario: format!("wasm-storage-{}", op.label()),
                        clients,
                        off: (native.addr, load),
                        on: (wasm.addr, load),
                        target: TARGET,
                        note: format!(
                            "storage = the {STORAGE_GUEST} guest (one instance, calls one at a time, fsync per append; {records} records); \
                             \"ceiling\" = the same calls on a gateway with a fresh embedded sqlite holding the same records (same run)"
                        ),
                    })
                    .await?,
                );
            }
        }
        for g in [native, wasm] {
            self.server_rt.spawn(g.shutdown()).await?;
        }
        Ok(rows)
    }

    async fn wasm_policy(&mut self, guests: &Path) -> Result<Vec<Row>> {
        let data = tempfile::Builder::new().prefix("stategate-bench-hook").tempdir_in(&self.data_base)?;
        let secret = hmac_secret();
        let mut plain = self.wasm_config(data.path());
        plain.auth.auth_disabled = false;
        plain.auth.jwt_hmac_secret = Some(secret.clone());
        // Auth on without a request policy refuses every request (deny by
        // default): both gateways carry v0.5.0's allow-all policy, so they
        // differ by the hook alone.
        plain.auth.request_policy = Some("cGFja2FnZSBzdGF0ZWdhdGUuYXV0aHoKCmRlZmF1bHQgYWxsb3cgPSB0cnVl".into());
        let mut hooked = plain.clone();
        hooked.auth.policy_hooks = Some(serde_json::json!({ DOMAIN: {"path": guests.join(POLICY_GUEST)} }).to_string());
        let storage = self.gateway.gateway.storage().clone();
        let mut started = Vec::new();
        for c in [plain, hooked] {
            let g = self
                .server_rt
                .spawn(stategate::server::start_with_storage(c, Some(storage.clone())))
                .await?
                .context("starting a gateway for the wasm policy hook")?;
            started.push(g);
        }
        let token = hs256_token(&secret, serde_json::json!({"sub": "bench", "tenant": DOMAIN}))?;
        let mut rows = Vec::new();
        for &clients in &self.args.wasm_clients.clone() {
            let load = Load { token: Some(&token), ..Load::new(Op::Get, self.args.records) };
            rows.push(
                self.relative(Relative {
                    scenario: "wasm-policy-get".into(),
                    clients,
                    off: (started[0].addr, load),
                    on: (started[1].addr, load),
                    target: TARGET,
                    note: format!(
                        "hook = the {POLICY_GUEST} guest for domain {DOMAIN} (request and response checks); \"ceiling\" = the same gateway \
                         without the hook; both run the allow-all request policy and verify the same HS256 token (tenant claim {DOMAIN}) and share the first gateway's storage"
                    ),
                })
                .await?,
            );
        }
        for g in started {
            self.server_rt.spawn(g.shutdown()).await?;
        }
        Ok(rows)
    }
}
