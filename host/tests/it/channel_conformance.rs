//! The channel conformance suite: every `Channel` provider must pass each
//! check against its real backend. `channel_conformance!(name, factory)`
//! works like `storage_conformance!`; checks use a domain of their own.

use crate::storage_conformance::{unique_domain, values};
use futures::StreamExt;
use serde_json::json;
use stategate::channel::{DynChannel, Subscription};
use stategate::model::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

pub fn event(domain: &str, ty: &str, key: &str, version: u64) -> Event {
    Event {
        id: uuid::Uuid::new_v4().to_string(),
        seq: version,
        record: RecordRef::parse(domain, ty, key).unwrap(),
        values: Some(values(json!({"v": version, "nested": {"s": "✓"}})).into()),
        claims: values(json!({"sub": "tester"})),
        time: stategate::model::now_nanos(),
        version,
        kind: EventKind::Set,
        method: "/stategate.StateService/Set".into(),
    }
}

async fn next(sub: &mut Subscription) -> Event {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("an event arrives in time")
        .expect("the subscription is open")
        .expect("no error")
}

async fn nothing_more(sub: &mut Subscription) {
    if let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        panic!("unexpected delivery: {item:?}");
    }
}

fn topic(d: Option<&str>, t: Option<&str>) -> Topic {
    Topic { domain: d.map(str::to_owned), ty: t.map(str::to_owned) }
}

pub async fn delivers_after_subscribe(c: DynChannel) {
    let d = unique_domain();
    let mut sub = c.subscribe(&topic(Some(&d), Some("t"))).await.unwrap();
    let e = event(&d, "t", "k", 1);
    c.publish(&e).await.unwrap();
    assert_eq!(next(&mut sub).await, e, "the event arrives whole");
    c.ping().await.unwrap();
}

pub async fn filters_by_topic(c: DynChannel) {
    let d = unique_domain();
    let other = unique_domain();
    let mut exact = c.subscribe(&topic(Some(&d), Some("a"))).await.unwrap();
    let mut any_type = c.subscribe(&topic(Some(&d), None)).await.unwrap();
    let mut any_domain = c.subscribe(&topic(None, Some("zz-conformance-b"))).await.unwrap();
    let ea = event(&d, "a", "k", 1);
    let eb = event(&d, "zz-conformance-b", "k", 1);
    let eo = event(&other, "a", "k", 1);
    for e in [&eo, &ea, &eb] {
        c.publish(e).await.unwrap();
    }
    assert_eq!(next(&mut exact).await, ea);
    nothing_more(&mut exact).await;
    // Two records: a channel keeps the order of one record's events only
    // (Kafka's partitions are per record), so either may come first.
    let (first, second) = (next(&mut any_type).await, next(&mut any_type).await);
    assert!((first == ea && second == eb) || (first == eb && second == ea), "{first:?} then {second:?}");
    nothing_more(&mut any_type).await;
    // Other test runs may publish to type zz-conformance-b in other domains.
    let mut got = next(&mut any_domain).await;
    while got.record.domain != d {
        got = next(&mut any_domain).await;
    }
    assert_eq!(got, eb);
}

pub async fn names_with_special_characters(c: DynChannel) {
    // Domains and types may hold any non-space character, including the
    // separators and wildcards of broker subject syntaxes.
    let d = format!("{}.x*>?[]", unique_domain());
    let ty = "a.b/c:*";
    let mut sub = c.subscribe(&topic(Some(&d), Some(ty))).await.unwrap();
    let mut sibling = c.subscribe(&topic(Some(&d), Some("a"))).await.unwrap();
    let e = event(&d, ty, "k.1", 1);
    c.publish(&e).await.unwrap();
    assert_eq!(next(&mut sub).await, e);
    nothing_more(&mut sibling).await;
}

pub async fn keeps_publish_order_and_fans_out(c: DynChannel) {
    let d = unique_domain();
    let t = topic(Some(&d), Some("t"));
    let mut a = c.subscribe(&t).await.unwrap();
    let mut b = c.subscribe(&t).await.unwrap();
    let events: Vec<Event> = (1..=200).map(|v| event(&d, "t", "k", v)).collect();
    for e in &events {
        c.publish(e).await.unwrap();
    }
    for sub in [&mut a, &mut b] {
        for e in &events {
            assert_eq!(next(sub).await.version, e.version, "in publish order");
        }
    }
}

pub async fn dropped_subscription_is_harmless(c: DynChannel) {
    let d = unique_domain();
    let t = topic(Some(&d), Some("t"));
    drop(c.subscribe(&t).await.unwrap());
    let mut live = c.subscribe(&t).await.unwrap();
    let e = event(&d, "t", "k", 1);
    c.publish(&e).await.unwrap();
    assert_eq!(next(&mut live).await, e);
}

#[macro_export]
macro_rules! channel_conformance {
    ($name:ident, $factory:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::channel_conformance as suite;

            async fn channel() -> Option<stategate::channel::DynChannel> {
                $factory.await
            }

            macro_rules! check {
                ($check:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $check() {
                        if let Some(c) = channel().await {
                            suite::$check(c).await;
                        }
                    }
                };
            }

            check!(delivers_after_subscribe);
            check!(filters_by_topic);
            check!(names_with_special_characters);
            check!(keeps_publish_order_and_fans_out);
            check!(dropped_subscription_is_harmless);
        }
    };
}
