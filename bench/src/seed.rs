//! Seeding: records and events appended straight through the `Storage`
//! API (not over gRPC), many in flight so sqlite commits them in groups.

use crate::bench::Bench;
use crate::requests::{DOMAIN, EVENT_KEYS, EVENT_TYPE, RECORD_TYPE, json_values, record_key};
use anyhow::Result;
use futures::StreamExt;
use stategate::model::{AppendRequest, Change, EventKind, Expect, RecordRef};
use std::time::Instant;

impl Bench {
    /// Seeds records and events straight through the Storage API (not over
    /// gRPC), many appends in flight so the writer commits them in batches.
    pub async fn seed(&mut self) -> Result<()> {
        let storage = self.gateway.gateway.storage().clone();
        let plan = [
            (RECORD_TYPE, self.args.records, self.args.records.max(1), 950usize),
            (EVENT_TYPE, self.args.events, EVENT_KEYS, 100usize),
        ];
        for (ty, count, keys, filler) in plan {
            if count == 0 {
                continue;
            }
            let line = self.seed_into(&storage, ty, count, keys, filler).await?;
            eprintln!("   {line}");
            self.seeding.push(line);
        }
        Ok(())
    }

    /// Appends `count` events of `bench/<ty>` over `keys` keys
    /// (`record_key`), `filler` bytes of payload each, 2048 in flight.
    pub async fn seed_into(&self, storage: &stategate::storage::DynStorage, ty: &str, count: usize, keys: usize, filler: usize) -> Result<String> {
        self.seed_range(storage, ty, 0..count, keys, filler).await
    }

    /// The appends `range` of such a seeding (event `i` writes key
    /// `i % keys`, values of `i`), so a store can be grown step by step.
    pub async fn seed_range(
        &self,
        storage: &stategate::storage::DynStorage,
        ty: &str,
        range: std::ops::Range<usize>,
        keys: usize,
        filler: usize,
    ) -> Result<String> {
        let count = range.len();
        let t0 = Instant::now();
        let mut appends = futures::stream::iter(range)
            .map(|i| {
                let storage = storage.clone();
                let req = AppendRequest {
                    id: uuid::Uuid::now_v7().to_string(),
                    record: RecordRef {
                        domain: DOMAIN.into(),
                        ty: ty.into(),
                        key: record_key(i % keys.max(1)),
                    },
                    change: Change::Put(json_values(i as u64, filler).into()),
                    expect: Expect::Any,
                    kind: EventKind::Set,
                    method: "/stategate.StateService/Set".into(),
                    claims: Default::default(),
                    time: stategate::model::now_nanos(),
                    idempotency: None,
                };
                // Spawned on the server runtime: seeding is not client load.
                self.server_rt.spawn(async move { storage.append(req).await })
            })
            .buffer_unordered(2048);
        while let Some(r) = appends.next().await {
            r?.map_err(|e| anyhow::anyhow!("seeding {}: {e}", storage.name()))?;
        }
        let secs = t0.elapsed().as_secs_f64();
        Ok(format!(
            "{count} {} appended through the Storage API of {} (2048 in flight{}) in {secs:.1} s ({:.0}/s)",
            if ty == EVENT_TYPE { "events" } else { "records" },
            storage.name(),
            if storage.name() == "sqlite" { ", group commit" } else { "" },
            count as f64 / secs
        ))
    }
}
