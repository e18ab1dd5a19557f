//! The `stategate` command line: `serve` (the default: the gateway itself)
//! and the client subcommands a person uses against a running gateway.
//! The client subcommands go through the `stategate-client` crate, the one
//! generated client of the API.

mod commands;
pub mod guest;
#[cfg(feature = "mongo")]
pub mod migrate;
mod output;
pub mod progress;
pub mod when;

use crate::config::Config;
use clap::{Args, Parser, Subcommand};

pub use commands::run;
pub use output::{printable, printable_message};

#[derive(Debug, Parser)]
#[command(
    name = "stategate",
    version,
    about = "Application state gateway: event-sourced state with live subscriptions over gRPC, REST and grpc-web",
    long_about = "Application state gateway: event-sourced state with live subscriptions over gRPC, REST and grpc-web.\n\nWithout a subcommand, `stategate` serves (the same as `stategate serve`) with the options below.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The gateway's options when no subcommand is given.
    #[command(flatten)]
    pub serve: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default when no subcommand is given).
    Serve(Box<Config>),
    /// Set the current state of a record: `stategate set users user alice '{"name":"Alice"}'`.
    Set(SetArgs),
    /// Print the current state of a record.
    Get(RecordArgs),
    /// Remove the current state of a record (its history is kept).
    Del(RecordArgs),
    /// Change some fields of a record: a JSON merge patch onto its current
    /// values (`null` removes a field): `stategate edit users user alice '{"city":"Lyon"}'`.
    Edit(EditArgs),
    /// Make the values of an earlier version (or event) of a record current
    /// again, as a new event: `stategate revert users user alice --to-version 1`.
    Revert(RevertArgs),
    /// Search current states of a domain and type.
    Search(SearchArgs),
    /// Search the event history (oldest first; `--last N`, `--desc`, `--sort`).
    Events(EventsArgs),
    /// One event.
    #[command(subcommand)]
    Event(EventCommand),
    /// Follow events as they happen (resumes by itself after a disconnect).
    Stream(StreamArgs),
    /// List the domains and types you may read, with their record and event counts.
    Catalog(CatalogArgs),
    /// Check that the gateway serves (gRPC health check).
    Health(HealthArgs),
    /// Print a shell completion script: `stategate completions bash > /etc/bash_completion.d/stategate`.
    Completions(CompletionsArgs),
    /// Import data of an earlier stategate into the configured storage.
    #[command(subcommand)]
    Migrate(MigrateCommand),
    /// Start a wasm guest (`guest new`) and try one (`guest check`).
    #[command(subcommand)]
    Guest(guest::GuestCommand),
}

#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// Print one event by its id.
    Get(EventGetArgs),
}

#[derive(Debug, Args)]
pub struct EventGetArgs {
    pub id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Import stategate v0.5.0's MongoDB collections (`<domain>.<type>` and
    /// `<domain>.<type>_events`) into the storage STATEGATE_STORAGE_PROVIDER
    /// configures: every record's events oldest first, ids, times and
    /// claims kept. Safe to run again; an interrupted run is finished by
    /// the next (docs/migrating-from-v0.5.0.md).
    V050(MigrateV050Args),
}

#[derive(Debug, Args)]
pub struct MigrateV050Args {
    /// v0.5.0's MongoDB, as a connection string (mongodb://…).
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// v0.5.0's database (the "database" of its STATEGATE_STORAGE_PROVIDER).
    #[arg(long)]
    pub database: String,
    /// Read everything, write nothing, and print what would be imported.
    #[arg(long)]
    pub dry_run: bool,
    /// Where to import: the gateway's storage and its options (the same
    /// variables as `stategate serve`).
    #[command(flatten)]
    pub target: MigrateTarget,
}

/// The storage settings `migrate` shares with `serve`.
#[derive(Debug, Clone, Args)]
pub struct MigrateTarget {
    /// Storage provider as JSON (as for `stategate serve`).
    #[arg(long, env = "STATEGATE_STORAGE_PROVIDER", value_name = "JSON", value_parser = parse_storage_spec)]
    pub storage_provider: Option<crate::storage::StorageSpec>,
    /// Directory of the default sqlite database.
    #[arg(long, env = "STATEGATE_DATA_DIR", default_value = "data")]
    pub data_dir: std::path::PathBuf,
    /// A `.env` file read before the variables (default: `./.env`).
    #[arg(long, value_name = "PATH")]
    pub env_file: Option<std::path::PathBuf>,
}

/// `--addr`: a URL, or `host:port` for plain HTTP/2 (what people type).
fn gateway_address(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the address is empty (expected e.g. 127.0.0.1:8080 or https://gateway:8080)".into());
    }
    Ok(if text.contains("://") { text.to_owned() } else { format!("http://{text}") })
}

fn parse_storage_spec(text: &str) -> Result<crate::storage::StorageSpec, String> {
    crate::storage::StorageSpec::parse(text).map_err(|e| e.to_string())
}

