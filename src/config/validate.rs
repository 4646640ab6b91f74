//! The one validation step: TOML text → [`RawConfig`] → typed [`Config`], applying the SPEC §4
//! defaults, reading the secrets and PEM files the config names, and refusing anything wrong
//! with an error that names its key. Secret values never reach an error message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use super::raw::{
    OneOrMany, RawBudgetPeriod, RawClient, RawConfig, RawForwardedHeaders, RawSandbox,
};
use super::{
    AdminConfig, BudgetPeriod, Client, ClientId, ClientRegistry, Config, ConfigError,
    CreditsConfig, ForwardedHeaders, KeyHash, LedgerConfig, RateLimitConfig, RoutePattern,
    SandboxConfig, Secret, ServerConfig, TlsSettings, UpstreamConfig,
};

// SPEC §4 defaults.
const DEFAULT_SERVER_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8081";
const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 1024;
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// nginx's `send_timeout` default.
const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
const DEFAULT_BASE_URL: &str = "https://app.onlyfansapi.com";
const DEFAULT_API_KEY_ENV: &str = "ONLYFANSAPI_API_KEY";
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_REQUESTS_PER_MINUTE: u32 = 1000;
const DEFAULT_HEADROOM: f64 = 0.9;
const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(2);
const DEFAULT_LEDGER_PATH: &str = "data/ledger.sqlite";
const DEFAULT_RETENTION: Duration = Duration::from_secs(90 * 86_400);
const DEFAULT_LOW_BALANCE_WARNING: u64 = 10_000;
const ONE_DAY: Duration = Duration::from_secs(86_400);

/// Reads the TOML into the raw view. Syntax errors are keyed `line N, column M`; unknown keys
/// and wrong types by their dotted path (serde_path_to_error).
pub(crate) fn parse_raw(file: &Path, text: &str) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::parse(text)
        .map_err(|e| ConfigError::new(file, position(text, e.span()), e.message()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let key = if path.is_empty() || path == "." {
            position(text, e.inner().span())
        } else {
            path
        };
        ConfigError::new(file, key, e.inner().message())
    })
}

/// `line N, column M` (1-based) of a byte offset, for errors without a key path.
fn position(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(before) = span.and_then(|s| text.get(..s.start)) else {
        return "(file)".to_owned();
    };
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}")
}

