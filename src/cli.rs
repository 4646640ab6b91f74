//! The command line (SPEC §3) and the small glue of each subcommand. Output meant for people
//! (`check`'s summary, `keygen`'s key, `usage`'s report) goes to stdout; errors go to stderr as
//! one line.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::fmt::format::JsonFields;

use crate::body::BoxError;
use crate::config::{self, Config, ConfigError, KeyHash};
use crate::ledger::{self, Format, GroupBy};
use crate::log_format::JsonLines;
use crate::log_output::BufferedStdout;
use crate::sandbox::{self, SandboxOptions};
use crate::server::Gateway;

/// An authenticating, rate-limiting, credit-metering reverse proxy for OnlyFansAPI.
#[derive(Debug, Parser)]
#[command(name = "ofapi-gateway", version, about, long_about = None)]
pub struct Cli {
    /// The configuration file.
    #[arg(
        long,
        global = true,
        env = "OFAPI_GATEWAY_CONFIG",
        default_value = "config/gateway.toml"
    )]
    pub config: PathBuf,

    /// Log format: JSON lines for machines, or pretty for people; auto picks pretty on a terminal.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway until SIGTERM or SIGINT (graceful drain); SIGHUP reloads clients and limits.
    Serve {
        /// Benchmarks only: forward without reading credits (no ledger rows, metrics or budgets).
        #[arg(long, hide = true)]
        no_metering: bool,
    },
    /// Validate the configuration and the secrets it names, and print a summary.
    Check,
    /// Print a new random client key once, and the [[clients]] block (holding only its SHA-256).
    Keygen {
        /// The client's name, [a-z0-9_-]{1,64}.
        #[arg(long)]
        name: String,
    },
    /// Report credit spend from the ledger, grouped by client, account, route or day.
    #[command(
        long_about = "Report credit spend from the ledger, grouped by client, account, route or \
                      day.\n\nReads only [ledger] path from the config file: no secret needs to \
                      be set, and it can run next to a running gateway. Calls whose credits the \
                      upstream did not report are counted apart (unknown_credits), not as 0.",
        after_help = "Examples:\n  \
                      ofapi-gateway usage\n  \
                      ofapi-gateway usage --since 7d --by route\n  \
                      ofapi-gateway usage --since 2026-11-01 --by day --format csv > spend.csv"
    )]
    Usage {
        /// Start of the period: a duration back from now (24h, 7d, 90m), a UTC date
        /// (2026-11-01) or an RFC 3339 timestamp (2026-11-01T12:00:00Z).
        #[arg(long, default_value = "24h", value_name = "24h|7d|DATE")]
        since: String,
        /// What each row is: a client, an account, a route template or a UTC day.
        #[arg(long, value_enum, default_value_t = UsageBy::Client)]
        by: UsageBy,
        /// Aligned columns with a total, one JSON object, or CSV (header line, no total).
        #[arg(long, value_enum, default_value_t = UsageFormat::Table)]
        format: UsageFormat,
    },
    /// Run a local stand-in for the upstream (Fansly tracking links), for trying and testing.
    Sandbox {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        /// The upstream key it accepts.
        #[arg(
            long,
            env = "SANDBOX_API_KEY",
            default_value = "sandbox-key",
            hide_env_values = true
        )]
        api_key: String,
        /// Its per-minute request limit; past it, 429 until the minute turns.
        #[arg(long, default_value_t = 1000)]
        requests_per_minute: u32,
        /// The credit balance it starts with.
        #[arg(long, default_value_t = 10_000_000)]
        balance: u64,
    },
}

/// `usage --by`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum UsageBy {
    Client,
    Account,
    Route,
    Day,
}

impl From<UsageBy> for GroupBy {
    fn from(by: UsageBy) -> Self {
        match by {
            UsageBy::Client => GroupBy::Client,
            UsageBy::Account => GroupBy::Account,
            UsageBy::Route => GroupBy::Route,
            UsageBy::Day => GroupBy::Day,
        }
    }
}

/// `usage --format`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum UsageFormat {
    Table,
    Json,
    Csv,
}

impl From<UsageFormat> for Format {
    fn from(format: UsageFormat) -> Self {
        match format {
            UsageFormat::Table => Format::Table,
            UsageFormat::Json => Format::Json,
            UsageFormat::Csv => Format::Csv,
        }
    }
}

