//! The PostgreSQL and MySQL/MariaDB storage providers against the shared
//! test servers (`STATEGATE_TEST_POSTGRES_URL`, `STATEGATE_TEST_MYSQL_URL`):
//! the conformance suite, several providers on one database (as several
//! gateways), migrations and their lock, the refusal of a newer schema,
//! and the seq visibility promise under concurrent writers.
//!
//! Every test works in a scratch schema (PostgreSQL) or database (MySQL) of
//! its own, named `sgt_<unix seconds>_<random>`, dropped when the test
//! ends; scratch places left by a killed test run are dropped by the next
//! run once they are an hour old.

use crate::harness::backend_url;
use async_trait::async_trait;
use serde_json::json;
use stategate::model::*;
use stategate::storage::{DynStorage, Storage, StorageSpec};
use std::sync::{Arc, Once};

/// Which server a scratch place lives on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Postgres,
    Mysql,
}

/// A schema or database of one test, dropped with it.
pub struct Scratch {
    pub kind: Kind,
    /// The server's URL (for MySQL, with the scratch database in it).
    pub url: String,
    pub name: String,
    /// The URL to administer the server with.
    admin: String,
}

const STALE_SECS: u64 = 3600;

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Runs admin statements on a thread of its own (usable from `Drop`).
fn admin(kind: Kind, url: &str, statements: Vec<String>) {
    let url = url.to_owned();
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            use sqlx::Connection;
            match kind {
                Kind::Postgres => {
                    let mut c = sqlx::PgConnection::connect(&url).await.expect("admin connection to postgres");
                    for s in statements {
                        sqlx::raw_sql(sqlx::AssertSqlSafe(s.clone())).execute(&mut c).await.unwrap_or_else(|e| panic!("{s}: {e}"));
                    }
                }
                Kind::Mysql => {
                    let mut c = sqlx::MySqlConnection::connect(&url).await.expect("admin connection to mysql");
                    for s in statements {
                        sqlx::raw_sql(sqlx::AssertSqlSafe(s.clone())).execute(&mut c).await.unwrap_or_else(|e| panic!("{s}: {e}"));
                    }
                }
            }
        })
    })
    .join();
}

/// Names of scratch places on the server (for the sweep).
fn list(kind: Kind, url: &str) -> Vec<String> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            use sqlx::Connection;
            match kind {
                Kind::Postgres => {
                    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                    sqlx::query_scalar::<_, String>("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'sgt\\_%'")
                        .fetch_all(&mut c)
                        .await
                        .unwrap()
                }
                Kind::Mysql => {
                    let mut c = sqlx::MySqlConnection::connect(&url).await.unwrap();
                    sqlx::query_scalar::<_, String>(
                        "SELECT CAST(SCHEMA_NAME AS CHAR) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'sgt\\_%'",
                    )
                    .fetch_all(&mut c)
                    .await
                    .unwrap()
                }
            }
        })
    })
    .join()
    .unwrap()
}

fn drop_statement(kind: Kind, name: &str) -> String {
    match kind {
        Kind::Postgres => format!("SET lock_timeout = '20s'; DROP SCHEMA IF EXISTS {name} CASCADE"),
        Kind::Mysql => format!("DROP DATABASE IF EXISTS {name}"),
    }
}

/// Drops scratch places an hour old or more (left by killed runs), once per
/// test process.
fn sweep(kind: Kind, admin_url: &str) {
    static PG: Once = Once::new();
    static MY: Once = Once::new();
    let once = if kind == Kind::Postgres { &PG } else { &MY };
    once.call_once(|| {
        let stale: Vec<String> = list(kind, admin_url)
            .into_iter()
            .filter(|n| {
                let secs = n.split('_').nth(1).and_then(|s| s.parse::<u64>().ok());
                secs.is_some_and(|s| s + STALE_SECS < now_secs())
            })
            .map(|n| drop_statement(kind, &n))
            .collect();
        if !stale.is_empty() {
            admin(kind, admin_url, stale);
        }
    });
}