/// What validation needs besides the raw config: where it came from and the environment.
struct Ctx<'a> {
    file: &'a Path,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Ctx<'_> {
    fn err(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::new(self.file, key, reason)
    }

    fn socket_addr(
        &self,
        key: &str,
        value: Option<&str>,
        default: &str,
    ) -> Result<SocketAddr, ConfigError> {
        let s = value.unwrap_or(default);
        s.trim().parse().map_err(|_| {
            self.err(
                key,
                format!("expected an IP address and port like 127.0.0.1:8080, got {s:?}"),
            )
        })
    }

    /// A humantime duration string; zero only where `allow_zero`.
    fn duration(
        &self,
        key: &str,
        value: Option<&str>,
        default: Duration,
        allow_zero: bool,
    ) -> Result<Duration, ConfigError> {
        let Some(s) = value else { return Ok(default) };
        let d = humantime::parse_duration(s.trim()).map_err(|e| {
            self.err(
                key,
                format!("invalid duration {s:?} ({e}); write e.g. \"30s\", \"5m\", \"90d\""),
            )
        })?;
        if d.is_zero() && !allow_zero {
            return Err(self.err(key, "must be greater than zero"));
        }
        Ok(d)
    }

    /// An absolute http(s) URL without credentials, query or fragment, with any trailing `/`
    /// removed. Without `allow_path`, only scheme, host and port.
    fn http_url(&self, key: &str, s: &str, allow_path: bool) -> Result<Uri, ConfigError> {
        if s.contains('#') {
            return Err(self.err(key, "must not have a #fragment"));
        }
        let uri: Uri = s
            .trim()
            .parse()
            .map_err(|e| self.err(key, format!("not a valid URL ({e})")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(self.err(
                key,
                "must be an absolute URL starting with http:// or https://",
            ));
        }
        let Some(authority) = uri.authority() else {
            return Err(self.err(key, "must name a host"));
        };
        if authority.as_str().contains('@') {
            return Err(self.err(key, "must not contain credentials (user:password@)"));
        }
        if authority.host().is_empty() {
            return Err(self.err(key, "must name a host"));
        }
        if uri.query().is_some() {
            return Err(self.err(key, "must not have a ?query"));
        }
        let path = uri.path().trim_end_matches('/');
        if !path.is_empty() && !allow_path {
            return Err(self.err(key, "must be only scheme, host and port, without a path"));
        }
        let scheme = uri.scheme_str().unwrap_or("https");
        format!("{scheme}://{authority}{path}")
            .parse()
            .map_err(|e| self.err(key, format!("not a valid URL ({e})")))
    }

    /// A secret from the env var `var`, trimmed; refused when unset, empty or not usable in an
    /// HTTP header. Errors name the variable, never its value.
    fn secret_from_env(&self, key: &str, var: &str) -> Result<Secret, ConfigError> {
        let var = var.trim();
        if var.is_empty() {
            return Err(self.err(key, "must name an environment variable"));
        }
        let Some(value) = (self.env)(var).map(Zeroizing::new) else {
            return Err(self.err(key, format!("environment variable {var} is not set")));
        };
        self.secret(key, &value, &format!("environment variable {var}"))
    }

    /// A secret read from a file, trimmed. Errors name the file, never its content.
    fn secret_from_file(&self, key: &str, path: &str) -> Result<Secret, ConfigError> {
        let value = std::fs::read_to_string(path)
            .map(Zeroizing::new)
            .map_err(|e| self.err(key, format!("cannot read {path}: {e}")))?;
        self.secret(key, &value, &format!("file {path}"))
    }

    fn secret(&self, key: &str, value: &str, origin: &str) -> Result<Secret, ConfigError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(self.err(key, format!("{origin} is empty")));
        }
        // It goes on the wire as `Authorization: Bearer <value>`.
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(self.err(
                key,
                format!(
                    "{origin} holds characters not allowed in an HTTP header (value not shown)"
                ),
            ));
        }
        Ok(Secret::new(value.to_owned()))
    }

    fn read_file(&self, key: &str, path: &str) -> Result<Vec<u8>, ConfigError> {
        std::fs::read(path).map_err(|e| self.err(key, format!("cannot read {path}: {e}")))
    }

    /// Every certificate in a PEM file; at least one.
    fn pem_certs(
        &self,
        key: &str,
        path: &str,
    ) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        let pem = self.read_file(key, path)?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(key, format!("{path} is not valid PEM ({e})")))?;
        if certs.is_empty() {
            return Err(self.err(key, format!("{path} holds no PEM certificate")));
        }
        Ok(certs)
    }

    fn tls(&self, cert: &str, key: &str) -> Result<TlsSettings, ConfigError> {
        const CERT: &str = "server.tls_cert";
        const KEY: &str = "server.tls_key";
        let certs = self.pem_certs(CERT, cert)?;
        let key_pem = Zeroizing::new(self.read_file(KEY, key)?);
        let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            pem::Error::NoItemsFound => self.err(KEY, format!("{key} holds no PEM private key")),
            e => self.err(KEY, format!("{key} is not valid PEM ({e})")),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| self.err(CERT, format!("TLS setup failed ({e})")))?
            .with_no_client_auth()
            .with_single_cert(certs, private_key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => self.err(
                    KEY,
                    format!("{key} does not match the certificate in {cert}"),
                ),
                e => self.err(KEY, format!("{key} is not a usable private key ({e})")),
            })?;
        server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsSettings {
            cert: PathBuf::from(cert),
            key: PathBuf::from(key),
            server_config: Arc::new(server_config),
        })
    }
}