impl Cli {
    /// Runs the command; the exit code is 0 on success, 1 on any error (printed as one line).
    pub fn run(self) -> ExitCode {
        let result = match self.command {
            Command::Check => check(&self.config),
            Command::Keygen { ref name } => keygen(name),
            Command::Usage {
                ref since,
                by,
                format,
            } => usage(&self.config, since, by.into(), format.into()),
            Command::Serve { no_metering } => {
                init_tracing(self.log_format);
                control_runtime().and_then(|rt| rt.block_on(serve(&self.config, !no_metering)))
            }
            Command::Sandbox {
                listen,
                ref api_key,
                requests_per_minute,
                balance,
            } => {
                init_tracing(self.log_format);
                let options = SandboxOptions {
                    api_key: api_key.clone(),
                    requests_per_minute,
                    starting_balance: balance,
                };
                runtime().and_then(|rt| rt.block_on(run_sandbox(listen, options)))
            }
        };
        // Log lines still in the buffer go out before the process ends.
        BufferedStdout::flush();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        }
    }
}

/// `serve`'s own runtime: signals, the admin listener, the in-process sandbox, the limiter's
/// dispatcher. The client listener is served by threads of its own (`server::ServingThreads`).
fn control_runtime() -> Result<tokio::runtime::Runtime, BoxError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn runtime() -> Result<tokio::runtime::Runtime, BoxError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Logs go to stdout: JSON lines unless stdout is a terminal (or `--log-format` says otherwise).
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(BufferedStdout::get());
    let _ = if json {
        // The line of `.json().flatten_event(true).with_current_span(true).with_span_list(false)`,
        // for a fraction of its cost.
        builder
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .try_init()
    } else {
        builder.try_init()
    };
}

#[allow(clippy::print_stdout)]
fn check(path: &Path) -> Result<(), BoxError> {
    let config = config::load(path)?;
    println!("{}", config.summary());
    println!("OK: {} is valid.", path.display());
    Ok(())
}

/// What every generated client key starts with (`keygen`), so a leaked one is recognisable.
const KEY_PREFIX: &str = "ofgw_";

#[allow(clippy::print_stdout)]
fn keygen(name: &str) -> Result<(), BoxError> {
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !valid {
        return Err(format!("--name: {name:?} must match [a-z0-9_-]{{1,64}}").into());
    }
    // The key and its random bytes are zeroed when dropped. Built in place at its final size,
    // so no reallocation leaves a copy behind; what cannot be zeroed is stdout's own buffer.
    let mut random = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut *random).map_err(|e| format!("no OS randomness: {e}"))?;
    let mut key = zeroize::Zeroizing::new(String::with_capacity(KEY_PREFIX.len() + 43));
    key.push_str(KEY_PREFIX);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(random.as_slice(), &mut key);
    let hash = hex::encode(KeyHash::of_key(&key).0);
    println!("# The key for client {name:?}, shown only this once. Give it to the client:");
    println!("{}", *key);
    println!();
    println!("# Paste into the gateway config (it holds only the key's SHA-256):");
    println!("[[clients]]");
    println!("name = \"{name}\"");
    println!("key_sha256 = \"{hash}\"");
    Ok(())
}

#[allow(clippy::print_stdout)]
fn usage(config: &Path, since: &str, by: GroupBy, format: Format) -> Result<(), BoxError> {
    let path = ledger_path(config)?;
    let since_ms =
        ledger::parse_since(since, ledger::now_ms()).map_err(|e| format!("--since: {e}"))?;
    let report = ledger::usage(&path, since_ms, by)?;
    print!("{}", report.render(format));
    Ok(())
}

/// `[ledger] path` from the config file, defaulting as `config::load` does, without validating
/// the rest: reading the ledger needs neither the upstream key nor any other secret. Relative
/// paths are relative to the working directory, as for `serve`.
fn ledger_path(config: &Path) -> Result<PathBuf, ConfigError> {
    /// The one key `usage` needs; everything else in the file is ignored here.
    #[derive(serde::Deserialize)]
    struct File {
        ledger: Option<LedgerSection>,
    }
    #[derive(serde::Deserialize)]
    struct LedgerSection {
        path: Option<String>,
    }
    let text = std::fs::read_to_string(config)
        .map_err(|e| ConfigError::new(config, "(file)", format!("cannot read: {e}")))?;
    let file: File = toml::from_str(&text).map_err(|e| {
        ConfigError::new(config, "(file)", format!("not valid TOML: {}", e.message()))
    })?;
    let path = file
        .ledger
        .and_then(|l| l.path)
        .unwrap_or_else(|| DEFAULT_LEDGER_PATH.to_owned());
    if path.trim().is_empty() {
        return Err(ConfigError::new(config, "ledger.path", "must not be empty"));
    }
    Ok(PathBuf::from(path))
}