/// How to reach the gateway and how to print; shared by every client subcommand.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The gateway's address (`host:port` means `http://host:port`).
    #[arg(long, env = "STATEGATE_ADDR", default_value = "http://127.0.0.1:8080", value_parser = gateway_address)]
    pub addr: String,

    /// Bearer token (a JWT) sent with every call.
    #[arg(long, env = "STATEGATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// CA certificate (PEM) to trust for an https:// address.
    #[arg(long, env = "STATEGATE_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,

    /// Print JSON (the REST API's form) instead of text for people: one
    /// object per line, for a listing one per record or event.
    #[arg(long)]
    pub json: bool,

    /// Deadline of a call, seconds (0 = none; streams never have one).
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

/// A record: `DOMAIN TYPE KEY`.
#[derive(Debug, Args)]
pub struct Record {
    pub domain: String,
    #[arg(value_name = "TYPE")]
    pub ty: String,
    pub key: String,
}

/// The conditions of a write.
#[derive(Debug, Args)]
pub struct WriteOpts {
    /// Write only when the record is at this version (0: must not exist).
    #[arg(long)]
    pub expected_version: Option<i64>,
    /// Retries with the same key within the gateway's window are applied once.
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub record: Record,
    /// Del only when the record is at this version (0: must not exist).
    #[arg(long)]
    pub expected_version: Option<i64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    #[command(flatten)]
    pub record: Record,
    /// The values: a JSON object, `-` to read it from standard input, or
    /// `@FILE` to read it from a file.
    pub values: String,
    #[command(flatten)]
    pub write: WriteOpts,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    #[command(flatten)]
    pub record: Record,
    /// The merge patch: a JSON object, `-` to read it from standard input,
    /// or `@FILE` to read it from a file.
    pub patch: String,
    #[command(flatten)]
    pub write: WriteOpts,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to_version", "to_event"])))]
pub struct RevertArgs {
    #[command(flatten)]
    pub record: Record,
    /// The version of the record whose values become current again.
    #[arg(long, value_name = "VERSION")]
    pub to_version: Option<i64>,
    /// The event of the record whose values become current again.
    #[arg(long, value_name = "EVENT_ID")]
    pub to_event: Option<String>,
    #[command(flatten)]
    pub write: WriteOpts,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    pub domain: String,
    #[arg(value_name = "TYPE")]
    pub ty: String,
    /// A JSON object the values must hold, e.g. '{"address.city":"Paris"}'.
    #[arg(long, short, default_value = "{}")]
    pub query: String,
    #[arg(long, short, default_value_t = 100)]
    pub limit: i64,
    #[arg(long, default_value_t = 0)]
    pub offset: i64,
    /// Sort by this field of the values (dot notation); by key otherwise.
    #[arg(long)]
    pub sort_by: Option<String>,
    /// Sort descending.
    #[arg(long)]
    pub desc: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    pub domain: String,
    #[arg(value_name = "TYPE")]
    pub ty: String,
    /// Only the history of this record.
    #[arg(long, short)]
    pub key: Option<String>,
    /// A JSON object the event's values must hold.
    #[arg(long, short, default_value = "{}")]
    pub query: String,
    /// Events at or after this time: `1h` (ago), RFC 3339, or Unix nanoseconds.
    #[arg(long, alias = "min", value_name = "TIME", value_parser = when::unix_nanos)]
    pub since: Option<i64>,
    /// Events at or before this time: `30m` (ago), RFC 3339, or Unix nanoseconds.
    #[arg(long, alias = "max", value_name = "TIME", value_parser = when::unix_nanos)]
    pub until: Option<i64>,
    #[arg(long, short, default_value_t = 100, conflicts_with = "last")]
    pub limit: i64,
    #[arg(long, default_value_t = 0)]
    pub offset: i64,
    /// Only the newest N events (printed oldest first, unless `--desc`).
    #[arg(long, value_name = "N")]
    pub last: Option<i64>,
    /// Order by this: `time`, or `values.<dot path>` for a field of the
    /// values (default: the store's order, oldest first).
    #[arg(long, value_name = "FIELD")]
    pub sort: Option<String>,
    /// Newest (or largest) first.
    #[arg(long)]
    pub desc: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct StreamArgs {
    /// The domain, or `*` for every domain.
    pub domain: String,
    /// The type, or `*` for every type.
    #[arg(value_name = "TYPE")]
    pub ty: String,
    /// Only events of this record.
    #[arg(long, short)]
    pub key: Option<String>,
    /// Replay the history after this event id first.
    #[arg(long, conflicts_with = "from_time")]
    pub after: Option<String>,
    /// Replay the history from this time first: `1h` (ago), RFC 3339, or
    /// Unix nanoseconds (`1`: from the beginning).
    #[arg(long, alias = "since", value_name = "TIME", value_parser = when::unix_nanos)]
    pub from_time: Option<i64>,
    /// Stop after this many events.
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// Say nothing on standard error when the connection drops and resumes.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct CatalogArgs {
    /// Only this domain (default: every domain).
    pub domain: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// A service name to check (default: the whole server).
    #[arg(long, default_value = "")]
    pub service: String,
    #[command(flatten)]
    pub client: ClientArgs,
}