/// `b` would fail to bind next to `a` (same port, and same address or either a wildcard).
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The validation step: defaults applied, everything checked, secrets and PEM files loaded.
pub(crate) fn validate(
    raw: RawConfig,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let cx = Ctx { file, env };

    // [server]
    let s = raw.server.unwrap_or_default();
    let listen = cx.socket_addr("server.listen", s.listen.as_deref(), DEFAULT_SERVER_LISTEN)?;
    let tls = match (&s.tls_cert, &s.tls_key) {
        (Some(cert), Some(key)) => Some(cx.tls(cert, key)?),
        (None, None) => None,
        (Some(_), None) => {
            return Err(cx.err("server.tls_key", "required when server.tls_cert is set"))
        }
        (None, Some(_)) => {
            return Err(cx.err("server.tls_cert", "required when server.tls_key is set"))
        }
    };
    // Left out: the address the client listener is bound to (known only once it is, for port 0).
    let public_url = match &s.public_url {
        Some(url) => {
            let uri = cx.http_url("server.public_url", url, false)?;
            Some(uri.to_string().trim_end_matches('/').to_owned())
        }
        None => None,
    };
    let max_body_bytes = s.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes == 0 {
        return Err(cx.err("server.max_body_bytes", "must be at least 1"));
    }
    let max_concurrent_requests = match s.max_concurrent_requests {
        None => DEFAULT_MAX_CONCURRENT_REQUESTS,
        Some(0) => return Err(cx.err("server.max_concurrent_requests", "must be at least 1")),
        Some(n) => usize::try_from(n)
            .map_err(|_| cx.err("server.max_concurrent_requests", "is too large"))?,
    };
    let max_connections = match s.max_connections {
        None => DEFAULT_MAX_CONNECTIONS,
        Some(0) => return Err(cx.err("server.max_connections", "must be at least 1")),
        // tokio's semaphore holds at most `usize::MAX >> 3` permits.
        Some(n) => usize::try_from(n)
            .ok()
            .filter(|n| *n <= tokio::sync::Semaphore::MAX_PERMITS)
            .ok_or_else(|| cx.err("server.max_connections", "is too large"))?,
    };
    let server = ServerConfig {
        listen,
        tls,
        public_url,
        max_body_bytes,
        request_timeout: cx.duration(
            "server.request_timeout",
            s.request_timeout.as_deref(),
            DEFAULT_REQUEST_TIMEOUT,
            false,
        )?,
        max_concurrent_requests,
        shutdown_grace: cx.duration(
            "server.shutdown_grace",
            s.shutdown_grace.as_deref(),
            DEFAULT_SHUTDOWN_GRACE,
            false,
        )?,
        header_read_timeout: cx.duration(
            "server.header_read_timeout",
            s.header_read_timeout.as_deref(),
            DEFAULT_HEADER_READ_TIMEOUT,
            false,
        )?,
        max_connections,
        send_timeout: cx.duration(
            "server.send_timeout",
            s.send_timeout.as_deref(),
            DEFAULT_SEND_TIMEOUT,
            false,
        )?,
    };

    // [admin]
    let a = raw.admin.unwrap_or_default();
    let admin_listen = cx.socket_addr("admin.listen", a.listen.as_deref(), DEFAULT_ADMIN_LISTEN)?;
    if same_socket(server.listen, admin_listen) {
        return Err(cx.err(
            "admin.listen",
            format!(
                "{admin_listen} clashes with server.listen {}",
                server.listen
            ),
        ));
    }
    let admin = AdminConfig {
        listen: admin_listen,
        token: match &a.token_env {
            Some(var) => Some(cx.secret_from_env("admin.token_env", var)?),
            None => None,
        },
    };

    // [upstream]
    let u = raw.upstream.unwrap_or_default();
    let base_url = cx.http_url(
        "upstream.base_url",
        u.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL),
        true,
    )?;
    let (api_key, api_key_source) = match (&u.api_key_env, &u.api_key_file) {
        (Some(_), Some(_)) => {
            return Err(cx.err(
                "upstream.api_key_file",
                "set either upstream.api_key_env or upstream.api_key_file, not both",
            ))
        }
        (None, Some(path)) => (
            cx.secret_from_file("upstream.api_key_file", path)?,
            format!("file {path}"),
        ),
        (var, None) => {
            let var = var.as_deref().unwrap_or(DEFAULT_API_KEY_ENV).trim();
            (
                cx.secret_from_env("upstream.api_key_env", var)?,
                format!("env {var}"),
            )
        }
    };
    let extra_roots = match &u.ca_file {
        Some(path) => {
            let certs = cx.pem_certs("upstream.ca_file", path)?;
            // Refuse now what the upstream client's root store would refuse later.
            let mut store = rustls::RootCertStore::empty();
            for cert in &certs {
                store.add(cert.clone()).map_err(|e| {
                    cx.err(
                        "upstream.ca_file",
                        format!("{path}: not a usable trust root ({e})"),
                    )
                })?;
            }
            certs
        }
        None => Vec::new(),
    };
    let upstream = UpstreamConfig {
        base_url,
        api_key,
        api_key_source,
        extra_roots,
        connect_timeout: cx.duration(
            "upstream.connect_timeout",
            u.connect_timeout.as_deref(),
            DEFAULT_CONNECT_TIMEOUT,
            false,
        )?,
        timeout: cx.duration(
            "upstream.timeout",
            u.timeout.as_deref(),
            DEFAULT_UPSTREAM_TIMEOUT,
            false,
        )?,
        forwarded_headers: match u.forwarded_headers {
            Some(RawForwardedHeaders::Replace) => ForwardedHeaders::Replace,
            Some(RawForwardedHeaders::Strip) | None => ForwardedHeaders::Strip,
        },
    };

    // [rate_limit]
    let r = raw.rate_limit.unwrap_or_default();
    let requests_per_minute =
        NonZeroU32::new(r.requests_per_minute.unwrap_or(DEFAULT_REQUESTS_PER_MINUTE))
            .ok_or_else(|| cx.err("rate_limit.requests_per_minute", "must be at least 1"))?;
    let headroom = r.headroom.unwrap_or(DEFAULT_HEADROOM);
    if !(headroom > 0.0 && headroom <= 1.0) {
        return Err(cx.err(
            "rate_limit.headroom",
            format!("must be in (0, 1], got {headroom}"),
        ));
    }
    if (f64::from(requests_per_minute.get()) * headroom).floor() < 1.0 {
        return Err(cx.err(
            "rate_limit.headroom",
            "leaves less than one request per minute of rate_limit.requests_per_minute",
        ));
    }
    let rate_limit = RateLimitConfig {
        requests_per_minute,
        headroom,
        max_wait: cx.duration(
            "rate_limit.max_wait",
            r.max_wait.as_deref(),
            DEFAULT_MAX_WAIT,
            true,
        )?,
    };

    // [ledger]
    let l = raw.ledger.unwrap_or_default();
    let ledger_path = l.path.as_deref().unwrap_or(DEFAULT_LEDGER_PATH);
    if ledger_path.trim().is_empty() {
        return Err(cx.err("ledger.path", "must not be empty"));
    }
    let retention = cx.duration(
        "ledger.retention",
        l.retention.as_deref(),
        DEFAULT_RETENTION,
        false,
    )?;
    if retention < ONE_DAY {
        return Err(cx.err("ledger.retention", "must be at least one day (\"1d\")"));
    }
    let ledger = LedgerConfig {
        path: PathBuf::from(ledger_path),
        retention,
    };

    let credits = CreditsConfig {
        low_balance_warning: raw
            .credits
            .and_then(|c| c.low_balance_warning)
            .unwrap_or(DEFAULT_LOW_BALANCE_WARNING),
    };

    // [[clients]]
    let clients = validate_clients(&cx, raw.clients.unwrap_or_default())?;

    // [sandbox]
    let sandbox = match raw.sandbox {
        Some(sb) => Some(validate_sandbox(&cx, sb, &server, &admin, &clients)?),
        None => None,
    };

    Ok(Config {
        source: file.to_path_buf(),
        server,
        admin,
        upstream,
        rate_limit,
        ledger,
        credits,
        sandbox,
        clients,
    })
}

