//! The gateway under test, in this process: a `Config` built in Rust from [`Options`] (both
//! listeners on 127.0.0.1:0, the [`test_clients`], the ledger in a folder of its own), started with
//! [`TestGateway::start`]; and the admin service on its own ([`TestAdmin`]). This is the one file
//! that builds the gateway from the library's types, so that a change to them is fixed here.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Method;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use ofapi_gateway::admin::{self, AdminState};
pub use ofapi_gateway::config::ForwardedHeaders;
use ofapi_gateway::config::{
    self, AdminConfig, BudgetPeriod, Client, ClientId, ClientRegistry, Config, CreditsConfig,
    KeyHash, LedgerConfig, PatternSegment, RateLimitConfig, RoutePattern, Secret, ServerConfig,
    TlsSettings, UpstreamConfig,
};
use ofapi_gateway::ledger::Ledger;
use ofapi_gateway::metrics::Metrics;
use ofapi_gateway::server::Gateway;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::clients::{HttpClient, Resp};
use super::ledger::{ledger_rows, Row};
use super::tls::TestCa;

// ---------------------------------------------------------------------------------------------
// Fixed names and keys
// ---------------------------------------------------------------------------------------------

/// The shared upstream key the gateway holds; must never reach a client or a log.
pub const UPSTREAM_KEY: &str = "upstream-SECRET-key-0123456789";
/// A client with access to all of `/api/`.
pub const ALPHA_KEY: &str = "ofgw_test_alpha_0123456789abcdefghijklmnopqrstuvwxyz";
/// A client whose entry is `disabled = true`.
pub const DISABLED_KEY: &str = "ofgw_test_disabled_0123456789abcdefghijklmnopqrstuvw";
/// A client with `allow` = tracking-link update + `GET /api/fansly/**` and `accounts` = [ACCOUNT].
pub const SCOPED_KEY: &str = "ofgw_test_scoped_0123456789abcdefghijklmnopqrstuvwxy";
/// A client with `accounts` = [ACCOUNT] and no `allow` (all routes).
pub const ACCOUNTS_KEY: &str = "ofgw_test_accounts_0123456789abcdefghijklmnopqrstuvw";
/// A well-formed key no client has.
pub const UNKNOWN_KEY: &str = "ofgw_test_unknown_0123456789abcdefghijklmnopqrstuvwx";

pub const ACCOUNT: &str = "fansly_acct_123";
pub const OTHER_ACCOUNT: &str = "fansly_acct_999";
pub const TRACKING_LINK_ID: &str = "845759434926862336";

/// `/api/fansly/{account}/tracking-links/{id}`, the validated route.
pub fn tracking_link_path(account: &str) -> String {
    format!("/api/fansly/{account}/tracking-links/{TRACKING_LINK_ID}")
}

// ---------------------------------------------------------------------------------------------
// The config
// ---------------------------------------------------------------------------------------------

/// The settings tests change; everything else is fixed by [`build_config`].
pub struct Options {
    pub max_body_bytes: u64,
    pub request_timeout: Duration,
    pub upstream_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_concurrent_requests: usize,
    pub shutdown_grace: Duration,
    /// `server.header_read_timeout`: also how long a connection may sit idle.
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// `server.send_timeout`: how long a response may wait on a client that takes no bytes.
    pub send_timeout: Duration,
    /// `server.public_url` (`None`: derived from the bound address).
    pub public_url: Option<String>,
    /// The upstream's test CA (`upstream.ca_file`).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// TLS termination on the client listener.
    pub server_tls: Option<TlsSettings>,
    pub forwarded_headers: ForwardedHeaders,
    /// `rate_limit.requests_per_minute`: the shared upstream budget.
    pub requests_per_minute: u32,
    pub headroom: f64,
    pub max_wait: Duration,
    /// The `alpha` client's own `requests_per_minute`.
    pub alpha_requests_per_minute: Option<u32>,
    /// The `alpha` client's monthly `credit_budget`.
    pub alpha_credit_budget: Option<u64>,
    /// The folder for the ledger (`ledger.sqlite`), kept by the test to read it after the
    /// gateway stopped, prepare it before, or start another gateway on it; `None`: a temporary
    /// folder that goes with the gateway.
    pub dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(20),
            upstream_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(2),
            max_concurrent_requests: 64,
            shutdown_grace: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            send_timeout: Duration::from_secs(60),
            public_url: Some("http://127.0.0.1:8080".into()),
            extra_roots: Vec::new(),
            server_tls: None,
            forwarded_headers: ForwardedHeaders::Strip,
            requests_per_minute: 100_000,
            headroom: 1.0,
            max_wait: Duration::from_secs(2),
            alpha_requests_per_minute: None,
            alpha_credit_budget: None,
            dir: None,
        }
    }
}

