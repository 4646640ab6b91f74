//! Listeners and the life of the process: binds the client listener (plain or TLS), the admin
//! listener and, in the quickstart, the sandbox; serves each connection with HTTP/1.1 and HTTP/2,
//! closing it when idle or when a response waits too long on a client that takes no bytes
//! (`server.send_timeout`); on shutdown stops accepting and lets in-flight requests finish within
//! `shutdown_grace`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use pin_project_lite::pin_project;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::body::BoxError;
use crate::budget::Budgets;
use crate::config::Config;
use crate::layers::meter::MeterSettings;
use crate::layers::upstream_auth::ClientConnection;
use crate::ledger::Ledger;
use crate::limiter::Limiter;
use crate::metrics::Metrics;
use crate::record::Recorder;
use crate::stack::SharedConfig;
use crate::stack::StackParts;
use crate::upstream::UpstreamClient;
use crate::{admin, sandbox, stack};

/// How long a client may take to finish a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Open connections at most on the admin listener: probes and scrapes need a handful.
const ADMIN_MAX_CONNECTIONS: usize = 256;
/// At the connection cap, at most one warning per this long.
const AT_CAP_WARNING_EVERY: Duration = Duration::from_secs(60);

/// A running gateway. Dropping it does not stop it; call [`Gateway::shutdown`].
pub struct Gateway {
    pub client_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The in-process sandbox upstream, when the config has a `[sandbox]` table.
    pub sandbox_addr: Option<SocketAddr>,
    config: SharedConfig,
    /// The client listener's TLS acceptor, swapped on reload so new connections get the new
    /// certificate (present only when the gateway started with TLS).
    tls: Option<Arc<ArcSwap<TlsAcceptor>>>,
    /// Kept to apply reloaded limits and budgets.
    limiter: Limiter,
    budgets: Budgets,
    /// Flushed and closed once the client listener has drained...
    ledger: Ledger,
    /// ...and the calls whose clients hung up have been finished and metered.
    detached: TaskTracker,
    pub metrics: Metrics,
    /// Cleared as shutdown begins, so `/readyz` turns 503 while connections drain.
    ready: Arc<AtomicBool>,
    /// Stops the client listener first...
    stop_client: watch::Sender<bool>,
    serving: ServingThreads,
    /// ...and, once its requests have drained, the admin listener (probes keep answering
    /// during the drain), the in-process sandbox (in-flight requests still need it) and the
    /// serving threads' runtimes (which run the calls of clients that hung up).
    stop_rest: watch::Sender<bool>,
    other_tasks: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Binds every listener and starts serving; returns once all of them accept connections.
    pub async fn start(config: Config) -> Result<Self, BoxError> {
        Self::start_with(config, true).await
    }

