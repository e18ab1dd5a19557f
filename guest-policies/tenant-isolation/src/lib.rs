//! Tenant isolation: a caller may only touch the domain named by its token's
//! tenant claim (config `claim`, default `tenant`), and a response may only
//! carry records of that domain.
//!
//! The input is scanned, not parsed into a JSON tree: stored `values` (the
//! bulk of a response, and the tenant's data, not addressing) are skipped
//! without allocating, and only `domain` strings and the claim are kept.

wit_bindgen::generate!({
    path: "../../wit",
    world: "policy-hook",
});

use exports::stategate::gateway::policy::{Decision, Guest, ResponseDecision};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use stategate::gateway::host;
use std::fmt;

/// The parts of the policy input this hook reads.
#[derive(Deserialize)]
struct Input {
    #[serde(default)]
    claims: Map<String, Value>,
    #[serde(default)]
    body: Domains,
    #[serde(default)]
    response: Domains,
}

/// Every `domain` string anywhere in a message, except inside `values`.
#[derive(Default)]
struct Domains(Vec<String>);

/// One JSON value while scanning: a string is kept (it may be a domain),
/// anything else contributes the domains found inside it.
enum Scanned {
    Text(String),
    Found(Vec<String>),
}

impl<'de> Deserialize<'de> for Domains {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match d.deserialize_any(ScanVisitor)? {
            Scanned::Text(_) => Domains::default(),
            Scanned::Found(found) => Domains(found),
        })
    }
}

impl<'de> Deserialize<'de> for Scanned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScanVisitor)
    }
}

struct ScanVisitor;

impl<'de> Visitor<'de> for ScanVisitor {
    type Value = Scanned;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Scanned, E> {
        Ok(Scanned::Text(s.to_owned()))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scanned, E> {
        Ok(Scanned::Found(Vec::new()))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Scanned, E> {
        Ok(Scanned::Found(Vec::new()))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Scanned, E> {
        Ok(Scanned::Found(Vec::new()))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scanned, E> {
        Ok(Scanned::Found(Vec::new()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Scanned, E> {
        Ok(Scanned::Found(Vec::new()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scanned, A::Error> {
        let mut found = Vec::new();
        while let Some(item) = seq.next_element::<Scanned>()? {
            if let Scanned::Found(inner) = item {
                found.extend(inner);
            }
        }
        Ok(Scanned::Found(found))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scanned, A::Error> {
        let mut found = Vec::new();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                // Stored values are the tenant's data, not addressing.
                Key::Values => {
                    map.next_value::<IgnoredAny>()?;
                }
                Key::Domain => match map.next_value::<Scanned>()? {
                    Scanned::Text(d) => found.push(d),
                    Scanned::Found(inner) => found.extend(inner),
                },
                Key::Other => {
                    if let Scanned::Found(inner) = map.next_value::<Scanned>()? {
                        found.extend(inner);
                    }
                }
            }
        }
        Ok(Scanned::Found(found))
    }
}

/// An object key, classified without allocating.
enum Key {
    Values,
    Domain,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
                Ok(match s {
                    "values" => Key::Values,
                    "domain" => Key::Domain,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

fn check(input: &str, part: fn(Input) -> Domains) -> Result<(), String> {
    let input: Input = serde_json::from_str(input).map_err(|e| format!("bad policy input: {e}"))?;
    let claim = host::config("claim").unwrap_or_else(|| "tenant".into());
    let Some(tenant) = input.claims.get(&claim).and_then(Value::as_str).map(str::to_owned) else {
        return Err("the token carries no tenant claim".into());
    };
    match part(input).0.into_iter().find(|d| *d != tenant) {
        Some(other) => Err(format!("tenant {tenant:?} may not access domain {other:?}")),
        None => Ok(()),
    }
}

struct Isolation;

impl Guest for Isolation {
    fn authorize_request(input: String) -> Decision {
        match check(&input, |i| i.body) {
            Ok(()) => Decision::Allow,
            Err(reason) => Decision::Deny(reason),
        }
    }

    fn authorize_response(input: String) -> ResponseDecision {
        match check(&input, |i| i.response) {
            Ok(()) => ResponseDecision::Allow,
            Err(reason) => ResponseDecision::Deny(reason),
        }
    }
}

export!(Isolation);