impl Scratch {
    /// A new scratch place, or `None` when the server is not configured.
    pub fn new(kind: Kind) -> Option<Scratch> {
        let admin_url = backend_url(match kind {
            Kind::Postgres => "POSTGRES",
            Kind::Mysql => "MYSQL",
        })?;
        sweep(kind, &admin_url);
        let name = format!("sgt_{}_{}", now_secs(), &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let url = match kind {
            Kind::Postgres => admin_url.clone(),
            Kind::Mysql => {
                admin(kind, &admin_url, vec![format!("CREATE DATABASE {name} CHARACTER SET utf8mb4")]);
                let (base, query) = admin_url.split_once('?').map_or((admin_url.as_str(), None), |(b, q)| (b, Some(q)));
                let server = base.rsplit_once('/').map_or(base, |(s, _)| s);
                match query {
                    Some(q) => format!("{server}/{name}?{q}"),
                    None => format!("{server}/{name}"),
                }
            }
        };
        Some(Scratch { kind, url, name, admin: admin_url })
    }

    /// The provider object of `STATEGATE_STORAGE_PROVIDER` for this place.
    pub fn spec(&self) -> serde_json::Value {
        match self.kind {
            // Three writer connections, so the suite runs batches of one
            // gateway concurrently (one commits while the next locks).
            Kind::Postgres => json!({"name": "postgres", "addr": self.url, "schema": self.name, "pool_size": 4, "writers": 3}),
            Kind::Mysql => json!({"name": "mysql", "addr": self.url, "pool_size": 4, "writers": 3}),
        }
    }

    pub async fn open_spec(&self, spec: serde_json::Value) -> Result<DynStorage> {
        StorageSpec::parse(&spec.to_string())?.open(std::path::Path::new("."), &crate::wasm_support::runtime()).await
    }

    pub async fn open(&self) -> DynStorage {
        self.open_spec(self.spec()).await.expect("the provider opens")
    }

    /// Runs statements on the server, on the scratch place.
    pub fn execute(&self, statements: &[&str]) {
        let prefix = match self.kind {
            Kind::Postgres => vec![format!("SET search_path = {}", self.name)],
            Kind::Mysql => vec![],
        };
        let url = if self.kind == Kind::Mysql { &self.url } else { &self.admin };
        admin(self.kind, url, prefix.into_iter().chain(statements.iter().map(|s| s.to_string())).collect());
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        admin(self.kind, &self.admin, vec![drop_statement(self.kind, &self.name)]);
    }
}

/// A provider that drops its scratch place when the last handle goes.
pub struct Scoped {
    inner: DynStorage,
    _scratch: Arc<Scratch>,
}

impl Scoped {
    pub fn wrap(inner: DynStorage, scratch: Arc<Scratch>) -> DynStorage {
        Arc::new(Scoped { inner, _scratch: scratch })
    }
}

#[async_trait]
impl Storage for Scoped {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn append(&self, req: AppendRequest) -> Result<Appended> {
        self.inner.append(req).await
    }
    async fn get(&self, record: &RecordRef) -> Result<Option<State>> {
        self.inner.get(record).await
    }
    async fn search_states(&self, query: &StateQuery) -> Result<Vec<State>> {
        self.inner.search_states(query).await
    }
    // The reads at a position too: the trait's defaults would otherwise
    // stand in for the provider's own in the conformance suite.
    async fn get_at(&self, record: &RecordRef, at: Option<u64>) -> Result<AtSeq<Option<State>>> {
        self.inner.get_at(record, at).await
    }
    async fn get_text_at(&self, record: &RecordRef, at: Option<u64>) -> Result<AtSeq<Option<StoredState>>> {
        self.inner.get_text_at(record, at).await
    }
    async fn search_states_at(&self, query: &StateQuery, at: Option<u64>) -> Result<AtSeq<Vec<State>>> {
        self.inner.search_states_at(query, at).await
    }
    async fn seq_at_time(&self, domain: &str, ty: &str, time: i64) -> Result<u64> {
        self.inner.seq_at_time(domain, ty, time).await
    }
    async fn search_events(&self, query: &EventQuery) -> Result<Vec<Event>> {
        self.inner.search_events(query).await
    }
    async fn get_event(&self, id: &str) -> Result<Option<Event>> {
        self.inner.get_event(id).await
    }
    async fn feed(&self, query: &FeedQuery) -> Result<Vec<Event>> {
        self.inner.feed(query).await
    }
    async fn head(&self) -> Result<u64> {
        self.inner.head().await
    }
    async fn catalog(&self, domain: Option<&str>) -> Result<Vec<CatalogEntry>> {
        self.inner.catalog(domain).await
    }
    async fn group_load(&self, name: &str) -> Result<Option<stategate::storage::GroupDoc>> {
        self.inner.group_load(name).await
    }
    async fn group_store(&self, name: &str, expected: u64, doc: &[u8]) -> Result<u64> {
        self.inner.group_store(name, expected, doc).await
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// A provider on a scratch place of its own (dropped with the provider).
pub async fn scoped(kind: Kind) -> Option<DynStorage> {
    let scratch = Arc::new(Scratch::new(kind)?);
    let s = scratch.open().await;
    Some(Scoped::wrap(s, scratch))
}

/// `n` providers on one scratch place, as `n` gateways would be.
pub async fn several(kind: Kind, n: usize) -> Option<Vec<DynStorage>> {
    let scratch = Arc::new(Scratch::new(kind)?);
    let mut out = vec![];
    for _ in 0..n {
        out.push(Scoped::wrap(scratch.open().await, scratch.clone()));
    }
    Some(out)
}

storage_conformance!(postgres_storage, async { crate::sql_backends::scoped(crate::sql_backends::Kind::Postgres).await });

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_clients_share_one_order() {
    let Some(s) = several(Kind::Postgres, 2).await else { return };
    crate::backends::two_clients_share_one_order(s[0].clone(), s[1].clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_readers_never_see_a_seq_before_a_smaller_one() {
    let Some(s) = several(Kind::Postgres, 3).await else { return };
    readers_never_see_a_gap(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrations_take_turns_and_refuse_a_newer_schema() {
    let Some(scratch) = Scratch::new(Kind::Postgres) else { return };
    migrations(scratch, "UPDATE schema_version SET version = version + 1").await;
}

/// PostgreSQL's text and `jsonb` cannot hold a NUL character: an append
/// that carries one anywhere is the client's mistake (invalid argument,
/// naming the part that holds it), refused before it writes anything, and
/// the store goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_nul_naming_where_it_is() {
    use crate::storage_conformance::{put, unique_domain};
    let Some(s) = scoped(Kind::Postgres).await else { return };
    let d = unique_domain();
    let ok = RecordRef::parse(&d, "t", "k").unwrap();
    let head = s.head().await.unwrap();
    let in_name = |domain: &str, ty: &str, key: &str| put(&RecordRef { domain: domain.into(), ty: ty.into(), key: key.into() }, json!({"a": 1}));
    let mut in_claims = put(&ok, json!({"a": 1}));
    in_claims.claims.insert("sub".into(), json!("x\u{0}y"));
    let mut in_idempotency = put(&ok, json!({"a": 1}));
    in_idempotency.idempotency = Some(Idempotency { key: "k\u{0}".into(), fingerprint: "f".into(), not_before: 0 });
    let cases = [
        ("domain", in_name(&format!("{d}\u{0}"), "t", "k")),
        ("type", in_name(&d, "t\u{0}", "k")),
        ("key", in_name(&d, "t", "\u{0}k")),
        ("values", put(&ok, json!({"a": "x\u{0}y"}))),
        ("values", put(&ok, json!({"a\u{0}": 1}))),
        ("values", put(&ok, json!({"a": [{"b": ["\u{0}"]}]}))),
        ("claims", in_claims),
        ("idempotency_key", in_idempotency),
    ];
    for (field, req) in cases {
        match s.append(req).await {
            Err(Error::InvalidArgument { field: named, reason }) => {
                assert_eq!(named, field, "{reason}");
                assert!(reason.contains("NUL"), "{reason}");
            }
            other => panic!("a NUL in {field}: {other:?}"),
        }
    }
    assert_eq!(s.head().await.unwrap(), head, "nothing was written");
    assert_eq!(s.append(put(&ok, json!({"a": 1}))).await.unwrap().event.version, 1, "and the store goes on");
}

/// Writers on several providers sharing one place, and a reader polling the
/// feed: seqs are gap-free in a place of its own, so every page must start
/// right after the last seq seen and have no holes. A seq that became
/// visible before a smaller one would show up as a hole.
async fn readers_never_see_a_gap(stores: Vec<DynStorage>) {
    let d = crate::storage_conformance::unique_domain();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let s = stores[w % (stores.len() - 1)].clone();
            let d = d.clone();
            tokio::spawn(async move {
                for i in 0..40 {
                    let r = RecordRef::parse(&d, "t", &format!("w{w}-{}", i % 3)).unwrap();
                    s.append(crate::storage_conformance::put(&r, json!({"i": i}))).await.unwrap();
                }
            })
        })
        .collect();
    let reader = stores.last().unwrap().clone();
    let mut last = 0;
    let mut pages = 0;
    let all = Topic::ALL;
    loop {
        let done = writers.iter().all(|w| w.is_finished());
        let page = reader.feed(&FeedQuery { topic: all.clone(), key: None, after_seq: last, from_time: None, limit: 64 }).await.unwrap();
        for e in &page {
            assert_eq!(e.seq, last + 1, "after seq {last} the feed showed {} first", e.seq);
            last = e.seq;
        }
        pages += 1;
        if done && page.is_empty() {
            break;
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(last, 8 * 40, "every append was seen ({pages} pages)");
    assert_eq!(reader.head().await.unwrap(), last);
}

/// Several gateways starting at once on a new place migrate it once; a
/// place migrated by a newer gateway (`bump` raises its schema version) is
/// refused, naming the versions.
async fn migrations(scratch: Scratch, bump: &str) {
    let scratch = Arc::new(scratch);
    let opens = (0..4).map(|_| {
        let scratch = scratch.clone();
        async move { scratch.open_spec(scratch.spec()).await }
    });
    let opened = futures::future::join_all(opens).await;
    assert!(opened.iter().all(|s| s.is_ok()), "{:?}", opened.iter().filter_map(|s| s.as_ref().err()).collect::<Vec<_>>());
    let s = opened.into_iter().next().unwrap().unwrap();
    let d = crate::storage_conformance::unique_domain();
    s.append(crate::storage_conformance::put(&RecordRef::parse(&d, "t", "k").unwrap(), json!({"a": 1}))).await.unwrap();
    // Opening again keeps the data.
    let again = scratch.open().await;
    assert_eq!(again.get(&RecordRef::parse(&d, "t", "k").unwrap()).await.unwrap().unwrap().version, 1);
    scratch.execute(&[bump]);
    match scratch.open_spec(scratch.spec()).await {
        Ok(_) => panic!("a schema migrated by a newer gateway was accepted"),
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("newer than this gateway"), "{text}");
        }
    }
}

storage_conformance!(mysql_storage, async { crate::sql_backends::scoped(crate::sql_backends::Kind::Mysql).await });

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_two_clients_share_one_order() {
    let Some(s) = several(Kind::Mysql, 2).await else { return };
    crate::backends::two_clients_share_one_order(s[0].clone(), s[1].clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_readers_never_see_a_seq_before_a_smaller_one() {
    let Some(s) = several(Kind::Mysql, 3).await else { return };
    readers_never_see_a_gap(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_migrations_take_turns_and_refuse_a_newer_schema() {
    let Some(scratch) = Scratch::new(Kind::Mysql) else { return };
    migrations(scratch, "UPDATE schema_version SET version = version + 1").await;
}
