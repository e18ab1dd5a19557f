//! The `consumer-group` scenario (issue 24): a consumer group on the
//! bench's gateway (embedded sqlite). Throughput: a backlog of
//! `--group-events` events over 100 records is written first, then a group
//! created at the position before it is drained by 1, 4 and 16 members
//! (one connection each), each acknowledging every event as it arrives
//! (one `Ack` call per event); events/s from the first member joining to
//! the last ack. Redelivery: a member nacks each event it gets and the
//! other member receives it; the time from the nack call to that receipt.

use crate::bench::Bench;
use crate::load::connect;
use crate::report::Row;
use anyhow::{Context, Result};
use futures::StreamExt;
use hdrhistogram::Histogram;
use stategate::proto::{self as pb, event_service_client::EventServiceClient, state_service_client::StateServiceClient};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RECORDS: usize = 100;
const REDELIVERIES: usize = 200;
/// Hang guard of one level.
const LIMIT: Duration = Duration::from_secs(300);

impl Bench {
    pub(super) async fn consumer_group(&mut self) -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        for members in [1usize, 4, 16] {
            rows.push(self.group_throughput(members).await?);
        }
        rows.push(self.group_redelivery().await?);
        Ok(rows)
    }

    async fn group_throughput(&self, members: usize) -> Result<Row> {
        let events = self.args.group_events;
        let ty = format!("grp{members}");
        let mut st = StateServiceClient::new(connect(self.gateway_addr).await?);
        let first = st.set(state(&ty, 0, 0)).await?.into_inner().sequence;
        for i in 0..events {
            st.set(state(&ty, i % RECORDS, i)).await?;
        }
        let opts = pb::StreamOpts {
            domain: "bench".into(),
            r#type: ty.clone(),
            group: "g".into(),
            after_sequence: Some(first),
            ack_timeout_ms: 60_000,
            max_in_flight: 64,
            ..Default::default()
        };
        let acked = Arc::new(Mutex::new(HashSet::new()));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for m in 0..members {
            let channel = connect(self.gateway_addr).await?;
            let opts = pb::StreamOpts { member: format!("m{m}"), ..opts.clone() };
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                let mut events = EventServiceClient::new(channel.clone());
                let mut acks = EventServiceClient::new(channel);
                let mut stream = events.stream(opts).await?.into_inner();
                while let Some(e) = stream.next().await {
                    let e = e?;
                    let req = pb::AckRequest { domain: "bench".into(), r#type: e.state.unwrap().r#type, group: "g".into(), event_ids: vec![e.id.clone()], nack: false };
                    acks.ack(req).await?;
                    acked.lock().unwrap().insert(e.id);
                }
                anyhow::Ok(())
            }));
        }
        let deadline = Instant::now() + LIMIT;
        while acked.lock().unwrap().len() < events {
            if Instant::now() >= deadline || tasks.iter().all(|t| t.is_finished()) {
                let mut why = Vec::new();
                for t in tasks.iter_mut().filter(|t| t.is_finished()) {
                    match t.await {
                        Ok(Ok(())) => why.push("a member's stream ended".to_owned()),
                        Ok(Err(e)) => why.push(format!("a member failed: {e:#}")),
                        Err(e) => why.push(format!("a member panicked: {e}")),
                    }
                }
                anyhow::bail!(
                    "consumer group of {members}: {} of {events} events acknowledged after {:?}; {}",
                    acked.lock().unwrap().len(),
                    started.elapsed(),
                    if why.is_empty() { "every member still streaming".to_owned() } else { why.join("; ") }
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        for t in tasks {
            t.abort();
        }
        Ok(Row {
            scenario: "consumer-group".into(),
            clients: Some(members),
            ops_per_sec: Some(events as f64 / secs),
            note: format!(
                "{members} member(s) draining a backlog of {events} events over {RECORDS} records, one Ack call per event \
                 (max_in_flight 64): events acknowledged per second; every claim and ack is a compare-and-set of the group's document"
            ),
            ..Row::default()
        })
    }

    async fn group_redelivery(&self) -> Result<Row> {
        let ty = "grpredeliver".to_owned();
        let mut st = StateServiceClient::new(connect(self.gateway_addr).await?);
        let opts = |member: &str| pb::StreamOpts {
            domain: "bench".into(),
            r#type: ty.clone(),
            group: "r".into(),
            member: member.into(),
            ack_timeout_ms: 60_000,
            max_deliveries: 1000,
            max_in_flight: 1,
            ..Default::default()
        };
        let ch = connect(self.gateway_addr).await?;
        let mut ev = EventServiceClient::new(ch.clone());
        let mut a = ev.stream(opts("a")).await?.into_inner();
        let mut b = ev.stream(opts("b")).await?.into_inner();
        let mut hist = Histogram::<u64>::new(3)?;
        for i in 0..REDELIVERIES {
            st.set(state(&ty, i, i)).await?;
            // Whichever member got it nacks; the other receives it again.
            let (first, then) = tokio::select! {
                e = next(&mut a) => (e?, &mut b),
                e = next(&mut b) => (e?, &mut a),
            };
            let nacked = Instant::now();
            let req = pb::AckRequest { domain: "bench".into(), r#type: ty.clone(), group: "r".into(), event_ids: vec![first.id.clone()], nack: true };
            ev.ack(req.clone()).await?;
            let again = next(then).await?;
            hist.record(nacked.elapsed().as_micros() as u64)?;
            anyhow::ensure!(again.id == first.id, "another event came first");
            ev.ack(pb::AckRequest { nack: false, ..req }).await?;
        }
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        Ok(Row {
            scenario: "consumer-group-redelivery".into(),
            clients: Some(2),
            p50_ms: Some(ms(0.5)),
            p99_ms: Some(ms(0.99)),
            p999_ms: Some(ms(0.999)),
            note: format!(
                "{REDELIVERIES} events, each nacked by the member that got it: time from the Nack call to the other member's \
                 receipt (both members on this instance; a timeout-driven redelivery adds ack_timeout_ms)"
            ),
            ..Row::default()
        })
    }
}

/// The stream's next event, bounded by the hang guard.
async fn next(s: &mut tonic::Streaming<pb::Event>) -> Result<pb::Event> {
    tokio::time::timeout(LIMIT, s.next()).await.context("no delivery")?.context("the stream ended")?.map_err(anyhow::Error::from)
}

fn state(ty: &str, record: usize, i: usize) -> pb::State {
    let fields = [("i".to_owned(), prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(i as f64)) })];
    pb::State {
        domain: "bench".into(),
        r#type: ty.into(),
        key: format!("k{record}"),
        values: Some(prost_types::Struct { fields: fields.into_iter().collect() }),
        ..Default::default()
    }
}