    /// [`Gateway::start`], with metering off when `metering` is false: calls are forwarded but
    /// their credits are not read (no log line, ledger row, metric or budget). Only for
    /// measuring what metering costs.
    pub async fn start_with(config: Config, metering: bool) -> Result<Self, BoxError> {
        let (stop_client, client_stopped) = watch::channel(false);
        let (stop_rest, rest_stopped) = watch::channel(false);
        let mut other_tasks = Vec::new();

        let sandbox_addr = match &config.sandbox {
            Some(settings) => {
                let listener = bind(settings.listen, "sandbox.listen").await?;
                let addr = listener.local_addr()?;
                let options = sandbox::SandboxOptions {
                    api_key: config.upstream.api_key.expose().to_owned(),
                    requests_per_minute: 1000,
                    starting_balance: 10_000_000,
                };
                let mut stopped = rest_stopped.clone();
                other_tasks.push(tokio::spawn(async move {
                    let shutdown = async move { stop_requested(&mut stopped).await };
                    if let Err(error) = sandbox::serve(listener, options, shutdown).await {
                        tracing::error!(%error, "sandbox stopped");
                    }
                }));
                Some(addr)
            }
            None => None,
        };

        // With an in-process sandbox, it is the upstream.
        let base_url = match sandbox_addr {
            Some(addr) => format!("http://{addr}").parse()?,
            None => config.upstream.base_url.clone(),
        };
        let threads = serving_threads();
        // One upstream pool per serving thread, as nginx has one per worker: a request never
        // waits on a connection whose task runs on another thread.
        let upstreams = (0..threads)
            .map(|_| UpstreamClient::new(&config.upstream, &base_url))
            .collect::<Result<Vec<_>, _>>()?;
        let grace = config.server.shutdown_grace;
        let timeouts = ConnectionTimeouts {
            idle: config.server.header_read_timeout,
            send: config.server.send_timeout,
        };
        let max_connections = config.server.max_connections;
        let tls = config.server.tls.as_ref().map(|tls| {
            Arc::new(ArcSwap::from_pointee(TlsAcceptor::from(Arc::clone(
                &tls.server_config,
            ))))
        });
        let client_listener = bind(config.server.listen, "server.listen").await?;
        let admin_listener = bind(config.admin.listen, "admin.listen").await?;
        let client_addr = client_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        let ledger = Ledger::open(&config.ledger).map_err(|e| {
            format!(
                "ledger.path: cannot open {}: {e}",
                config.ledger.path.display()
            )
        })?;
        let budgets = Budgets::reading(&config, |since| spent_since(&ledger, since));
        let limiter = Limiter::new(&config);
        let metrics = Metrics::new();
        let detached = TaskTracker::new();
        let recorder = Arc::new(Recorder::gateway(
            metrics.clone(),
            Some(ledger.clone()),
            limiter.clone(),
            budgets.clone(),
            config.credits.low_balance_warning,
            metering,
        ));
        let meter = Arc::new(MeterSettings {
            upstream_base: base_url.to_string(),
            public_url: config
                .server
                .public_url
                .clone()
                .unwrap_or_else(|| own_url(config.server.tls.is_some(), client_addr)),
            detached: detached.clone(),
            detached_body_timeout: config.upstream.timeout,
        });
        let config: SharedConfig = Arc::new(ArcSwap::from_pointee(config));
        let ready = Arc::new(AtomicBool::new(true));
        let parts = StackParts::new(
            config.clone(),
            limiter.clone(),
            budgets.clone(),
            recorder,
            meter,
            metering,
        );
        let admin_service = admin::service(admin::AdminState {
            config: config.clone(),
            ready: ready.clone(),
            metrics: metrics.clone(),
            ledger: Some(ledger.clone()),
            budgets: Some(budgets.clone()),
        });
        let past_spend = ledger.clone();
        other_tasks.push(tokio::spawn(crate::budget::restore_until_read(
            budgets.clone(),
            move |since| spent_since(&past_spend, since),
            rest_stopped.clone(),
        )));
        let (serving, handout) = ServingThreads::start(
            upstreams,
            |upstream| stack::client_stack(parts.clone(), upstream),
            Listening {
                tls: tls.clone(),
                stopped: client_stopped.clone(),
                grace,
                timeouts,
            },
            rest_stopped.clone(),
        )?;
        other_tasks.push(tokio::spawn(hand_out(
            client_listener,
            Admission::new(max_connections),
            handout,
            client_stopped,
        )));
        other_tasks.push(tokio::spawn(accept_loop(
            Connections::Listener(admin_listener, Admission::new(ADMIN_MAX_CONNECTIONS)),
            Listening {
                tls: None,
                stopped: rest_stopped,
                grace,
                timeouts,
            },
            admin_service,
        )));
        Ok(Self {
            client_addr,
            admin_addr,
            sandbox_addr,
            config,
            tls,
            limiter,
            budgets,
            ledger,
            detached,
            metrics,
            ready,
            stop_client,
            serving,
            stop_rest,
            other_tasks,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Puts a new configuration in force for the next requests: clients, keys, scopes, limits,
    /// budgets, the upstream key, and the TLS certificate (for new connections). Listener
    /// addresses, turning TLS on or off, server limits and upstream connection settings need a
    /// restart; the return value names those that changed.
    pub fn reload(&self, new: Config) -> Vec<&'static str> {
        let old = self.config.load();
        let mut needs_restart = Vec::new();
        if old.server.listen != new.server.listen {
            needs_restart.push("server.listen");
        }
        if old.admin.listen != new.admin.listen {
            needs_restart.push("admin.listen");
        }
        match (&self.tls, &new.server.tls) {
            (Some(acceptor), Some(tls)) => {
                acceptor.store(Arc::new(TlsAcceptor::from(Arc::clone(&tls.server_config))));
            }
            (None, None) => {}
            _ => needs_restart.push("server.tls_cert/tls_key"),
        }
        let (a, b) = (&old.upstream, &new.upstream);
        if a.base_url != b.base_url {
            needs_restart.push("upstream.base_url");
        }
        if a.extra_roots != b.extra_roots {
            needs_restart.push("upstream.ca_file");
        }
        if a.connect_timeout != b.connect_timeout || a.timeout != b.timeout {
            needs_restart.push("upstream.connect_timeout/timeout");
        }
        if old.server.max_body_bytes != new.server.max_body_bytes
            || old.server.request_timeout != new.server.request_timeout
            || old.server.max_concurrent_requests != new.server.max_concurrent_requests
            || old.server.header_read_timeout != new.server.header_read_timeout
            || old.server.max_connections != new.server.max_connections
            || old.server.send_timeout != new.server.send_timeout
        {
            needs_restart.push("server limits");
        }
        self.limiter.reconfigure(&new);
        self.budgets
            .reconfigure_reading(&new, crate::calendar::now_ms(), |since| {
                spent_since(&self.ledger, since)
            });
        self.config.store(Arc::new(new));
        needs_restart
    }

    /// Stops accepting, lets in-flight requests finish within `shutdown_grace`, then returns.
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + self.config.load().server.shutdown_grace;
        self.ready.store(false, Ordering::SeqCst);
        let _ = self.stop_client.send(true);
        for drained in self.serving.drained {
            let _ = drained.await;
        }
        // Calls whose client hung up are still being answered upstream: they cost credits too.
        self.detached.close();
        if tokio::time::timeout_at(deadline, self.detached.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                calls = self.detached.len(),
                "shutdown grace expired before every call of a client that hung up was \
                 answered; those calls will be missing from the ledger"
            );
        }
        // Every answered call has recorded its row by now: write them all.
        if let Err(error) = self.ledger.close().await {
            tracing::error!(%error, "the ledger could not write every row");
        }
        let _ = self.stop_rest.send(true);
        for task in self.other_tasks {
            let _ = task.await;
        }
        let threads = self.serving.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

/// Threads serving the client listener: `TOKIO_WORKER_THREADS` if set, else one per CPU.
fn serving_threads() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The client listener, served thread-per-core: each thread runs a current-thread runtime with
/// its own copy of the stack and its own upstream pool, and serves the connections [`hand_out`]
/// gives it. A request lives on one thread from its connection's hand-over to its last byte, as
/// in an nginx worker: no task moves, no wake-up crosses threads. What must be one for the whole
/// gateway (limits, budgets, the ledger, metrics, the connection and concurrency caps) is shared.
struct ServingThreads {
    /// Each thread's accept loop has stopped and its connections have closed.
    drained: Vec<oneshot::Receiver<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ServingThreads {
    /// One thread per upstream pool, fed connections through the returned [`HandOut`]. Each runs
    /// until `released`, after its connections drained: calls finished in the background
    /// (clients that hung up) run on its runtime.
    fn start<S, B>(
        upstreams: Vec<UpstreamClient>,
        stack: impl Fn(UpstreamClient) -> S,
        listening: Listening,
        released: watch::Receiver<bool>,
    ) -> Result<(Self, Vec<HandOut>), BoxError>
    where
        S: ConnectionService<B>,
        B: ResponseBody,
    {
        let mut serving = Self {
            drained: Vec::new(),
            threads: Vec::new(),
        };
        let mut handout = Vec::new();
        for (index, upstream) in upstreams.into_iter().enumerate() {
            let service = stack(upstream);
            let listening = listening.clone();
            let mut released = released.clone();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (drained, drained_rx) = oneshot::channel();
            let (to_thread, connections) = mpsc::unbounded_channel();
            let thread = std::thread::Builder::new()
                .name(format!("serve-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let connections = Connections::Handed(connections);
                        accept_loop(connections, listening, service).await;
                        let _ = drained.send(());
                        stop_requested(&mut released).await;
                    });
                })?;
            serving.drained.push(drained_rx);
            serving.threads.push(thread);
            handout.push(HandOut {
                to_thread,
                open: Arc::new(AtomicUsize::new(0)),
            });
        }
        Ok((serving, handout))
    }
}

/// The way to one serving thread, and how many connections it has open.
struct HandOut {
    to_thread: mpsc::UnboundedSender<Handed>,
    open: Arc<AtomicUsize>,
}

/// A connection on its way to a serving thread, with its slot already taken.
struct Handed {
    stream: std::net::TcpStream,
    held: Held,
}

/// What an open connection holds until its task ends: its `max_connections` slot, and, for one
/// handed to a serving thread, its place in that thread's count.
struct Held {
    _slot: OwnedSemaphorePermit,
    _open: Option<OpenConnection>,
}

/// One open connection of a serving thread, counted until dropped.
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts the client listener's connections and hands each to the serving thread with the
/// fewest open. Threads accepting from a shared socket themselves would split connections
/// unevenly: whichever is idle when a burst arrives takes it all, and then one core is saturated
/// while the other waits (measured: 64 `wrk` connections served at 29k instead of 37k req/s).
///
/// The `max_connections` slot is taken here, in the order connections were accepted, so that
/// the one over the cap is the one closed, whichever thread would have served it.
async fn hand_out(
    listener: TcpListener,
    mut admission: Admission,
    threads: Vec<HandOut>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop_requested(&mut stopped) => return,
        };
        let Some(slot) = admission.admit() else {
            continue;
        };
        let Some(thread) = threads
            .iter()
            .min_by_key(|thread| thread.open.load(Ordering::Relaxed))
        else {
            return;
        };
        // Deregistered from this runtime; the serving thread registers it with its own.
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        thread.open.fetch_add(1, Ordering::Relaxed);
        let handed = Handed {
            stream,
            held: Held {
                _slot: slot,
                _open: Some(OpenConnection(Arc::clone(&thread.open))),
            },
        };
        let _ = thread.to_thread.send(handed);
    }
}