impl Options {
    /// The defaults, with the ledger in `dir` (see [`Options::dir`]).
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            dir: Some(dir.to_path_buf()),
            ..Self::default()
        }
    }
}

impl TestCa {
    /// `server.tls` for the gateway's client listener.
    pub fn tls_settings(&self) -> TlsSettings {
        TlsSettings {
            cert: self.cert_path.clone(),
            key: self.key_path.clone(),
            server_config: self.server_config(),
        }
    }
}

fn client(
    name: &str,
    key: &str,
    disabled: bool,
    allow: Option<Vec<RoutePattern>>,
    accounts: Option<Vec<String>>,
) -> Client {
    Client {
        id: ClientId(name.into()),
        key_hashes: vec![KeyHash::of_key(key)],
        disabled,
        requests_per_minute: None,
        credit_budget: None,
        budget_period: BudgetPeriod::Month,
        allow,
        accounts,
    }
}

/// `METHOD /a/*/b/**` as a [`RoutePattern`].
fn pattern(method: Option<Method>, path: &str) -> RoutePattern {
    RoutePattern {
        method,
        segments: path
            .trim_start_matches('/')
            .split('/')
            .map(|s| match s {
                "*" => PatternSegment::AnyOne,
                "**" => PatternSegment::AnyMany,
                literal => PatternSegment::Literal(literal.to_owned()),
            })
            .collect(),
    }
}

/// The test clients: `alpha` (everything, with the `alpha_*` options), `disabled`, `scoped`
/// (allow + accounts), `accounts`.
fn test_clients(options: &Options) -> ClientRegistry {
    let mut alpha = client("alpha", ALPHA_KEY, false, None, None);
    alpha.requests_per_minute = options.alpha_requests_per_minute.and_then(NonZeroU32::new);
    alpha.credit_budget = options.alpha_credit_budget;
    let clients = vec![
        alpha,
        client("disabled", DISABLED_KEY, true, None, None),
        client(
            "scoped",
            SCOPED_KEY,
            false,
            Some(vec![
                pattern(Some(Method::PUT), "/api/fansly/*/tracking-links/*"),
                pattern(Some(Method::GET), "/api/fansly/**"),
            ]),
            Some(vec![ACCOUNT.to_owned()]),
        ),
        client(
            "accounts",
            ACCOUNTS_KEY,
            false,
            None,
            Some(vec![ACCOUNT.to_owned()]),
        ),
    ];
    ClientRegistry::new(clients.into_iter().map(Arc::new).collect())
}

