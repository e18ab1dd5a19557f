//! Set, get, search and read the history of a record.
//!
//! ```sh
//! stategate --dev &                 # a gateway on 127.0.0.1:8080
//! cargo run -p stategate-client --example basic -- http://127.0.0.1:8080
//! ```

use serde::{Deserialize, Serialize};
use serde_json::json;
use stategate_client::{Client, SearchEventOpts, SearchStateOpts};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct User {
    pub name: String,
    pub city: String,
}

/// Runs the example against the gateway at `address` in `domain`.
pub async fn run(address: &str, domain: &str) -> Result<Vec<String>, stategate_client::Error> {
    let mut out = vec![];
    let client = Client::builder(address)
        .token(std::env::var("STATEGATE_TOKEN").ok())
        .connect()
        .await?;

    let alice = User { name: "Alice".into(), city: "Paris".into() };
    let event = client.set(domain, "user", "alice", &alice).await?;
    out.push(format!("set alice: event {} version {}", event.id, event.version));

    let got: User = client.get(domain, "user", "alice").await?.values_as()?;
    assert_eq!(got, alice);
    out.push(format!("get alice: {} from {}", got.name, got.city));

    client.set(domain, "user", "bob", &User { name: "Bob".into(), city: "Lyon".into() }).await?;
    let parisians = client
        .search(SearchStateOpts::new(domain, "user", 10).query(&json!({"city": "Paris"})))
        .await?;
    out.push(format!("search city=Paris: {} record(s)", parisians.len()));

    client.del(domain, "user", "alice").await?;
    match client.get(domain, "user", "alice").await {
        Err(e) if e.is_not_found() => out.push("alice deleted".into()),
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
    let history = client.search_events(SearchEventOpts::new(domain, "user", 10).key("alice")).await?;
    out.push(format!("alice history: {} event(s)", history.len()));
    Ok(out)
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), stategate_client::Error> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "http://127.0.0.1:8080".into());
    for line in run(&address, "example").await? {
        println!("{line}");
    }
    Ok(())
}
