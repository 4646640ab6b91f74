//! The raw serde view of `gateway.toml` (SPEC §4): exactly the keys an operator may write, every
//! one optional, nothing checked beyond TOML types. `deny_unknown_fields` everywhere, so a typo is
//! refused with its dotted path instead of being silently ignored. Defaults and meaning are applied
//! by `validate`, not here, so this file stays a plain mirror of the documented format.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// `[server]`: the client-facing listener.
    pub server: Option<RawServer>,
    /// `[admin]`: the operator listener (health, metrics, usage).
    pub admin: Option<RawAdmin>,
    /// `[upstream]`: where requests go and with which key.
    pub upstream: Option<RawUpstream>,
    /// `[rate_limit]`: the shared upstream budget.
    pub rate_limit: Option<RawRateLimit>,
    /// `[ledger]`: the credit ledger on disk.
    pub ledger: Option<RawLedger>,
    /// `[credits]`: balance alerts.
    pub credits: Option<RawCredits>,
    /// `[sandbox]`: quickstart only, runs the stand-in upstream inside `serve`.
    pub sandbox: Option<RawSandbox>,
    /// `[[clients]]`: who may call the gateway; none is valid (every request is then refused).
    pub clients: Option<Vec<RawClient>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    /// Socket address of the client listener, default `127.0.0.1:8080`.
    pub listen: Option<String>,
    /// PEM certificate chain for TLS termination; needs `tls_key` too.
    pub tls_cert: Option<String>,
    /// PEM private key matching `tls_cert`.
    pub tls_key: Option<String>,
    /// The URL clients reach the gateway at, used to rewrite `_pagination.next_page`;
    /// default `http(s)://{listen}`.
    pub public_url: Option<String>,
    /// Request bodies above this many bytes get 413, default 10 MiB.
    pub max_body_bytes: Option<u64>,
    /// Whole-request deadline, default `"60s"`.
    pub request_timeout: Option<String>,
    /// Requests in flight above this get 503 at once, default 1024.
    pub max_concurrent_requests: Option<u64>,
    /// How long a graceful stop waits for requests in flight, default `"30s"`.
    pub shutdown_grace: Option<String>,
    /// How long a client may take to send a request's headers, and how long a connection may sit
    /// idle without a request in flight before it is closed, default `"30s"`.
    pub header_read_timeout: Option<String>,
    /// Open client connections above this are closed as soon as they are accepted, default 10000.
    pub max_connections: Option<u64>,
    /// A response whose client takes no bytes for this long is cut, default `"60s"`.
    pub send_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    /// Socket address of the admin listener, default `127.0.0.1:8081`.
    pub listen: Option<String>,
    /// Name of the env var holding the bearer token for `/metrics` and `/usage`; unset: no token.
    pub token_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    /// OnlyFansAPI base URL, default `https://app.onlyfansapi.com`; may carry a path prefix.
    pub base_url: Option<String>,
    /// Name of the env var holding the upstream key; default `ONLYFANSAPI_API_KEY` when no
    /// `api_key_file` is given.
    pub api_key_env: Option<String>,
    /// File holding the upstream key (surrounding whitespace trimmed); excludes `api_key_env`.
    pub api_key_file: Option<String>,
    /// PEM file of extra trust roots for the upstream connection.
    pub ca_file: Option<String>,
    /// TCP + TLS connect deadline, default `"5s"`.
    pub connect_timeout: Option<String>,
    /// Deadline for the upstream's response head, default `"60s"`.
    pub timeout: Option<String>,
    /// What the upstream learns of the client's address: `"strip"` (default) or `"replace"`.
    pub forwarded_headers: Option<RawForwardedHeaders>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawForwardedHeaders {
    Strip,
    Replace,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    /// The plan's per-minute limit until the upstream reports its own, default 1000.
    pub requests_per_minute: Option<u32>,
    /// Share of the upstream limit the gateway uses, in (0, 1], default 0.9.
    pub headroom: Option<f64>,
    /// How long a request may wait for a slot before 429, default `"2s"` (`"0s"` allowed).
    pub max_wait: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLedger {
    /// SQLite file, default `data/ledger.sqlite`.
    pub path: Option<String>,
    /// Raw rows older than this are folded into daily roll-ups, default `"90d"`, at least a day.
    pub retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCredits {
    /// Warn once when the credit balance falls below this, default 10000.
    pub low_balance_warning: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSandbox {
    /// Where the in-process sandbox upstream listens; required when `[sandbox]` is present.
    pub listen: String,
    /// A client key (not a hash) printed in the quickstart's ready-to-paste curl; must belong
    /// to one of the clients.
    pub demo_client_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClient {
    /// Unique label, `[a-z0-9_-]{1,64}`.
    pub name: Option<String>,
    /// SHA-256 of the client's key in hex; a list lets an old and a new key overlap.
    pub key_sha256: Option<OneOrMany>,
    /// Refuse this client's keys without deleting it, default false.
    pub disabled: Option<bool>,
    /// Per-client per-minute limit on top of the shared budget.
    pub requests_per_minute: Option<u32>,
    /// Credits this client may spend per `budget_period`; unset: unlimited.
    pub credit_budget: Option<u64>,
    /// `"day"` or `"month"` (UTC calendar), default month.
    pub budget_period: Option<RawBudgetPeriod>,
    /// Route patterns this client may call; unset: all of `/api/`.
    pub allow: Option<Vec<String>>,
    /// Account ids this client may touch; unset: every account.
    pub accounts: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawBudgetPeriod {
    Day,
    Month,
}

/// `key_sha256 = "..."` or `key_sha256 = ["...", "..."]`. Hand-written rather than
/// `#[serde(untagged)]` so a wrong type gets a clear message and keeps its key path.
#[derive(Debug)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 64-hex-digit string or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany::Many(out))
            }
        }
        deserializer.deserialize_any(V)
    }
}