fn validate_sandbox(
    cx: &Ctx<'_>,
    sb: RawSandbox,
    server: &ServerConfig,
    admin: &AdminConfig,
    clients: &ClientRegistry,
) -> Result<SandboxConfig, ConfigError> {
    let listen = cx.socket_addr("sandbox.listen", Some(&sb.listen), "")?;
    for (other, name) in [
        (server.listen, "server.listen"),
        (admin.listen, "admin.listen"),
    ] {
        if same_socket(listen, other) {
            return Err(cx.err(
                "sandbox.listen",
                format!("{listen} clashes with {name} {other}"),
            ));
        }
    }
    if let Some(key) = &sb.demo_client_key {
        if clients.lookup(&KeyHash::of_key(key)).is_none() {
            return Err(cx.err(
                "sandbox.demo_client_key",
                "its SHA-256 is not any client's key_sha256",
            ));
        }
    }
    Ok(SandboxConfig {
        listen,
        demo_client_key: sb.demo_client_key,
    })
}

/// `[a-z0-9_-]{1,64}`.
fn valid_client_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

fn parse_hash(s: &str) -> Result<KeyHash, String> {
    let s = s.trim();
    // The value is not echoed: a key pasted here by mistake must not end up in logs.
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "expected the key's SHA-256 as 64 hex digits (from `keygen`), got {} characters{}",
            s.chars().count(),
            if s.len() == 64 {
                " with non-hex ones"
            } else {
                ""
            }
        ));
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(s, &mut bytes).map_err(|e| e.to_string())?;
    Ok(KeyHash(bytes))
}