/// The `[ledger] path` when the file has none (the same default `config::load` applies).
const DEFAULT_LEDGER_PATH: &str = "data/ledger.sqlite";

async fn serve(path: &Path, metering: bool) -> Result<(), BoxError> {
    let config = config::load(path)?;
    if config.admin_is_open() {
        tracing::warn!(admin = %config.admin.listen, "admin listener: {}", config::ADMIN_OPEN);
    }
    let demo = demo_curl(&config);
    let gateway = Gateway::start_with(config, metering).await?;
    if !metering {
        tracing::warn!("metering is off (--no-metering): credits are not recorded");
    }
    tracing::info!(
        client = %gateway.client_addr,
        admin = %gateway.admin_addr,
        sandbox = gateway.sandbox_addr.map(|a| a.to_string()),
        "ofapi-gateway ready"
    );
    if let Some(demo) = demo {
        eprintln!("\n{}\n", demo(gateway.client_addr));
    }

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => reload(&gateway, path),
        }
    }
    tracing::info!("shutting down: draining in-flight requests");
    gateway.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: the new file takes effect only if it is valid as a whole.
fn reload(gateway: &Gateway, path: &Path) {
    match config::load(path) {
        Ok(new) => {
            let clients = new.clients.clients.len();
            let needs_restart = gateway.reload(new);
            tracing::info!(clients, "configuration reloaded");
            if !needs_restart.is_empty() {
                tracing::warn!(
                    keys = needs_restart.join(", "),
                    "these settings changed but take effect only after a restart"
                );
            }
        }
        Err(error) => {
            tracing::error!(%error, "reload refused; the current configuration stays in force");
        }
    }
}

/// In the quickstart: a ready-to-paste curl that updates a tracking link through the gateway.
fn demo_curl(config: &Config) -> Option<impl Fn(SocketAddr) -> String> {
    let key = config.sandbox.as_ref()?.demo_client_key.clone()?;
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    Some(move |addr: SocketAddr| {
        format!(
            "Try it (a demo client key, in front of the in-process sandbox upstream):\n\n\
             curl -sS -X PUT {scheme}://{addr}/api/fansly/fansly_acct_demo/tracking-links/100000000000000003 \\\n  \
             -H 'Authorization: Bearer {key}' \\\n  \
             -H 'Content-Type: application/json' \\\n  \
             -d '{{\"label\": \"Twitter bio (updated)\", \"description\": \"Updated description.\"}}'"
        )
    })
}

async fn run_sandbox(listen: SocketAddr, options: SandboxOptions) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("--listen: cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(listen = %addr, limit_minute = options.requests_per_minute, "sandbox upstream ready");
    let shutdown = async {
        let (Ok(mut terminate), Ok(mut interrupt)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    sandbox::serve(listener, options, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_finds_the_same_ledger_path_as_the_full_config_load() {
        let dir = tempfile::tempdir().unwrap();
        let key = |_: &str| Some("upstream-key".to_owned());
        for text in ["", "[ledger]\npath = \"elsewhere/l.sqlite\"\n"] {
            let file = dir.path().join("gateway.toml");
            std::fs::write(&file, text).unwrap();
            let full = config::load_with_env(&file, &key).unwrap();
            assert_eq!(ledger_path(&file).unwrap(), full.ledger.path, "{text:?}");
        }
    }

    #[test]
    fn usage_reads_the_ledger_path_without_any_secret_set() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gateway.toml");
        let text = "[upstream]\napi_key_env = \"OFGW_TEST_NEVER_SET_9f3a\"\n\
                    [admin]\ntoken_env = \"OFGW_TEST_NEVER_SET_9f3b\"\n\
                    [ledger]\npath = \"/var/lib/ofgw/ledger.sqlite\"\n";
        std::fs::write(&file, text).unwrap();
        assert_eq!(
            ledger_path(&file).unwrap(),
            PathBuf::from("/var/lib/ofgw/ledger.sqlite")
        );
    }

    #[test]
    fn usage_refuses_an_unreadable_or_broken_config_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let err = ledger_path(&missing).unwrap_err().to_string();
        assert!(
            err.contains("nope.toml") && err.contains("cannot read"),
            "{err}"
        );

        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, "[ledger\n").unwrap();
        let err = ledger_path(&file).unwrap_err().to_string();
        assert!(err.contains("not valid TOML"), "{err}");

        std::fs::write(&file, "[ledger]\npath = \" \"\n").unwrap();
        let err = ledger_path(&file).unwrap_err().to_string();
        assert!(err.contains("ledger.path: must not be empty"), "{err}");
    }
}