/// Where an accept loop gets its connections: its own listener (admin), or the client
/// listener's [`hand_out`].
enum Connections {
    Listener(TcpListener, Admission),
    Handed(mpsc::UnboundedReceiver<Handed>),
}

impl Connections {
    /// The next connection within the cap, with what it holds; `None` once none can come.
    async fn next(&mut self) -> Option<std::io::Result<(TcpStream, Held)>> {
        match self {
            Self::Listener(listener, admission) => loop {
                let stream = match listener.accept().await {
                    Ok((stream, _peer)) => stream,
                    Err(error) => return Some(Err(error)),
                };
                if let Some(slot) = admission.admit() {
                    let held = Held {
                        _slot: slot,
                        _open: None,
                    };
                    return Some(Ok((stream, held)));
                }
            },
            Self::Handed(handed) => {
                let Handed { stream, held } = handed.recv().await?;
                Some(TcpStream::from_std(stream).map(|s| (s, held)))
            }
        }
    }
}

/// The client listener's own URL: the public URL when `server.public_url` is left out.
fn own_url(tls: bool, bound: SocketAddr) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{bound}")
}

/// Credits per client since a moment, from the ledger. When it cannot be read, the budgets
/// that needed it are unread (their clients refused) until a background read succeeds: never
/// started at 0.
fn spent_since(ledger: &Ledger, since_ms: i64) -> crate::budget::PastSpend {
    ledger
        .spent_since(since_ms)
        .map_err(|error| error.to_string())
}

async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

async fn bind(addr: SocketAddr, key: &str) -> Result<TcpListener, BoxError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("{key}: cannot listen on {addr}: {e}").into())
}

/// What an accept loop needs besides its socket and service.
#[derive(Clone)]
struct Listening {
    tls: Option<Arc<ArcSwap<TlsAcceptor>>>,
    /// Stop accepting, and drain, when this turns true.
    stopped: watch::Receiver<bool>,
    /// How long draining may take.
    grace: Duration,
    timeouts: ConnectionTimeouts,
}

/// The deadlines of every connection of a listener.
#[derive(Clone, Copy, Debug)]
struct ConnectionTimeouts {
    /// `server.header_read_timeout`: the time a client has to send a request's headers, and
    /// the time a connection may go without a request in flight.
    idle: Duration,
    /// `server.send_timeout`: the time a response may wait on a client that takes no bytes.
    send: Duration,
}

/// What hyper needs of a listener's service: cloned for each connection and moved to its task.
trait ConnectionService<B>:
    Service<Request<Incoming>, Response = Response<B>, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S, B> ConnectionService<B> for S where
    S: Service<
            Request<Incoming>,
            Response = Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// A response body hyper can write from a connection's task.
