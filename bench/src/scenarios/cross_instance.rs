//! The `<channel>-cross-instance` scenarios (redis, nats, nats-jetstream,
//! stan, kafka, rabbitmq): a writer on one gateway, subscribers on another,
//! the two joined by a real broker, relative to the same fan-out on one
//! gateway with the `inmem` channel.

use crate::bench::Bench;
use crate::measure::{anon_rss_mib, reset_peak, rss_mib};
use crate::report::Row;
use anyhow::Result;
use std::time::Duration;

impl Bench {
    /// The channel object of a scenario (a fresh prefix, topic or stream
    /// per run where the broker keeps them apart; RabbitMQ exchanges are
    /// durable, so all runs share `stategate-bench`), and the `host:port`
    /// to check first.
    fn cross_channel(&self, channel: &str, prefix: &str) -> (serde_json::Value, String) {
        use serde_json::json;
        let a = &self.args;
        match channel {
            "redis" => (json!({"name": "redis", "addr": a.redis_addr, "prefix": prefix}), a.redis_addr.clone()),
            "nats" => (json!({"name": "nats", "addr": a.nats_addr, "prefix": prefix}), a.nats_addr.clone()),
            // In memory and kept ten minutes: runs leave nothing that lasts.
            "nats-jetstream" => (
                json!({"name": "nats", "addr": a.nats_addr, "prefix": prefix, "jetstream": true, "storage": "memory", "max_age_secs": 600}),
                a.nats_addr.clone(),
            ),
            "stan" => (json!({"name": "stan", "addr": a.nats_addr, "cluster": "bench", "prefix": prefix}), a.nats_addr.clone()),
            "kafka" => (json!({"name": "kafka", "addr": a.kafka_addr, "topic": prefix}), a.kafka_addr.clone()),
            "rabbitmq" => {
                let hostport = url::Url::parse(&a.amqp_addr)
                    .ok()
                    .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port().unwrap_or(5672))))
                    .unwrap_or_else(|| a.amqp_addr.clone());
                (json!({"name": "rabbitmq", "addr": a.amqp_addr, "exchange": "stategate-bench"}), hostport)
            }
            other => unreachable!("no cross-instance channel {other}"),
        }
    }

    /// Two more gateways (A and B) on `channel` sharing the first gateway's
    /// storage (one `DynStorage` in this process): one writer on A, N
    /// subscribers on B; compared with the same load on the first gateway
    /// alone (inmem channel).
    pub(super) async fn cross_instance(&mut self, channel: &'static str) -> Result<Vec<Row>> {
        let name = format!("{channel}-cross-instance");
        let subs = self.args.cross_subscribers;
        let prefix = format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let (spec, addr) = self.cross_channel(channel, &prefix);
        let skipped = |why: String| {
            eprintln!("   {name}: skipped: {why}");
            Ok(vec![Row { scenario: name.clone(), clients: Some(subs), note: format!("skipped: {why}"), ..Row::default() }])
        };
        if let Err(e) = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|r| r.map_err(anyhow::Error::from))
        {
            return skipped(format!("{channel} at {addr} not reachable: {e}"));
        }
        let mut config = self.config.clone();
        config.channel_provider = Some(stategate::channel::ChannelSpec::parse(&spec.to_string())?);
        let storage = self.gateway.gateway.storage().clone();
        let mut started = Vec::new();
        for _ in 0..2 {
            let start = stategate::server::start_with_storage(config.clone(), Some(storage.clone()));
            match self.server_rt.spawn(tokio::time::timeout(Duration::from_secs(10), start)).await? {
                Ok(Ok(g)) => started.push(g),
                Ok(Err(e)) => return skipped(format!("starting a gateway on {channel} at {addr}: {e:#}")),
                Err(_) => return skipped(format!("starting a gateway on {channel} at {addr} timed out")),
            }
        }
        let rate = (self.args.fanout_deliveries / subs as f64).max(1.0);
        reset_peak();
        let x = self.fanout(started[0].addr, started[1].addr, subs, rate, 0).await?;
        let (peak, anon) = (rss_mib().1, anon_rss_mib());
        let one = self.fanout(self.gateway_addr, self.gateway_addr, subs, rate, 0).await?;
        for g in started {
            self.server_rt.spawn(g.shutdown()).await?;
        }
        Ok(vec![Row {
            scenario: name,
            clients: Some(subs),
            peak_rss_mib: Some(peak),
            anon_rss_mib: Some(anon),
            errors: x.errors,
            note: format!(
                "{rate:.0} writes/s on instance A x {subs} subscribers on instance B ({channel} at {addr}, prefix/topic {prefix}; A and B share \
                 one sqlite storage in this process); ops/s = delivered events/s; latency = write call start on A to delivery from B; \
                 \"ceiling\" = the same load on one instance with the inmem channel; CPU µs/op = per delivery{}",
                x.first_error.as_ref().map(|e| format!("; {e}")).unwrap_or_default()
            ),
            ..Row::compared(&x, &one)
        }])
    }
}
