//! Follow the events of a domain and type, resuming across disconnects.
//!
//! ```sh
//! cargo run -p stategate-client --example stream -- http://127.0.0.1:8080 users user
//! # in another terminal:
//! stategate set users user alice '{"name":"Alice"}'
//! ```

use futures::StreamExt;
use stategate_client::{Client, StreamOpts};

/// Prints up to `count` events (all when `None`) of `domain`/`ty`;
/// returns their ids.
pub async fn run(address: &str, domain: &str, ty: &str, count: Option<usize>) -> Result<Vec<String>, stategate_client::Error> {
    let client = Client::builder(address)
        .token(std::env::var("STATEGATE_TOKEN").ok())
        .connect()
        .await?;
    // Replay from the start of time, then follow live events. If the
    // gateway restarts, the stream reconnects and carries on after the
    // last event it printed.
    let mut events = client.stream(StreamOpts::new(domain, ty).from_time(1)).await?;
    let mut ids = vec![];
    while let Some(event) = events.next().await {
        let event = event?;
        let state = event.state.as_ref().expect("events carry their state");
        println!("{} {} {}/{}/{} v{} {}", event.id, event.kind().as_str_name(), state.domain, state.r#type, state.key, event.version, event.values_json());
        ids.push(event.id);
        if count.is_some_and(|c| ids.len() >= c) {
            break;
        }
    }
    Ok(ids)
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), stategate_client::Error> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let domain = args.next().unwrap_or_else(|| "example".into());
    let ty = args.next().unwrap_or_else(|| "user".into());
    run(&address, &domain, &ty, None).await?;
    Ok(())
}
