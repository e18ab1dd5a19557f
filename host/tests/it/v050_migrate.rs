//! `stategate migrate v050` (issue 20 point 6): data written in v0.5.0's
//! MongoDB layout, on the MongoDB test server, imported into the gateway's
//! storage in the same database (the drop-in case), then read back over
//! gRPC and REST. Covers a record deleted in v0.5.0 (absent), state and
//! events that disagree (reconciled), a dry run, a re-run and a run that
//! was interrupted after part of a record's events.

use crate::harness::{TestGateway, backend_url, http};
use crate::wire::from_struct;
use mongodb::bson::{Document, doc};
use serde_json::{Value, json};
use stategate::model::{AppendRequest, Change, EventKind, Expect, RecordRef};
use stategate::proto as pb;
use std::process::Command;
use tonic::Code;

const T0: i64 = 1_620_000_000_000_000_000;

/// A v0.5.0 event document, as its `SaveEvent` wrote it (numbers as
/// doubles: they came from a `google.protobuf.Struct`).
fn event(id: &str, time: i64, key: &str, values: Document, sub: &str) -> Document {
    doc! {"_id": id, "time": time, "state": {"key": key, "values": values}, "claims": {"sub": sub, "exp": 1.9e9}}
}

fn id(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// The v0.5.0 layout: `acme.user` / `acme.user_events`, `acme.order_events`
/// without states, and `acme.audit_events`, a *states* collection of a type
/// whose name ends in `_events`.
async fn write_v050_fixtures(db: &mongodb::Database) {
    let users = db.collection::<Document>("acme.user");
    let user_events = db.collection::<Document>("acme.user_events");
    // alice: three Sets, state = the last.
    user_events
        .insert_many([
            event(&id(1), T0 + 10, "alice", doc! {"name": "Alice", "age": 30.0}, "a"),
            event(&id(2), T0 + 20, "alice", doc! {"name": "Alice", "age": 31.0, "tags": ["x", 1.5]}, "a"),
            event(&id(3), T0 + 30, "alice", doc! {"name": "Alice B.", "age": 31.0, "tags": ["x", 1.5]}, "b"),
            // bob: one Set.
            event(&id(4), T0 + 15, "bob", doc! {"name": "Bob"}, "b"),
            // dave: two Sets raced, the state document kept the older one.
            event(&id(5), T0 + 40, "dave", doc! {"v": 1.0}, "a"),
            event(&id(6), T0 + 41, "dave", doc! {"v": 2.0}, "a"),
            // erin: the event was saved, the state write failed.
            event(&id(7), T0 + 50, "erin", doc! {"v": 1.0}, "a"),
        ])
        .await
        .unwrap();
    users
        .insert_many([
            doc! {"_id": "alice", "name": "Alice B.", "age": 31.0, "tags": ["x", 1.5]},
            doc! {"_id": "bob", "name": "Bob"},
            doc! {"_id": "dave", "v": 1.0},
            // frank: the state was saved, the event write failed.
            doc! {"_id": "frank", "nested": {"deep": true}},
        ])
        .await
        .unwrap();
    // carol was set, then deleted in v0.5.0: its Del removed the events and
    // the state, so nothing of carol is written here.
    db.collection::<Document>("acme.order_events")
        .insert_one(event(&id(8), T0 + 60, "o-1", doc! {"total": 9.5}, "c"))
        .await
        .unwrap();
    db.collection::<Document>("acme.order").insert_one(doc! {"_id": "o-1", "total": 9.5}).await.unwrap();
    db.collection::<Document>("acme.audit_events").insert_one(doc! {"_id": "a-1", "what": "login"}).await.unwrap();
}

fn migrate(url: &str, database: &str, storage: &str, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(crate::procs::stategate_bin())
        .args(["migrate", "v050", "--from", url, "--database", database])
        .args(extra)
        .env("STATEGATE_STORAGE_PROVIDER", storage)
        .env_remove("STATEGATE_DATA_DIR")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

async fn events_of(gw: &TestGateway, ty: &str, key: &str) -> Vec<pb::Event> {
    gw.event_client()
        .await
        .search(pb::SearchEventOpts { domain: "acme".into(), r#type: ty.into(), key: key.into(), limit: 100, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events
}

async fn values_of(gw: &TestGateway, ty: &str, key: &str) -> Result<Value, Code> {
    let r = gw
        .state_client()
        .await
        .get(pb::StateRef { domain: "acme".into(), r#type: ty.into(), key: key.into(), ..Default::default() })
        .await;
    r.map(|s| from_struct(s.into_inner().values.as_ref().unwrap())).map_err(|e| e.code())
}

#[tokio::test]
async fn v050_mongodb_data_is_imported_once_and_completely() {
    let Some(url) = backend_url("MONGO") else { return };
    let database = format!("v050{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let client = mongodb::Client::with_uri_str(&url).await.unwrap();
    let db = client.database(&database);
    write_v050_fixtures(&db).await;
    // The gateway's storage in the same database, as a drop-in would run.
    let storage = json!({"name": "mongo", "addr": url, "database": database}).to_string();

    // An earlier run was interrupted after alice's first two events.
    {
        let spec = stategate::storage::StorageSpec::parse(&storage).unwrap();
        let wasm = stategate::wasm::WasmRuntime::new(stategate::config::Config::defaults().wasm_settings()).unwrap();
        let target = spec.open(std::path::Path::new("/nonexistent"), &wasm).await.unwrap();
        let alice = RecordRef::parse("acme", "user", "alice").unwrap();
        for (n, (i, age)) in [(1, 30), (2, 31)].into_iter().enumerate() {
            let mut values = serde_json::Map::new();
            values.insert("name".into(), json!("Alice"));
            values.insert("age".into(), json!(age));
            if n == 1 {
                values.insert("tags".into(), json!(["x", 1.5]));
            }
            target
                .append(AppendRequest {
                    id: id(i),
                    record: alice.clone(),
                    change: Change::Put(values.into()),
                    expect: if n == 0 { Expect::Absent } else { Expect::Version(1) },
                    kind: EventKind::Set,
                    method: "/stategate.StateService/Set".into(),
                    claims: serde_json::Map::from_iter([("sub".to_owned(), json!("a")), ("exp".to_owned(), json!(1_900_000_000))]),
                    time: T0 + 10 * (n as i64 + 1),
                    idempotency: None,
                })
                .await
                .unwrap();
        }
        target.close().await.unwrap();
    }

    // A dry run says what it would do and writes nothing.
    let (ok, out, err) = migrate(&url, &database, &storage, &["--dry-run"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("dry run") && out.contains("6 events imported") && out.contains("2 already imported"), "{out}\n{err}");
    assert!(out.contains("3 states reconciled") && out.contains("1 deleted"), "dave, frank and audit_events/a-1; erin: {out}");
    assert!(err.contains("acme.user: would import 5 events of 5 records"), "{err}");
    assert!(err.contains("progress:") && err.contains("events/s"), "plain progress lines when not a terminal: {err}");

    let gw = TestGateway::start_with(|c| c.storage_provider = Some(stategate::storage::StorageSpec::parse(&storage).unwrap())).await;
    assert_eq!(events_of(&gw, "user", "bob").await.len(), 0, "the dry run wrote nothing");
    gw.stop().await;

    // The run finishes the interrupted import.
    let (ok, out, err) = migrate(&url, &database, &storage, &[]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("3 types, 7 records") && out.contains("6 events imported, 2 already imported"), "{out}\n{err}");

    let gw = TestGateway::start_with(|c| c.storage_provider = Some(stategate::storage::StorageSpec::parse(&storage).unwrap())).await;
    // alice: three events, ids, times and claims kept, versions assigned.
    let alice = events_of(&gw, "user", "alice").await;
    assert_eq!(alice.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), vec![id(1), id(2), id(3)]);
    assert_eq!(alice.iter().map(|e| e.time).collect::<Vec<_>>(), vec![T0 + 10, T0 + 20, T0 + 30]);
    assert_eq!(alice.iter().map(|e| e.version).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(from_struct(alice[2].claims.as_ref().unwrap()), json!({"sub": "b", "exp": 1.9e9}), "(gRPC numbers are doubles)");
    // Current states equal v0.5.0's.
    assert_eq!(values_of(&gw, "user", "alice").await, Ok(json!({"name": "Alice B.", "age": 31.0, "tags": ["x", 1.5]})));
    assert_eq!(values_of(&gw, "user", "bob").await, Ok(json!({"name": "Bob"})));
    assert_eq!(values_of(&gw, "user", "dave").await, Ok(json!({"v": 1.0})), "the state document wins");
    assert_eq!(events_of(&gw, "user", "dave").await.len(), 3, "two events and the reconciling Set");
    assert_eq!(values_of(&gw, "user", "erin").await, Err(Code::NotFound), "no state document: deleted");
    assert_eq!(events_of(&gw, "user", "erin").await.len(), 2, "its event and the deletion");
    assert_eq!(values_of(&gw, "user", "frank").await, Ok(json!({"nested": {"deep": true}})));
    assert_eq!(values_of(&gw, "user", "carol").await, Err(Code::NotFound), "deleted in v0.5.0: absent");
    assert_eq!(events_of(&gw, "user", "carol").await.len(), 0);
    assert_eq!(values_of(&gw, "order", "o-1").await, Ok(json!({"total": 9.5})));
    assert_eq!(values_of(&gw, "audit_events", "a-1").await, Ok(json!({"what": "login"})));
    // Over REST, and searchable as v0.5.0 clients search.
    let r: Value = http().get(format!("{}/api/state/ref/acme/user/alice", gw.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["values"]["name"], "Alice B.", "{r}");
    let r: Value = http()
        .get(format!("{}/api/state/search?domain=acme&type=user&limit=10&query_string=%7B%22name%22%3A%22Bob%22%7D", gw.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["stateValues"].as_array().unwrap().len(), 1, "{r}");
    let r: Value = http()
        .get(format!("{}/api/events/search?domain=acme&type=user&key=alice&limit=10&min={}", gw.url(), T0 + 20))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["events"].as_array().unwrap().len(), 2, "min bounds v0.5.0's times: {r}");
    gw.stop().await;

    // A second run imports nothing twice.
    let (ok, out, err) = migrate(&url, &database, &storage, &[]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("0 events imported, 8 already imported, 0 states reconciled, 0 deleted, 0 conflicts"), "{out}\n{err}");
    let gw = TestGateway::start_with(|c| c.storage_provider = Some(stategate::storage::StorageSpec::parse(&storage).unwrap())).await;
    assert_eq!(events_of(&gw, "user", "alice").await.len(), 3);
    assert_eq!(events_of(&gw, "user", "dave").await.len(), 3);
    assert_eq!(events_of(&gw, "user", "erin").await.len(), 2);
    gw.stop().await;

    // v0.5.0's collections are only read.
    let left = db.collection::<Document>("acme.user_events").count_documents(doc! {}).await.unwrap();
    assert_eq!(left, 7);

    // A source that is not there names the flag.
    let (ok, _, err) = migrate("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300", &database, &storage, &[]);
    assert!(!ok && err.contains("--from"), "{err}");
    db.drop().await.unwrap();
}

/// A run killed part-way (SIGKILL, right after it reported its first
/// imported record) leaves a prefix of each record's events; the next run
/// finishes it, and the store ends with every event exactly once. Into
/// sqlite this time: the importer writes through the `Storage` trait.
#[tokio::test]
async fn a_killed_import_is_finished_by_the_next_run() {
    let Some(url) = backend_url("MONGO") else { return };
    let database = format!("v050{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let db = mongodb::Client::with_uri_str(&url).await.unwrap().database(&database);
    const RECORDS: u32 = 100;
    const EACH: u32 = 5;
    let mut events = Vec::new();
    let mut states = Vec::new();
    for r in 0..RECORDS {
        for e in 0..EACH {
            let n = r * EACH + e;
            events.push(event(&id(100_000 + n), T0 + i64::from(n), &format!("k{r}"), doc! {"n": f64::from(e)}, "bulk"));
        }
        states.push(doc! {"_id": format!("k{r}"), "n": f64::from(EACH - 1)});
    }
    db.collection::<Document>("bulk.item_events").insert_many(events).await.unwrap();
    db.collection::<Document>("bulk.item").insert_many(states).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = json!({"name": "sqlite", "path": dir.path().join("target.db")}).to_string();

    let mut child = Command::new(crate::procs::stategate_bin())
        .args(["migrate", "v050", "--from", &url, "--database", &database])
        .env("STATEGATE_STORAGE_PROVIDER", &storage)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let first = lines.find(|l| l.as_ref().is_ok_and(|l| l.starts_with("progress:"))).expect("a progress line").unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(first.contains(&format!("/{} events", RECORDS * EACH)), "{first}");

    let (ok, out, err) = migrate(&url, &database, &storage, &[]);
    assert!(ok, "{out}\n{err}");
    let count = |label: &str| -> u64 {
        let at = out.find(label).unwrap_or_else(|| panic!("{label}: {out}"));
        out[..at].trim_end().rsplit([' ', ',', ':']).next().unwrap().parse().unwrap()
    };
    let (imported, already) = (count(" events imported"), count(" already imported"));
    assert_eq!(imported + already, u64::from(RECORDS * EACH), "{out}");
    assert!(already > 0, "the killed run had imported something: {out}");
    assert!(out.contains("0 states reconciled, 0 deleted, 0 conflicts"), "{out}");

    let (ok, out, err) = migrate(&url, &database, &storage, &[]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains(&format!("0 events imported, {} already imported", RECORDS * EACH)), "{out}");

    // Every event exactly once, each record at version 5 with its last values.
    let spec = stategate::storage::StorageSpec::parse(&storage).unwrap();
    let wasm = stategate::wasm::WasmRuntime::new(stategate::config::Config::defaults().wasm_settings()).unwrap();
    let target = spec.open(dir.path(), &wasm).await.unwrap();
    assert_eq!(target.head().await.unwrap(), u64::from(RECORDS * EACH), "no event twice, none missing");
    for r in [0, RECORDS / 2, RECORDS - 1] {
        let s = target.get(&RecordRef::parse("bulk", "item", &format!("k{r}")).unwrap()).await.unwrap().unwrap();
        assert_eq!((s.version, Value::Object(s.values)), (u64::from(EACH), json!({"n": EACH - 1})));
    }
    target.close().await.unwrap();
    db.drop().await.unwrap();
}