/// A whole `Config`: both listeners on 127.0.0.1:0, upstream at `upstream_base_url` with
/// [`UPSTREAM_KEY`], the test clients, the ledger at `dir/ledger.sqlite`.
pub fn build_config(upstream_base_url: &str, options: Options, dir: &Path) -> Config {
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let clients = test_clients(&options);
    Config {
        source: dir.join("gateway.toml"),
        server: ServerConfig {
            listen,
            tls: options.server_tls,
            public_url: options.public_url,
            max_body_bytes: options.max_body_bytes,
            request_timeout: options.request_timeout,
            max_concurrent_requests: options.max_concurrent_requests,
            shutdown_grace: options.shutdown_grace,
            header_read_timeout: options.header_read_timeout,
            max_connections: options.max_connections,
            send_timeout: options.send_timeout,
        },
        admin: AdminConfig {
            listen,
            token: None,
        },
        upstream: UpstreamConfig {
            base_url: upstream_base_url.parse().expect("base url"),
            api_key: Secret::new(UPSTREAM_KEY.to_owned()),
            api_key_source: "env ONLYFANSAPI_API_KEY".into(),
            extra_roots: options.extra_roots,
            connect_timeout: options.connect_timeout,
            timeout: options.upstream_timeout,
            forwarded_headers: options.forwarded_headers,
        },
        rate_limit: RateLimitConfig {
            requests_per_minute: NonZeroU32::new(options.requests_per_minute)
                .expect("requests_per_minute > 0"),
            headroom: options.headroom,
            max_wait: options.max_wait,
        },
        ledger: LedgerConfig {
            path: dir.join("ledger.sqlite"),
            retention: Duration::from_secs(90 * 24 * 3600),
        },
        credits: CreditsConfig {
            low_balance_warning: 0,
        },
        sandbox: None,
        clients,
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------------------------------

/// A gateway running in this process.
pub struct TestGateway {
    gateway: Gateway,
    pub client_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    scheme: &'static str,
    ledger: PathBuf,
    /// The ledger's folder when the test did not give one.
    _dir: Option<tempfile::TempDir>,
}

impl TestGateway {
    /// A gateway in front of `upstream_base_url`, set up as `options` say.
    pub async fn start(upstream_base_url: &str, mut options: Options) -> Self {
        let (dir, owned) = match options.dir.take() {
            Some(dir) => (dir, None),
            None => {
                let owned = tempfile::tempdir().expect("tempdir");
                (owned.path().to_path_buf(), Some(owned))
            }
        };
        let config = build_config(upstream_base_url, options, &dir);
        Self::start_config(config, owned).await
    }

    /// The gateway of the config file at `path` (`config/quickstart.toml`), its listeners (and
    /// its sandbox's) moved to free ports.
    pub async fn from_file(path: &Path) -> Self {
        let mut config =
            config::load(path).unwrap_or_else(|e| panic!("load {}: {e}", path.display()));
        let any_port: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        config.server.listen = any_port;
        config.admin.listen = any_port;
        if let Some(sandbox) = config.sandbox.as_mut() {
            sandbox.listen = any_port;
        }
        Self::start_config(config, None).await
    }

    async fn start_config(config: Config, dir: Option<tempfile::TempDir>) -> Self {
        let scheme = if config.server.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let ledger = config.ledger.path.clone();
        let gateway = Gateway::start(config).await.expect("gateway starts");
        Self {
            client_addr: gateway.client_addr,
            admin_addr: gateway.admin_addr,
            gateway,
            scheme,
            ledger,
            _dir: dir,
        }
    }

    /// The client listener's URL for `path` (which may carry a query).
    pub fn url(&self, path: &str) -> String {
        let host = if self.scheme == "https" {
            format!("localhost:{}", self.client_addr.port())
        } else {
            self.client_addr.to_string()
        };
        format!("{}://{host}{path}", self.scheme)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// The config the gateway runs with.
    pub fn config(&self) -> Arc<Config> {
        self.gateway.config()
    }

    /// The in-process sandbox's demo client key, if the config has one.
    pub fn demo_client_key(&self) -> Option<String> {
        self.config().sandbox.as_ref()?.demo_client_key.clone()
    }

    /// The metrics as `/metrics` exposes them.
    pub fn metrics(&self) -> String {
        self.gateway.metrics.render()
    }

    /// Where the gateway writes its ledger.
    pub fn ledger_path(&self) -> &Path {
        &self.ledger
    }

    /// Stops gracefully: stops accepting, lets requests in flight finish, flushes the ledger.
    pub async fn shutdown(self) {
        self.gateway.shutdown().await;
    }

    /// Stops gracefully (which writes every row) and returns the ledger's rows.
    pub async fn stop(self) -> Vec<Row> {
        self.gateway.shutdown().await;
        ledger_rows(&self.ledger)
    }
}

// ---------------------------------------------------------------------------------------------
// The admin service on its own
// ---------------------------------------------------------------------------------------------

/// The admin service on 127.0.0.1:0, built from a `Metrics` the test feeds and, if asked for, a
/// real `Ledger` at `dir/data/ledger.sqlite`.
pub struct TestAdmin {
    pub addr: SocketAddr,
    pub metrics: Metrics,
    pub ledger: Option<Ledger>,
    pub dir: tempfile::TempDir,
    task: JoinHandle<()>,
}

impl Drop for TestAdmin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestAdmin {
    /// With `admin.token` = `token`; with a ledger if `with_ledger`.
    pub async fn start(token: Option<&str>, with_ledger: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = build_config("http://127.0.0.1:9", Options::default(), dir.path());
        config.admin.token = token.map(|t| Secret::new(t.to_owned()));
        config.ledger.path = dir.path().join("data").join("ledger.sqlite");
        let ledger = with_ledger.then(|| Ledger::open(&config.ledger).expect("open the ledger"));
        let metrics = Metrics::new();
        let service = admin::service(AdminState {
            config: Arc::new(ArcSwap::from_pointee(config)),
            ready: Arc::new(AtomicBool::new(true)),
            metrics: metrics.clone(),
            ledger: ledger.clone(),
            budgets: None,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let service = TowerToHyperService::new(service.clone());
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            metrics,
            ledger,
            dir,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        HttpClient::http1().get(&self.url(path), token).await
    }
}

/// The value of the sample line `series` (name and labels exactly as exposed) in a `/metrics`
/// text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().expect("numeric sample"))
    })
}