trait ResponseBody:
    http_body::Body<Data = bytes::Bytes, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> ResponseBody for B where
    B: http_body::Body<Data = bytes::Bytes, Error: Into<BoxError>> + Send + 'static
{
}

/// Accepts connections until told to stop, then drains them for at most `grace`.
///
/// Each connection holds its slot (see [`Admission`]) until its task ends.
async fn accept_loop<S, B>(mut incoming: Connections, listening: Listening, service: S)
where
    S: ConnectionService<B>,
    B: ResponseBody,
{
    let Listening {
        tls,
        mut stopped,
        grace,
        timeouts,
    } = listening;
    let mut connections = tokio::task::JoinSet::new();
    // Each connection watches the stop signal itself, to close gracefully.
    let stop_signal = stopped.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.idle);
    builder.http2().timer(TokioTimer::new());
    hostile_input_limits(&mut builder);
    loop {
        tokio::select! {
            accepted = incoming.next() => {
                let (stream, held) = match accepted {
                    Some(Ok(accepted)) => accepted,
                    None => break,
                    Some(Err(error)) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Reap finished connection tasks so the set does not grow.
                while connections.try_join_next().is_some() {}
                let _ = stream.set_nodelay(true);
                limit_unsent_bytes(&stream);
                connections.spawn(serve_connection(
                    stream,
                    tls.as_ref().map(|acceptor| acceptor.load_full()),
                    builder.clone(),
                    service.clone(),
                    stop_signal.clone(),
                    timeouts,
                    held,
                ));
            }
            _ = stop_requested(&mut stopped) => break,
        }
    }
    drop(incoming);
    let open = connections.len();
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = open,
            "shutdown grace expired; closing what is left"
        );
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// The most an HTTP/1.1 request head (request line and headers) may take: past it hyper answers
/// 431 and closes. hyper-util's auto builder bounds the head only through the read buffer, so
/// this is also the largest single read of a body. hyper's default (about 400 KiB) let a 100 KB
/// header through to the upstream.
const H1_MAX_BUF_BYTES: usize = 64 * 1024;
/// HTTP/2's `SETTINGS_MAX_HEADER_LIST_SIZE`: a larger header block gets a 431 from the h2 crate
/// on its stream, and one far larger, or split into too many CONTINUATION frames (the
/// CONTINUATION flood), a GOAWAY. hyper's default, made explicit.
const H2_MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Streams one h2 connection may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`; RFC 9113
/// suggests no fewer than 100; hyper's default is 200). More in flight are refused by h2 itself;
/// across connections the gateway's own `max_concurrent_requests` answers 503 beyond its limit.
const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// HTTP/2 rapid reset (CVE-2023-44487): streams a client opens and resets before hyper has even
/// accepted them cost the server without ever being counted as concurrent. Past this many at once
/// the connection gets GOAWAY (ENHANCE_YOUR_CALM). The h2 crate's default, made explicit. A
/// stream whose reset arrives after hyper accepted it has its request's future dropped, so the
/// stack's work for it stops where it was (10 000 such streams: about 0.1 s, none forwarded).
const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams the gateway itself must reset because the client broke the protocol on them (too many
/// at once, oversized or malformed headers) before the connection gets GOAWAY (RUSTSEC-2024-0003).
/// hyper's default is 1024; a well-behaved client causes none.
const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 128;

/// Explicit limits on what one connection may make the server hold or do (issue 7, hostile
/// input; `tests/hostile.rs` proves each).
fn hostile_input_limits(builder: &mut auto::Builder<TokioExecutor>) {
    builder.http1().max_buf_size(H1_MAX_BUF_BYTES);
    builder
        .http2()
        .max_header_list_size(H2_MAX_HEADER_LIST_BYTES)
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS);
}

/// A listener's cap on open connections (`server.max_connections` for the client listener).
///
/// One over the cap is accepted and closed at once rather than left in the kernel's backlog: its
/// client sees the connection close straight away and can retry (or its load balancer can pick
/// another instance), instead of waiting on a connection nobody will read, while the gateway
/// spends nothing on it. The cap exists so that a flood of idle connections runs into it, not
/// into the process's memory or file-descriptor limit; idle connections are closed after
/// `header_read_timeout` (see [`serve_connection`]), so slots come back on their own.
struct Admission {
    max_connections: usize,
    /// One slot per open connection.
    slots: Arc<Semaphore>,
    /// Connections closed at the cap since the last warning, so a flood is one log line a minute.
    refused: u64,
    last_warning: Option<tokio::time::Instant>,
}

impl Admission {
    fn new(max_connections: usize) -> Self {
        Self {
            max_connections,
            slots: Arc::new(Semaphore::new(max_connections)),
            refused: 0,
            last_warning: None,
        }
    }

    /// A slot for a connection just accepted, or `None` at the cap (the caller closes it).
    fn admit(&mut self) -> Option<OwnedSemaphorePermit> {
        let slot = Arc::clone(&self.slots).try_acquire_owned().ok();
        if slot.is_none() {
            self.refused();
        }
        slot
    }

    fn refused(&mut self) {
        let max_connections = self.max_connections;
        self.refused += 1;
        if self
            .last_warning
            .is_none_or(|at| at.elapsed() >= AT_CAP_WARNING_EVERY)
        {
            tracing::warn!(
                max_connections,
                closed = self.refused,
                "server.max_connections reached; new connections are closed until some end"
            );
            self.last_warning = Some(tokio::time::Instant::now());
            self.refused = 0;
        }
    }
}

/// Serves one connection until it ends, the gateway stops, it has gone `timeouts.idle` without
/// a request in flight, or a response has waited `timeouts.send` on a client that takes no bytes
/// (see [`Activity::stalled`]). What it holds (its slot) is released then.
///
/// hyper's HTTP/1.1 `header_read_timeout` bounds the wait for each request's headers, the idle
/// time between keep-alive requests included, but only once the connection is known to be
/// HTTP/1.1: the auto builder first waits for the client's first bytes (to tell HTTP/2's preface
/// from HTTP/1.1) with no deadline, and an HTTP/2 connection has no idle deadline at all. The idle
/// close here covers both, so a client that connects and sends nothing, or an HTTP/2 client that
/// leaves its connection open, cannot hold a slot forever.
///
/// Until the client's first bytes arrive, the connection is only this small task (about 3 KiB
/// all told): the hyper connection (about 9 KiB of state, 27 KiB with its buffers once it has
/// served a request) is set up, on the heap, once there is something to read.
async fn serve_connection<S, B>(
    stream: TcpStream,
    tls: Option<Arc<TlsAcceptor>>,
    builder: auto::Builder<TokioExecutor>,
    service: S,
    mut stopped: watch::Receiver<bool>,
    timeouts: ConnectionTimeouts,
    _held: Held,
) where
    S: ConnectionService<B>,
    B: ResponseBody,
{
    let opened = tokio::time::Instant::now();
    let mut first_byte = [0u8; 1];
    tokio::select! {
        // `peek`, unlike `readable`, does not wake for nothing: it returns once a byte (or the
        // end of the stream) is there.
        peeked = stream.peek(&mut first_byte) => {
            if !matches!(peeked, Ok(n) if n > 0) {
                return;
            }
        }
        _ = tokio::time::sleep(timeouts.idle) => {
            tracing::debug!("closing a connection that sent nothing for server.header_read_timeout");
            return;
        }
        _ = stop_requested(&mut stopped) => return,
    }
    Box::pin(serve_http(
        stream, tls, builder, service, stopped, timeouts, opened,
    ))
    .await;
}

/// The HTTP part of [`serve_connection`]: the TLS handshake if any, then HTTP/1.1 or HTTP/2.
async fn serve_http<S, B>(
    stream: TcpStream,
    tls: Option<Arc<TlsAcceptor>>,
    builder: auto::Builder<TokioExecutor>,
    service: S,
    stopped: watch::Receiver<bool>,
    timeouts: ConnectionTimeouts,
    opened: tokio::time::Instant,
) where
    S: ConnectionService<B>,
    B: ResponseBody,
{
    let activity = Arc::new(Activity::new(opened));
    let connection = stream.peer_addr().ok().map(|peer| ClientConnection {
        peer,
        tls: tls.is_some(),
    });
    let service = Tracked {
        inner: TowerToHyperService::new(service),
        activity: Arc::clone(&activity),
        connection,
    };
    let socket = ClientSocket {
        stream,
        activity: Arc::clone(&activity),
    };
    let result = match tls {
        None => {
            let conn = builder.serve_connection(TokioIo::new(socket), service);
            drive(
                conn,
                |c| c.graceful_shutdown(),
                &activity,
                timeouts,
                stopped,
            )
            .await
        }
        Some(acceptor) => {
            let handshake = tokio::time::timeout(
                TLS_HANDSHAKE_TIMEOUT.min(timeouts.idle),
                acceptor.accept(socket),
            )
            .await;
            let Ok(Ok(stream)) = handshake else {
                tracing::debug!("TLS handshake failed or timed out");
                return;
            };
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            drive(
                conn,
                |c| c.graceful_shutdown(),
                &activity,
                timeouts,
                stopped,
            )
            .await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// Polls a connection to its end, closing it gracefully when the gateway stops or when it has
/// been idle for `timeouts.idle`. A connection closed for idleness that does not finish within
/// another `timeouts.idle` (an HTTP/2 peer that never acknowledges the GOAWAY) is dropped.
///
/// A connection with a response that has waited `timeouts.send` on its client
/// ([`Activity::stalled`]) is dropped at once, draining or not: a graceful close would wait on
/// that very client. Dropping it closes the socket and drops every response body it holds, which
/// frees their concurrency slots and upstream connections and has the meter record them as cut.
/// On HTTP/2 that is the whole connection, its other streams included: hyper gives no handle to
/// reset one stream, and it does not poll a body (which could then fail and reset its stream)
/// while the stream has no flow-control capacity.
async fn drive<C, E>(
    conn: C,
    graceful_shutdown: fn(Pin<&mut C>),
    activity: &Activity,
    timeouts: ConnectionTimeouts,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let mut conn = std::pin::pin!(conn);
    let mut stalled = std::pin::pin!(activity.stalled(timeouts.send));
    let idle = tokio::select! {
        result = conn.as_mut() => return result,
        _ = stop_requested(&mut stopped) => false,
        _ = activity.idle_for(timeouts.idle) => true,
        () = stalled.as_mut() => return cut_off(activity),
    };
    graceful_shutdown(conn.as_mut());
    let closing = async {
        tokio::select! {
            result = conn => result,
            () = stalled => cut_off(activity),
        }
    };
    if !idle {
        // The accept loop's `shutdown_grace` bounds the drain.
        return closing.await;
    }
    tracing::debug!("closing a connection idle for server.header_read_timeout");
    match tokio::time::timeout(timeouts.idle, closing).await {
        Ok(result) => result,
        Err(_elapsed) => Ok(()),
    }
}

/// Marks a connection about to be dropped for its client taking no bytes, and says so (its
/// responses are logged by the meter, as `cut`).
fn cut_off<E>(activity: &Activity) -> Result<(), E> {
    activity.cut.store(true, Ordering::Relaxed);
    tracing::debug!("closing a connection whose client took no bytes for server.send_timeout");
    Ok(())
}

/// The most bytes the kernel queues on a client socket beyond those in flight
/// (`TCP_NOTSENT_LOWAT`). Linux grows a socket's send buffer up to `tcp_wmem`'s maximum (4 MiB
/// by default) and, once it is full, reports room again only when a third of it has drained.
/// Unbounded, that is 4 MiB of kernel memory held by each client that reads nothing (and kept
/// after the close while the kernel tries to deliver it), and a reader slower than about a
/// megabyte per `send_timeout` would see no write succeed for that long and be cut. With this
/// bound a write succeeds each time about 16 KiB more has been taken. Only unsent bytes count,
/// so a fast client's throughput (the bytes in flight) is not limited.
const CLIENT_NOTSENT_LOWAT: u32 = 32 * 1024;

/// Sets [`CLIENT_NOTSENT_LOWAT`] on a client socket (where the system has it).
fn limit_unsent_bytes(stream: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_notsent_lowat(CLIENT_NOTSENT_LOWAT) {
        tracing::debug!(%error, "could not set TCP_NOTSENT_LOWAT");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = stream;
}

/// Ticks of [`Activity::stalled`]'s timer per `send_timeout`: a response is cut between one and
/// `1 + 1 / SEND_TICKS` send timeouts after its client stopped taking bytes.
const SEND_TICKS: u64 = 4;
/// The waiting HTTP/2 bodies are counted by the tick they started waiting in, modulo this; at
/// least `SEND_TICKS + 2`, so the tick that is checked is not shared with a younger one.
const WAIT_BUCKETS: usize = 8;
/// The largest data frame an HTTP/2 response body hands hyper at once. The body is asked for its
/// next frame only once the one before has nearly all been sent, so this is what a stream must
/// take per `send_timeout` not to be cut (16 KiB is also HTTP/2's default frame size, so the
/// pieces cost no extra frames); upstream reads can be up to 64 KiB.
const H2_MAX_PIECE: usize = 16 * 1024;
/// `h1_waiting_since` when no HTTP/1.1 body is waiting.
const NOT_WAITING: u64 = u64::MAX;

/// One connection's requests in flight and since when it has had none, and how its responses
/// wait on their client.
///
/// Requests, bodies and writes only update atomics; [`Activity::idle_for`] and
/// [`Activity::stalled`] look at them when their timers fire, so a busy connection costs no
/// wake-up or timer per request.
///
/// # Responses waiting on their client (`server.send_timeout`)
///
/// hyper asks a response body for its next frame only when it can write it: on HTTP/1.1 when its
/// write buffer has room again (the socket has taken what came before), on HTTP/2 when the stream
/// has flow-control capacity again. A body that has handed over a frame (or its response head)
/// and has not been asked for the next one since is therefore waiting on its client; a body
/// waiting on the upstream has been asked, and is pending. A waiting body cannot notice how long
/// it waits, since nothing polls it: the connection's timer does.
///
/// - HTTP/1.1 (one response at a time): cut when its body has waited `send_timeout` and the
///   socket has taken no byte for as long. A client that reads slowly but steadily keeps the
///   socket taking bytes, however long the body waits on hyper's full buffer.
/// - HTTP/2 (streams share the socket, so writes say nothing of one stream): cut when any body
///   has waited `send_timeout`: its stream's window stayed shut (or the socket took nothing).
///   Bodies hand hyper at most [`H2_MAX_PIECE`] at a time, so a stream that takes 16 KiB per
///   `send_timeout` is never cut.
struct Activity {
    /// Requests whose response has not ended yet (their body included).
    in_flight: AtomicUsize,
    /// When `in_flight` last fell to zero, in milliseconds since `opened`.
    idle_since_ms: AtomicU64,
    opened: tokio::time::Instant,
    /// Ticks of [`Activity::stalled`]'s timer so far: the clock waiting bodies are timed by.
    tick: AtomicU64,
    /// HTTP/2 bodies waiting on their client, by the tick they started waiting in (modulo
    /// [`WAIT_BUCKETS`]).
    h2_waiting: [AtomicUsize; WAIT_BUCKETS],
    /// The tick the HTTP/1.1 response body started waiting in, or [`NOT_WAITING`].
    h1_waiting_since: AtomicU64,
    /// Writes the client's socket has taken (any number of bytes each).
    writes: AtomicU64,
    /// Set when the connection is dropped for [`Activity::stalled`]: its socket is then reset
    /// rather than closed, so the kernel drops what the client never took at once.
    cut: AtomicBool,
}

impl Activity {
    fn new(opened: tokio::time::Instant) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            opened,
            tick: AtomicU64::new(0),
            h2_waiting: Default::default(),
            h1_waiting_since: AtomicU64::new(NOT_WAITING),
            writes: AtomicU64::new(0),
            cut: AtomicBool::new(false),
        }
    }

    fn request_started(self: &Arc<Self>, http2: bool) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight {
            activity: Arc::clone(self),
            http2,
            waiting_since: None,
        }
    }

    /// Returns once the connection has had no request in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                // Busy: look again later (a request that ends sets `idle_since_ms`).
                tokio::time::sleep(timeout).await;
                continue;
            }
            let since = self.idle_since_ms.load(Ordering::SeqCst);
            tokio::time::sleep_until(self.opened + Duration::from_millis(since) + timeout).await;
            // Still idle, and not busy in between?
            if self.in_flight.load(Ordering::SeqCst) == 0
                && self.idle_since_ms.load(Ordering::SeqCst) == since
            {
                return;
            }
        }
    }

    /// Returns once a response has waited `send_timeout` on a client that takes no bytes (see
    /// the type's docs), at most `send_timeout / SEND_TICKS` later.
    ///
    /// Each tick, a body counted in tick `t` has been waiting for at least the whole ticks
    /// after `t`; so one counted `SEND_TICKS + 1` ticks ago has waited `send_timeout`. (Older
    /// HTTP/2 buckets need no look: their bodies were caught when the bucket was this old.)
    async fn stalled(&self, send_timeout: Duration) {
        let period = (send_timeout / SEND_TICKS as u32).max(Duration::from_millis(1));
        let mut writes = self.writes.load(Ordering::Relaxed);
        // Ticks in a row with no write.
        let mut quiet = 0u64;
        loop {
            // A full period from the last look, even if that one came late (a busy thread):
            // ticks that were missed are not made up in a burst, which would count a few
            // moments as whole periods.
            tokio::time::sleep(period).await;
            let tick = self.tick.fetch_add(1, Ordering::Relaxed) + 1;
            let now = self.writes.load(Ordering::Relaxed);
            if now == writes {
                quiet += 1;
            } else {
                writes = now;
                quiet = 0;
            }
            let Some(long_ago) = tick.checked_sub(SEND_TICKS + 1) else {
                continue;
            };
            if self.h2_waiting[bucket(long_ago)].load(Ordering::Relaxed) > 0 {
                return;
            }
            let h1_since = self.h1_waiting_since.load(Ordering::Relaxed);
            if h1_since <= long_ago && quiet >= SEND_TICKS {
                return;
            }
        }
    }
}

/// The [`Activity::h2_waiting`] bucket of a tick.
fn bucket(tick: u64) -> usize {
    (tick % WAIT_BUCKETS as u64) as usize
}

/// A request in flight on a connection, until dropped (with its response body, or with the
/// request's future if the connection went away first); and whether its response is waiting on
/// the client.
///
/// The counts it keeps are only read by the connection's timer, each on its own, and a count
/// seen a moment late changes nothing there: `Relaxed` is enough.
struct InFlight {
    activity: Arc<Activity>,
    http2: bool,
    /// The tick the response started waiting on its client in, while it does.
    waiting_since: Option<u64>,
}

impl InFlight {
    /// The response has handed hyper its head or a frame: it waits until asked for the next.
    fn waits_for_client(&mut self) {
        if self.waiting_since.is_some() {
            return;
        }
        let activity = &self.activity;
        let tick = activity.tick.load(Ordering::Relaxed);
        if self.http2 {
            activity.h2_waiting[bucket(tick)].fetch_add(1, Ordering::Relaxed);
        } else {
            activity.h1_waiting_since.store(tick, Ordering::Relaxed);
        }
        self.waiting_since = Some(tick);
    }

    /// hyper asked for the next frame (or dropped the body): no longer waiting.
    fn asked_for_more(&mut self) {
        let Some(tick) = self.waiting_since.take() else {
            return;
        };
        let activity = &self.activity;
        if self.http2 {
            activity.h2_waiting[bucket(tick)].fetch_sub(1, Ordering::Relaxed);
        } else {
            activity
                .h1_waiting_since
                .store(NOT_WAITING, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.asked_for_more();
        let activity = &self.activity;
        if activity.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            let now = activity.opened.elapsed().as_millis();
            activity
                .idle_since_ms
                .store(u64::try_from(now).unwrap_or(u64::MAX), Ordering::SeqCst);
        }
    }
}

/// The client's socket, counting the writes it takes for [`Activity::stalled`].
struct ClientSocket {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl ClientSocket {
    fn took(&self, written: &Poll<std::io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.activity.writes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for ClientSocket {
    fn drop(&mut self) {
        if self.activity.cut.load(Ordering::Relaxed) {
            // The close then sends a reset at once, and cannot block.
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl tokio::io::AsyncRead for ClientSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ClientSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.took(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.took(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The connection's service, counting its requests in flight for the idle close, timing their
/// responses for the send timeout, and putting the connection's [`ClientConnection`] in each
/// request's extensions.
struct Tracked<H> {
    inner: H,
    activity: Arc<Activity>,
    connection: Option<ClientConnection>,
}

impl<H, B> hyper::service::Service<Request<Incoming>> for Tracked<H>
where
    H: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = H::Error;
    type Future = TrackedFuture<H::Future>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        if let Some(connection) = self.connection {
            req.extensions_mut().insert(connection);
        }
        let http2 = req.version() == http::Version::HTTP_2;
        TrackedFuture {
            in_flight: Some(self.activity.request_started(http2)),
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    struct TrackedFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let mut in_flight = this.in_flight.take();
        // From here hyper writes the head, then asks for the body when it can.
        if let Some(in_flight) = &mut in_flight {
            in_flight.waits_for_client();
        }
        Poll::Ready(Ok(response.map(|inner| TrackedBody {
            inner,
            in_flight,
            rest: Bytes::new(),
        })))
    }
}

pin_project! {
    /// A response body that keeps its request in flight until hyper drops it (at its end), and
    /// says when it waits on the client. On HTTP/2 it hands its data on in pieces of at most
    /// [`H2_MAX_PIECE`].
    struct TrackedBody<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
        // What is left of a data frame cut into pieces.
        rest: Bytes,
    }
}

impl<B: http_body::Body<Data = Bytes>> http_body::Body for TrackedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let Some(in_flight) = this.in_flight.as_mut() else {
            return this.inner.poll_frame(cx);
        };
        in_flight.asked_for_more();
        let frame = if this.rest.is_empty() {
            match ready!(this.inner.poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                end_or_error => return Poll::Ready(end_or_error),
            }
        } else {
            http_body::Frame::data(std::mem::take(this.rest))
        };
        let frame = match frame.into_data() {
            Ok(mut data) if in_flight.http2 && data.len() > H2_MAX_PIECE => {
                *this.rest = data.split_off(H2_MAX_PIECE);
                http_body::Frame::data(data)
            }
            Ok(data) => http_body::Frame::data(data),
            Err(frame) => frame,
        };
        in_flight.waits_for_client();
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{hand_out, own_url, Activity, Admission, HandOut, Handed};

    #[tokio::test]
    async fn each_new_connection_goes_to_the_thread_with_the_fewest_open() {
        let bounded = tokio::time::timeout(Duration::from_secs(10), hand_out_balances());
        bounded.await.expect("every connection handed out in time");
    }

    async fn hand_out_balances() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut threads = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..2 {
            let (to_thread, handed) = tokio::sync::mpsc::unbounded_channel();
            threads.push(HandOut {
                to_thread,
                open: Arc::new(Default::default()),
            });
            receivers.push(handed);
        }
        let counts: Vec<_> = threads.iter().map(|t| Arc::clone(&t.open)).collect();
        let acceptor = tokio::spawn(hand_out(listener, Admission::new(100), threads, stopped));
        let open = |n| {
            counts
                .iter()
                .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
                .nth(n)
        };
        let mut clients = Vec::new();
        let mut connect = async || {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        };
        // A burst of six: three each, whichever order they come in.
        for _ in 0..6 {
            connect().await;
        }
        let mut held: Vec<Vec<Handed>> = vec![Vec::new(), Vec::new()];
        for (n, receiver) in receivers.iter_mut().enumerate() {
            for _ in 0..3 {
                held[n].push(receiver.recv().await.unwrap());
            }
        }
        assert_eq!((open(0), open(1)), (Some(3), Some(3)));
        // Two of the first thread's close: the next two go to it.
        held[0].truncate(1);
        assert_eq!(open(0), Some(1));
        connect().await;
        connect().await;
        held[0].push(receivers[0].recv().await.unwrap());
        held[0].push(receivers[0].recv().await.unwrap());
        assert_eq!((open(0), open(1)), (Some(3), Some(3)));
        assert!(receivers[1].try_recv().is_err());
        stop.send(true).unwrap();
        acceptor.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_once_no_request_has_been_in_flight_for_the_timeout() {
        let timeout = Duration::from_secs(30);
        let opened = Instant::now();
        let activity = Arc::new(Activity::new(opened));
        // A new connection with nothing in flight is idle after the timeout.
        activity.idle_for(timeout).await;
        assert_eq!(opened.elapsed(), timeout);

        // A request in flight for 100 s keeps it busy; the clock starts when it ends.
        let request = activity.request_started(false);
        let idle = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move { activity.idle_for(timeout).await }
        });
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!idle.is_finished());
        drop(request);
        idle.await.unwrap();
        assert_eq!(
            opened.elapsed(),
            timeout + Duration::from_secs(100) + timeout
        );
    }

    /// Watches `activity` for `send_timeout` on a task; its output is when it fired.
    fn watch(activity: &Arc<Activity>, send_timeout: Duration) -> tokio::task::JoinHandle<Instant> {
        let activity = Arc::clone(activity);
        tokio::spawn(async move {
            activity.stalled(send_timeout).await;
            Instant::now()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_body_is_stalled_once_it_has_waited_on_its_client_for_the_send_timeout() {
        let send_timeout = Duration::from_secs(60);
        let activity = Arc::new(Activity::new(Instant::now()));
        let stalled = watch(&activity, send_timeout);
        let mut other = activity.request_started(true);
        let mut body = activity.request_started(true);
        // Asked for more every 59 s, for ten minutes: never stalled, while another stream of
        // the connection waits on the upstream (asked, not yet answered).
        other.waits_for_client();
        other.asked_for_more();
        for _ in 0..10 {
            body.waits_for_client();
            tokio::time::sleep(Duration::from_secs(59)).await;
            body.asked_for_more();
        }
        assert!(!stalled.is_finished());
        // Then it waits: the connection is cut between one and 1.25 send timeouts later.
        let waiting = Instant::now();
        body.waits_for_client();
        let waited = stalled.await.unwrap() - waiting;
        assert!(
            waited >= send_timeout && waited <= send_timeout * 5 / 4,
            "{waited:?}"
        );

        // A body dropped while it waits (its stream ended) no longer counts.
        let stalled = watch(&activity, send_timeout);
        let mut ended = activity.request_started(true);
        ended.waits_for_client();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop((ended, body));
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!stalled.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn an_http1_body_is_stalled_once_the_socket_has_also_taken_nothing_for_the_send_timeout()
    {
        let send_timeout = Duration::from_secs(60);
        let activity = Arc::new(Activity::new(Instant::now()));
        let stalled = watch(&activity, send_timeout);
        let mut body = activity.request_started(false);
        // Waiting on the upstream (asked for more) for ten minutes, nothing written: not stalled.
        body.waits_for_client();
        body.asked_for_more();
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!stalled.is_finished());
        // Waiting on the client for ten minutes, while the socket takes a write every 50 s (a
        // slow reader behind hyper's full buffer): not stalled.
        body.waits_for_client();
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            activity.writes.fetch_add(1, Ordering::Relaxed);
        }
        assert!(!stalled.is_finished());
        // Then the socket takes nothing more: cut between one and 1.25 send timeouts later.
        let last_write = Instant::now();
        let quiet = stalled.await.unwrap() - last_write;
        assert!(
            quiet >= send_timeout && quiet <= send_timeout * 5 / 4,
            "{quiet:?}"
        );
    }

    #[test]
    fn the_default_public_url_is_the_bound_address_with_the_listeners_scheme() {
        assert_eq!(
            own_url(false, "127.0.0.1:43117".parse().unwrap()),
            "http://127.0.0.1:43117"
        );
        assert_eq!(
            own_url(true, "[::1]:8443".parse().unwrap()),
            "https://[::1]:8443"
        );
    }
}