fn validate_clients(cx: &Ctx<'_>, raw: Vec<RawClient>) -> Result<ClientRegistry, ConfigError> {
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut hashes: HashMap<KeyHash, usize> = HashMap::new();
    let mut clients = Vec::with_capacity(raw.len());
    for (i, c) in raw.into_iter().enumerate() {
        let at = |field: &str| format!("clients[{i}].{field}");

        let name = c
            .name
            .ok_or_else(|| cx.err(at("name"), "missing; every client needs a name"))?;
        if !valid_client_name(&name) {
            return Err(cx.err(
                at("name"),
                format!("{name:?} must be 1 to 64 of a-z, 0-9, _ and -"),
            ));
        }
        if let Some(first) = names.insert(name.clone(), i) {
            return Err(cx.err(
                at("name"),
                format!("duplicate client name {name:?} (also clients[{first}])"),
            ));
        }

        let entries: Vec<(String, String)> = match c.key_sha256 {
            None => return Err(cx.err(at("key_sha256"), "missing; every client needs a key hash")),
            Some(OneOrMany::One(h)) => vec![(at("key_sha256"), h)],
            Some(OneOrMany::Many(list)) => list
                .into_iter()
                .enumerate()
                .map(|(j, h)| (at(&format!("key_sha256[{j}]")), h))
                .collect(),
        };
        if entries.is_empty() {
            return Err(cx.err(at("key_sha256"), "empty list; give at least one key hash"));
        }
        let mut key_hashes = Vec::with_capacity(entries.len());
        for (key, h) in entries {
            let hash = parse_hash(&h).map_err(|reason| cx.err(&key, reason))?;
            if let Some(owner) = hashes.insert(hash, i) {
                let reason = if owner == i {
                    "the same hash is listed twice for this client".to_owned()
                } else {
                    let other = clients
                        .get(owner)
                        .map_or("?", |c: &Arc<Client>| c.id.as_str());
                    format!(
                        "the same hash is already client {other:?}'s (clients[{owner}]); \
                         each key must belong to one client"
                    )
                };
                return Err(cx.err(&key, reason));
            }
            key_hashes.push(hash);
        }

        let requests_per_minute = match c.requests_per_minute {
            None => None,
            Some(n) => Some(
                NonZeroU32::new(n)
                    .ok_or_else(|| cx.err(at("requests_per_minute"), "must be at least 1"))?,
            ),
        };

        let allow = match c.allow {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(cx.err(
                    at("allow"),
                    "empty list allows nothing; remove it to allow all of /api/, or set disabled = true",
                ))
            }
            Some(list) => Some(
                list.iter()
                    .enumerate()
                    .map(|(j, p)| {
                        RoutePattern::parse(p)
                            .map_err(|reason| cx.err(at(&format!("allow[{j}]")), reason))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };

        let accounts = match c.accounts {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(cx.err(
                    at("accounts"),
                    "empty list allows no account; remove it to allow every account",
                ))
            }
            Some(list) => {
                for (j, acct) in list.iter().enumerate() {
                    if acct.is_empty()
                        || acct
                            .chars()
                            .any(|ch| ch == '/' || ch.is_whitespace() || ch.is_control())
                    {
                        return Err(cx.err(
                            at(&format!("accounts[{j}]")),
                            "must be a non-empty account id without /, spaces or control characters",
                        ));
                    }
                }
                Some(list)
            }
        };

        clients.push(Arc::new(Client {
            id: ClientId(Arc::from(name)),
            key_hashes,
            disabled: c.disabled.unwrap_or(false),
            requests_per_minute,
            credit_budget: c.credit_budget,
            budget_period: match c.budget_period {
                Some(RawBudgetPeriod::Day) => BudgetPeriod::Day,
                Some(RawBudgetPeriod::Month) | None => BudgetPeriod::Month,
            },
            allow,
            accounts,
        }));
    }
    Ok(ClientRegistry::new(clients))
}
