//! Each client subcommand: build the request, call, print.

use super::output::{Printer, print_catalog_entry, print_event, print_state};
use super::{ClientArgs, Command, EventCommand, Record};
use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use stategate_client::proto::{EditRequest, RevertRequest};
use stategate_client::{Client, Resume, SearchEventOpts, SearchStateOpts, State, StateRef, StreamOpts, json_to_struct};
use std::io::Read;
use std::time::Duration;

/// Runs a client subcommand; the error is printed by the caller.
pub async fn run(command: Command) -> Result<()> {
    match command {
        Command::Serve(_) => unreachable!("serve is handled by main"),
        Command::Migrate(super::MigrateCommand::V050(a)) => migrate_v050(a).await?,
        Command::Guest(c) => super::guest::run(c).await?,
        Command::Completions(a) => {
            use clap::CommandFactory;
            let mut cli = super::Cli::command();
            clap_complete::generate(a.shell, &mut cli, "stategate", &mut std::io::stdout());
        }
        Command::Set(a) => {
            let client = connect(&a.client).await?;
            let values = read_object("VALUES", &a.values)?;
            let Record { domain, ty, key } = a.record;
            let event = client
                .set_state(State {
                    domain,
                    r#type: ty,
                    key,
                    values: Some(json_to_struct(&values)),
                    expected_version: a.write.expected_version,
                    idempotency_key: a.write.idempotency_key.unwrap_or_default(),
                    ..Default::default()
                })
                .await?;
            print_event(&printer(&a.client), &event);
        }
        Command::Get(a) => {
            let client = connect(&a.client).await?;
            let r = &a.record;
            let state = client.get(&r.domain, &r.ty, &r.key).await?;
            print_state(&printer(&a.client), &state);
        }
        Command::Del(a) => {
            let client = connect(&a.client).await?;
            let Record { domain, ty, key } = a.record;
            let del = StateRef { domain, r#type: ty, key, expected_version: a.expected_version, ..Default::default() };
            let event = client.state_service().del(del).await.map_err(stategate_client::Error::from)?;
            print_event(&printer(&a.client), event.get_ref());
        }
        Command::Edit(a) => {
            let client = connect(&a.client).await?;
            let patch = Some(json_to_struct(&read_object("PATCH", &a.patch)?));
            let Record { domain, ty, key } = a.record;
            let (expected_version, idempotency_key) = (a.write.expected_version, a.write.idempotency_key.unwrap_or_default());
            let edit = EditRequest { domain, r#type: ty, key, patch, expected_version, idempotency_key };
            let event = client.state_service().edit(edit).await.map_err(stategate_client::Error::from)?;
            print_event(&printer(&a.client), event.get_ref());
        }
        Command::Revert(a) => {
            let client = connect(&a.client).await?;
            let event_id = match (a.to_event, a.to_version) {
                (Some(id), _) => id,
                (None, Some(version)) => event_of_version(&client, &a.record, version).await?,
                (None, None) => unreachable!("clap requires --to-version or --to-event"),
            };
            let Record { domain, ty, key } = a.record;
            let (expected_version, idempotency_key) = (a.write.expected_version, a.write.idempotency_key.unwrap_or_default());
            let revert = RevertRequest { domain, r#type: ty, key, event_id, expected_version, idempotency_key };
            let event = client.state_service().revert(revert).await.map_err(stategate_client::Error::from)?;
            print_event(&printer(&a.client), event.get_ref());
        }
        Command::Event(EventCommand::Get(a)) => {
            let client = connect(&a.client).await?;
            let event = client.get_event(&a.id).await?;
            print_event(&printer(&a.client), &event);
        }
        Command::Search(a) => {
            let client = connect(&a.client).await?;
            let query = json_object("--query", &a.query)?;
            let mut opts = SearchStateOpts::new(a.domain, a.ty, a.limit).query(&serde_json::Value::Object(query));
            opts.offset = a.offset;
            opts.sort_by = a.sort_by.unwrap_or_default();
            opts.sort_descending = a.desc;
            let states = client.search(opts).await?;
            let p = printer(&a.client);
            for s in &states {
                print_state(&p, s);
            }
            if !p.json {
                eprintln!("{} state(s)", states.len());
            }
        }
        Command::Events(a) => {
            let client = connect(&a.client).await?;
            let query = json_object("--query", &a.query)?;
            let mut opts = SearchEventOpts::new(a.domain, a.ty, a.last.unwrap_or(a.limit)).query(&serde_json::Value::Object(query));
            opts.key = a.key.unwrap_or_default();
            opts.min = a.since.unwrap_or(0);
            opts.max = a.until.unwrap_or(0);
            opts.offset = a.offset;
            // `--last N` asks for the N at the far end of the order (reversed,
            // limited), then prints them the way round that was asked for.
            let reverse = a.desc || a.last.is_some();
            if a.sort.is_some() || reverse {
                opts = opts.sort(a.sort.unwrap_or_else(|| "time".to_owned()), reverse);
            }
            let mut events = client.search_events(opts).await?;
            if a.last.is_some() && !a.desc {
                events.reverse();
            }
            let p = printer(&a.client);
            for e in &events {
                print_event(&p, e);
            }
            if !p.json {
                eprintln!("{} event(s)", events.len());
            }
        }
        Command::Stream(a) => {
            // No deadline: a stream runs until stopped.
            let client = connect(&ClientArgs { timeout: 0, ..a.client.clone() }).await?;
            let mut opts = StreamOpts::new(a.domain, a.ty);
            opts.key = a.key.unwrap_or_default();
            opts.after_event_id = a.after.unwrap_or_default();
            opts.from_time = a.from_time.unwrap_or(0);
            // Standard error says when the stream is down and when it is
            // back, so a quiet terminal means "no events", not "no gateway".
            let resume = if a.quiet { Resume::default() } else { Resume::default().on_notice(|n| eprintln!("stategate stream: {}", super::printable_message(&n.to_string()))) };
            let client = client.with_resume(resume);
            let mut events = client.stream(opts).await?;
            let p = printer(&a.client);
            let mut seen = 0u64;
            while let Some(event) = events.next().await {
                print_event(&p, &event?);
                seen += 1;
                if a.count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
        }
        Command::Catalog(a) => {
            let client = connect(&a.client).await?;
            let catalog = client.catalog(a.domain.as_deref().unwrap_or("")).await?;
            let p = printer(&a.client);
            for e in &catalog.entries {
                print_catalog_entry(&p, e);
            }
            if !p.json {
                eprintln!("{} domain/type pair(s)", catalog.entries.len());
            }
        }
        Command::Health(a) => {
            let client = connect(&a.client).await?;
            let mut health = tonic_health::pb::health_client::HealthClient::new(client.channel());
            let reply = health
                .check(tonic_health::pb::HealthCheckRequest { service: a.service.clone() })
                .await
                .map_err(stategate_client::Error::from)?
                .into_inner();
            let status = tonic_health::pb::health_check_response::ServingStatus::try_from(reply.status)
                .map(|s| s.as_str_name())
                .unwrap_or("UNKNOWN");
            if a.client.json {
                printer(&a.client).json_value(&serde_json::json!({"status": status}));
            } else {
                println!("{} {status}", a.client.addr);
            }
            if status != "SERVING" {
                bail!("the gateway is not serving ({status})");
            }
        }
    }
    Ok(())
}

/// `stategate migrate v050` without the reader of v0.5.0's MongoDB.
#[cfg(not(feature = "mongo"))]
async fn migrate_v050(_: super::MigrateV050Args) -> Result<()> {
    bail!("migrate v050 reads MongoDB, and this binary was built without it; rebuild with `--features mongo`")
}

/// `stategate migrate v050`: opens both sides and imports; the summary goes
/// to standard output, progress to standard error.
#[cfg(feature = "mongo")]
async fn migrate_v050(a: super::MigrateV050Args) -> Result<()> {
    let source = stategate_source(&a).await?;
    let mut config = crate::config::Config::defaults();
    config.data_dir = a.target.data_dir.clone();
    config.storage_provider = a.target.storage_provider.clone();
    let wasm = crate::wasm::WasmRuntime::new(config.wasm_settings())?;
    let target = config
        .storage_spec()
        .open(&config.data_dir, &wasm)
        .await
        .map_err(|e| anyhow!("STATEGATE_STORAGE_PROVIDER: {e}"))?;
    let mut progress = super::progress::Progress::new();
    let result = super::migrate::import(&source, &target, a.dry_run, &mut progress).await;
    let _ = target.close().await;
    let summary = result?;
    if a.dry_run {
        println!("dry run, nothing written: would import {summary}");
    } else {
        println!("imported: {summary}");
    }
    Ok(())
}

#[cfg(feature = "mongo")]
async fn stategate_source(a: &super::MigrateV050Args) -> Result<crate::storage::mongo::v050::V050Source> {
    crate::storage::mongo::v050::V050Source::open(&a.from, &a.database)
        .await
        .with_context(|| format!("v0.5.0's MongoDB at --from {} (database {})", redact(&a.from), a.database))
}

/// A connection string without its password, for messages.
#[cfg(feature = "mongo")]
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

fn printer(c: &ClientArgs) -> Printer {
    Printer { json: c.json }
}

/// The id of the event that made `key` version `version`: its history is
/// read oldest first until that version.
async fn event_of_version(client: &Client, record: &Record, version: i64) -> Result<String> {
    const PAGE: i64 = 500;
    let Record { domain, ty, key } = record;
    let mut offset = 0;
    loop {
        let mut opts = SearchEventOpts::new(domain, ty, PAGE).key(key);
        opts.offset = offset;
        let page = client.search_events(opts).await?;
        if let Some(e) = page.iter().find(|e| e.version == version) {
            return Ok(e.id.clone());
        }
        if (page.len() as i64) < PAGE {
            bail!("{domain}/{ty}/{key} has no version {version} in its history");
        }
        offset += PAGE;
    }
}

async fn connect(c: &ClientArgs) -> Result<Client> {
    let mut builder = Client::builder(c.addr.clone()).token(c.token.clone());
    if c.timeout > 0 {
        builder = builder.timeout(Duration::from_secs(c.timeout));
    }
    if let Some(path) = &c.ca_file {
        let pem = std::fs::read(path).with_context(|| format!("--ca-file {}", path.display()))?;
        builder = builder.ca_certificate(pem);
    }
    Ok(builder.connect().await?)
}

/// A JSON object from an argument, naming the argument when it is not one.
fn json_object(what: &str, text: &str) -> Result<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => bail!("{what} must be a JSON object such as '{{\"name\":\"Alice\"}}'"),
        Err(e) => Err(anyhow!("{what} is not valid JSON: {e}")),
    }
}

/// A JSON object argument (`VALUES`, `PATCH`): inline JSON, `-` for
/// standard input, `@FILE`.
fn read_object(what: &str, arg: &str) -> Result<serde_json::Map<String, serde_json::Value>> {
    let text = if arg == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).with_context(|| format!("reading {what} from standard input"))?;
        s
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read_to_string(path).with_context(|| format!("reading {what} from {path}"))?
    } else {
        arg.to_owned()
    };
    json_object(what, &text)
}
