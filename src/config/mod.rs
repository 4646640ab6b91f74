//! Configuration: the TOML file (SPEC §4) read into a raw serde view, then validated once into
//! the typed [`Config`] the rest of the gateway uses. Every error names the file, the key and the
//! problem, so `check` and `serve` can refuse a bad file with one clear line.
//!
//! Secrets (the upstream key, the admin token) are read from the environment or a file into
//! newtypes whose `Debug` prints `[redacted]` and whose memory is zeroed on drop.

//!
//! Layout: `raw.rs` (the serde mirror of the file), `validate.rs` (defaults, checks, secrets, PEM),
//! `pattern.rs` (`allow` patterns), `summary.rs` (what `check` prints), `error.rs`.

mod error;
mod pattern;
mod raw;
mod summary;
mod validate;

#[cfg(test)]
mod tests;

pub use error::ConfigError;
pub use summary::ADMIN_OPEN;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Uri};

/// Reads and validates the config file, taking secrets from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with_env(path, &|name| std::env::var(name).ok())
}

/// Like [`load`], with the environment given as a lookup function (tests, reload).
pub fn load_with_env(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, "(file)", format!("cannot read: {e}")))?;
    parse_str(path, &text, env)
}

/// Validates config text; `path_for_messages` is what errors and `Config::source` name.
/// Files the config names (PEM, key file) are still read from disk, relative to the working
/// directory.
pub fn parse_str(
    path_for_messages: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let raw = validate::parse_raw(path_for_messages, text)?;
    validate::validate(raw, path_for_messages, env)
}

/// The whole validated configuration. Immutable; swapped whole on reload.
#[derive(Debug)]
pub struct Config {
    /// The file this was read from, for messages.
    pub source: PathBuf,
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub upstream: UpstreamConfig,
    pub rate_limit: RateLimitConfig,
    pub ledger: LedgerConfig,
    pub credits: CreditsConfig,
    /// Present only in the quickstart: `serve` also runs the sandbox upstream in-process.
    pub sandbox: Option<SandboxConfig>,
    pub clients: ClientRegistry,
}

#[derive(Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsSettings>,
    /// Absolute `http(s)://host[:port]` without a trailing slash; `None`: the address the
    /// client listener is bound to (so a `listen` on port 0 gets its real port).
    pub public_url: Option<String>,
    pub max_body_bytes: u64,
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
    pub shutdown_grace: Duration,
    /// The slow-loris guard: a client has this long to send a request's headers, and a
    /// connection with no request in flight (new, or idle keep-alive, HTTP/1.1 or HTTP/2) is
    /// closed after this long.
    pub header_read_timeout: Duration,
    /// Open client connections at most; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// A response whose client takes no bytes for this long is cut (see `src/server.rs`,
    /// `SendWatch`): its connection is closed, its concurrency slot and upstream connection freed.
    pub send_timeout: Duration,
}

/// TLS termination on the client listener; the PEM files were loaded and checked at validation.
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Ready to use, ALPN `h2` then `http/1.1`.
    pub server_config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// When set, `/metrics` and `/usage` need `Authorization: Bearer <token>`.
    pub token: Option<Secret>,
}

#[derive(Debug)]
pub struct UpstreamConfig {
    /// Scheme and authority, plus an optional path prefix without a trailing slash.
    pub base_url: Uri,
    pub api_key: Secret,
    /// Where the key came from (`env ONLYFANSAPI_API_KEY` / `file /run/...`), for summaries.
    pub api_key_source: String,
    /// Extra trust roots on top of the built-in web PKI roots.
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub forwarded_headers: ForwardedHeaders,
}

/// `upstream.forwarded_headers`: what becomes of the proxy headers a client sends
/// (`Forwarded`, `X-Forwarded-For`, `-Host`, `-Proto`, `X-Real-IP`), which are its own claims.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardedHeaders {
    /// They go, and nothing replaces them: the upstream sees the gateway as the client.
    #[default]
    Strip,
    /// They go, and `Forwarded`, `X-Forwarded-For` and `X-Forwarded-Proto` say what the
    /// gateway saw: the address the connection came from and the listener's scheme.
    Replace,
}

impl UpstreamConfig {
    /// The base URL's path prefix to put before each `/api/...` path: `""` for none, else like
    /// `"/proxy"` (never a trailing slash). `base_url.path()` itself is `"/"` when there is none.
    pub fn path_prefix(&self) -> &str {
        self.base_url.path().trim_end_matches('/')
    }
}

#[derive(Debug)]
pub struct RateLimitConfig {
    pub requests_per_minute: NonZeroU32,
    /// In (0, 1].
    pub headroom: f64,
    pub max_wait: Duration,
}

#[derive(Debug)]
pub struct LedgerConfig {
    pub path: PathBuf,
    pub retention: Duration,
}

#[derive(Debug)]
pub struct CreditsConfig {
    pub low_balance_warning: u64,
}

/// `[sandbox]`: run the stand-in upstream inside `serve` (quickstart only).
#[derive(Debug)]
pub struct SandboxConfig {
    pub listen: SocketAddr,
    /// A demo client key whose hash is one of the clients'; printed in a ready-to-paste curl.
    pub demo_client_key: Option<String>,
}

/// A secret string: never printed by `Debug`, zeroed on drop.
///
/// Zeroing covers the gateway's own copies: this value, and the intermediate buffers it was read
/// through (`validate.rs` wraps the env var's and the file's text in `Zeroizing`). It cannot
/// cover copies owned by others, which are freed without being zeroed:
/// - the process environment (`api_key_env`, `token_env`), which the gateway never rewrites;
/// - the `Authorization` header value built by [`Secret::bearer_header`]: an immutable, shared
///   `Bytes` (`http::HeaderValue`) cloned onto each upstream request; and what hyper copies of
///   it into its connection write buffers (HTTP/1.1) or encodes into HPACK frames (HTTP/2, as a
///   never-indexed literal since the value is marked sensitive), and rustls' TLS records;
/// - for the admin token: the SHA-256 digests compared in `admin.rs` (of no use to present).
///
/// Presented client keys are never copied by the gateway: `bearer_token` borrows them from the
/// request's header, which lives in hyper's read buffer until it is reused or freed (not
/// zeroed), and SHA-256's block buffer on the stack (sha2 does not zero it).
pub struct Secret {
    value: zeroize::Zeroizing<String>,
    /// `Bearer <value>`, built once on first use (marked sensitive: `Debug` hides it).
    bearer: std::sync::OnceLock<Option<http::HeaderValue>>,
}

impl Secret {
    pub fn new(value: String) -> Self {
        Self {
            value: zeroize::Zeroizing::new(value),
            bearer: std::sync::OnceLock::new(),
        }
    }
    /// The secret itself; call only where it must go on the wire.
    pub fn expose(&self) -> &str {
        &self.value
    }
    /// `Authorization: Bearer <secret>` as a header value, built once (`None` if the secret
    /// cannot be a header value; validation refuses such secrets).
    pub fn bearer_header(&self) -> Option<http::HeaderValue> {
        self.bearer
            .get_or_init(|| {
                let mut value =
                    http::HeaderValue::try_from(format!("Bearer {}", *self.value)).ok()?;
                value.set_sensitive(true);
                Some(value)
            })
            .clone()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// SHA-256 of a client key: the only form in which client keys are stored.
///
/// Equality is constant-time (`subtle`): comparing a presented key's hash with a stored one takes
/// the same time whichever byte differs. See [`ClientRegistry::lookup`] for the whole argument.
#[derive(Clone, Copy)]
pub struct KeyHash(pub [u8; 32]);

impl PartialEq for KeyHash {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl Eq for KeyHash {}

// Written out because `PartialEq` is: equal values (same bytes) hash the same, as `HashMap` needs.
impl std::hash::Hash for KeyHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl KeyHash {
    pub fn of_key(key: &str) -> Self {
        use sha2::Digest;
        Self(sha2::Sha256::digest(key.as_bytes()).into())
    }
}

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyHash({})", hex::encode(self.0))
    }
}

/// A client's name, `[a-z0-9_-]{1,64}`: the label on its logs, metrics and ledger rows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub Arc<str>);

impl ClientId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetPeriod {
    Day,
    Month,
}

#[derive(Clone, Debug)]
pub struct Client {
    pub id: ClientId,
    pub key_hashes: Vec<KeyHash>,
    pub disabled: bool,
    pub requests_per_minute: Option<NonZeroU32>,
    pub credit_budget: Option<u64>,
    pub budget_period: BudgetPeriod,
    /// `None`: all of `/api/`.
    pub allow: Option<Vec<RoutePattern>>,
    /// `None`: every account.
    pub accounts: Option<Vec<String>>,
}

/// The clients, indexed by key hash for the authentication lookup.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    pub clients: Vec<Arc<Client>>,
    by_hash: HashMap<KeyHash, Arc<Client>>,
}

impl ClientRegistry {
    pub fn new(clients: Vec<Arc<Client>>) -> Self {
        let by_hash = clients
            .iter()
            .flat_map(|c| c.key_hashes.iter().map(move |h| (*h, Arc::clone(c))))
            .collect();
        Self { clients, by_hash }
    }
    /// The client holding this key hash, if any.
    ///
    /// # Timing
    ///
    /// Authentication must not let a client learn, from how long a refusal takes, anything that
    /// brings it closer to a valid key. What it goes through:
    ///
    /// 1. `bearer_token` parses the presented key: its time depends on the presented bytes only,
    ///    which the caller already knows.
    /// 2. [`KeyHash::of_key`] hashes it with SHA-256: time depends only on the key's length.
    ///    From here on the attacker's input is a SHA-256 digest it cannot steer: choosing a key
    ///    whose digest starts with given bytes is a preimage search.
    /// 3. This lookup: `HashMap` with std's `RandomState` (SipHash-1-3 under a random per-process
    ///    key) picks the bucket group and probes it. Which group, and how many probes, depend on
    ///    that secret SipHash key and on the table's layout, not on any stored hash's bytes in a
    ///    way the caller can relate to its input; at worst it learns whether its digest's SipHash
    ///    collides with a stored one, which says nothing about the stored key.
    /// 4. Candidates are compared with [`KeyHash`]'s constant-time equality (`subtle::ct_eq` over
    ///    all 32 bytes): no early exit at the first differing byte. Even a byte-by-byte compare
    ///    would leak only how many leading bytes of an uncontrollable digest match a stored
    ///    SHA-256 — of no use without a preimage — but there is no reason to leak even that.
    ///
    /// What does differ by outcome (unknown vs disabled vs valid key) is stated by the answer
    /// itself (401 with its reason, or the call going through), so timing adds nothing. The
    /// admin token is compared the same way: SHA-256 of both sides, then `ct_eq` (`admin.rs`).
    pub fn lookup(&self, hash: &KeyHash) -> Option<&Arc<Client>> {
        self.by_hash.get(hash)
    }
}

/// One `allow` entry: `"PUT /api/fansly/*/tracking-links/*"`, `"GET /api/fansly/**"`, or a
/// path alone for any method. `*` is one segment, `**` any number (zero included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutePattern {
    pub method: Option<Method>,
    pub segments: Vec<PatternSegment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatternSegment {
    Literal(String),
    AnyOne,
    AnyMany,
}
