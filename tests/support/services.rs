//! Real Redis, PostgreSQL and Chromium for the tests, never stand-ins: the shared servers that
//! `.ci/services` makes sure of (with a fresh database or key prefix per test), private servers a
//! test owns and may kill with SIGKILL and restart, and a headless Chromium driven over WebDriver.
//!
//! Nothing here sleeps to synchronize: a server is ready when it answers (PING, a connection),
//! polled in a loop bounded by [`READY_WITHIN`]; a killed server is gone when its processes are.
//! Everything started here is killed when its handle drops, even when the test panics.

use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// The shared Redis when `OFGW_TEST_REDIS_URL` is not set.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// The shared PostgreSQL when `OFGW_TEST_DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// How long a started server, browser or driver may take to answer.
pub const READY_WITHIN: Duration = Duration::from_secs(30);
/// The interval between two readiness probes.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// The shared Redis every test may use, under its own [`unique_prefix`].
pub fn redis_url() -> String {
    std::env::var("OFGW_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned())
}

/// The shared PostgreSQL server; a test makes its own database there with [`TestDatabase`].
pub fn database_url() -> String {
    std::env::var("OFGW_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// A string no other call returns, in this test process or any other, this run or another:
/// the process id, a counter and the clock.
fn unique_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!(
        "{}_{}_{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A Redis key prefix of the test `test_name` that no other test, process or run shares, so
/// tests can share one Redis: `ofgw-test:{test_name}:{unique}:`.
pub fn unique_prefix(test_name: &str) -> String {
    format!("ofgw-test:{test_name}:{}:", unique_token())
}

/// A port on 127.0.0.1 that nothing listened on a moment ago.
async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Polls `probe` every [`POLL_EVERY`] until it gives a value; panics after [`READY_WITHIN`] or
/// when `child` exits first (its log, when given, goes into the message).
async fn wait_ready<T, F, Fut>(what: &str, child: &mut Child, log: Option<&Path>, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if let Some(ready) = probe().await {
            return ready;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before it was ready{}",
                log_tail(log)
            );
        }
        if Instant::now() > deadline {
            panic!("{what} not ready within {READY_WITHIN:?}{}", log_tail(log));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// The last lines of a server's log, for a failure message.
fn log_tail(log: Option<&Path>) -> String {
    let Some(path) = log else {
        return String::new();
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    format!("; {}:\n{tail}", path.display())
}

/// Sends `signal` (`KILL`, `STOP`, ...) to each of `pids` (the ones already gone are ignored).
fn signal(signal: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

/// SIGKILL to `postmaster` and to its server processes, as in a crash; returns them all.
/// The postmaster is stopped first so that it forks no process after they are listed (each
/// server process is its own session leader, and is reparented once the postmaster dies).
fn kill_postgres_tree(postmaster: u32) -> Vec<u32> {
    signal("STOP", &[postmaster]);
    let mut all = children_of(postmaster);
    all.push(postmaster);
    signal("KILL", &all);
    all
}

/// The state letter of process `pid` in /proc (`None` when there is no such process).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().next()?.chars().next()
}

/// Whether process `pid` has exited (gone, or a zombie nobody reaped yet).
fn exited(pid: u32) -> bool {
    matches!(process_state(pid), None | Some('Z' | 'X'))
}

/// The processes whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let after_comm = &stat[stat.rfind(')')? + 1..];
                    after_comm.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// The processes whose command line contains `needle`, from /proc.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                cmdline
                    .split(|&byte| byte == 0)
                    .any(|arg| String::from_utf8_lossy(arg).contains(needle))
            })
        })
        .collect()
}

/// Waits (blocking, bounded by [`READY_WITHIN`]) until every one of `pids` has exited.
fn wait_exited(pids: &[u32]) -> bool {
    let deadline = Instant::now() + READY_WITHIN;
    while !pids.iter().all(|&pid| exited(pid)) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(POLL_EVERY);
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

/// Whether a Redis answers PING on 127.0.0.1:`port` (RESP over a raw socket).
async fn redis_pings(port: u16) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"*1\r\n$4\r\nPING\r\n").await.ok()?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await.ok()?;
        (&reply == b"+PONG\r\n").then_some(())
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .ok()
        .flatten()
        .is_some()
}

/// A redis-server of the test's own (the system binary, `OFGW_TEST_REDIS_SERVER` to override)
/// on a free 127.0.0.1 port, keeping nothing on disk. Killed when dropped.
pub struct PrivateRedis {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts one and waits until it answers PING.
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ofgw-redis-")
            .tempdir()
            .expect("tempdir");
        let mut redis = Self {
            port: free_port().await,
            dir,
            child: None,
        };
        redis.spawn().await;
        redis
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    async fn spawn(&mut self) {
        let binary =
            std::env::var("OFGW_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let log = std::fs::File::create(self.log_path()).expect("create redis.log");
        let mut child = Command::new(binary)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect(
                "spawn redis-server (is the redis-server package installed? bash .ci/services)",
            );
        let port = self.port;
        let log = self.log_path();
        wait_ready("redis-server", &mut child, Some(&log), || async move {
            redis_pings(port).await.then_some(())
        })
        .await;
        self.child = Some(child);
    }

    /// SIGKILL: the server is gone (connections refused) when this returns.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts it again on the same port (after [`Self::kill`], or kills it first).
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

/// Connects to `url` (5 s connect timeout, no TLS), running the connection on this runtime.
pub async fn pg_connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(5));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// `url` with its database (the path) replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let authority_start = url.find("://").map_or(0, |at| at + 3);
    let rest = &url[authority_start..];
    let path_start = rest
        .find(['/', '?'])
        .map_or(url.len(), |at| authority_start + at);
    let query = url[path_start..]
        .find('?')
        .map_or("", |at| &url[path_start + at..]);
    format!("{}/{database}{query}", &url[..path_start])
}

/// A database of its own on the shared server ([`database_url`]): a fresh unique name, created
/// empty, dropped (with its connections) when this drops.
pub struct TestDatabase {
    name: String,
    url: String,
    server_url: String,
}

impl TestDatabase {
    /// Creates one on the shared server.
    pub async fn create() -> Self {
        Self::create_on(&database_url()).await
    }

    /// Creates one on the server of `server_url` (any database of it to connect to).
    pub async fn create_on(server_url: &str) -> Self {
        let name = format!("ofgw_test_{}", unique_token());
        let admin = pg_connect(server_url)
            .await
            .unwrap_or_else(|e| panic!("connect to {server_url} (bash .ci/services): {e}"));
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        Self {
            url: with_database(server_url, &name),
            name,
            server_url: server_url.to_owned(),
        }
    }

    /// The URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A new connection to this database.
    pub async fn connect(&self) -> tokio_postgres::Client {
        pg_connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.name))
    }
}

impl Drop for TestDatabase {
    /// Best effort: `DROP DATABASE ... WITH (FORCE)` from a thread with its own runtime (the
    /// test's runtime may be shutting down or be the one blocked here).
    fn drop(&mut self) {
        let server_url = self.server_url.clone();
        let statement = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let admin = pg_connect(&server_url).await.ok()?;
                admin.batch_execute(&statement).await.ok()
            })
        });
        let _ = dropper.join();
    }
}

/// The directory of the newest installed PostgreSQL server programs (`OFGW_TEST_PG_BINDIR` to
/// override): Debian keeps initdb and postgres out of PATH, under /usr/lib/postgresql/N/bin.
fn pg_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("OFGW_TEST_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .max();
    match newest {
        Some((_, bin)) => bin,
        None => PathBuf::new(), // initdb and postgres from PATH
    }
}

/// The uid and gid of the `postgres` user, from /etc/passwd.
fn postgres_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"postgres") && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
        .expect("a postgres user (the postgresql package makes it; bash .ci/services)")
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(2) == Some("0"))
    })
}

/// `program` run as the postgres user when we are root (the server refuses to run as root).
/// setpriv execs the program in place, so the child's pid is the program's own.
fn as_postgres(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(program)
            .env("HOME", "/var/lib/postgresql");
        command
    } else {
        Command::new(program)
    }
}

/// A PostgreSQL server of the test's own: a fresh cluster (trust auth, superuser `postgres`) in a
/// temporary directory, on a free 127.0.0.1 port, its socket in that directory. Killed when
/// dropped, and its directory removed.
pub struct PrivatePostgres {
    port: u16,
    dir: TempDir,
    postmaster: Option<Child>,
}

impl PrivatePostgres {
    /// Runs initdb (a second or few) and starts the server; returns once it accepts a connection.
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ofgw-pg-")
            .tempdir()
            .expect("tempdir");
        if running_as_root() {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the tempdir");
        }
        let data = dir.path().join("data");
        let output = as_postgres(&pg_bindir().join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
            ])
            // The cluster is thrown away with the test: no fsync of the freshly made files.
            .arg("--no-sync")
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run initdb (is the postgresql package installed? bash .ci/services)");
        assert!(
            output.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let mut postgres = Self {
            port: free_port().await,
            dir,
            postmaster: None,
        };
        postgres.spawn().await;
        postgres
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.log_path()).expect("create postgres.log");
        if running_as_root() {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(self.log_path(), Some(uid), Some(gid)).expect("chown log");
        }
        let mut child = as_postgres(&pg_bindir().join("postgres"))
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn postgres");
        let url = self.url();
        let log = self.log_path();
        wait_ready("postgres", &mut child, Some(&log), || {
            let url = url.clone();
            async move { pg_connect(&url).await.ok().map(drop) }
        })
        .await;
        self.postmaster = Some(child);
    }

    /// SIGKILL to the postmaster and to its server processes, as in a crash: nothing is flushed
    /// or checkpointed. Returns once all of them have exited (connections are refused then).
    pub async fn kill(&mut self) {
        let Some(mut postmaster) = self.postmaster.take() else {
            return;
        };
        let all = postmaster.id().map(kill_postgres_tree).unwrap_or_default();
        let _ = postmaster.wait().await;
        let gone = tokio::task::spawn_blocking(move || wait_exited(&all))
            .await
            .unwrap_or(false);
        assert!(
            gone,
            "postgres server processes still running after SIGKILL"
        );
    }

    /// Starts the server again on the same port and data directory (crash recovery replays the
    /// WAL: committed rows survive a [`Self::kill`]).
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Some(postmaster) = self.postmaster.take() {
            if let Some(pid) = postmaster.id() {
                let all = kill_postgres_tree(pid);
                // The directory goes only once nothing writes into it any more.
                wait_exited(&all);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Browser
// ---------------------------------------------------------------------------------------------

/// Chromium's flags for the tests: headless, no sandbox (we run as root), nothing that reaches
/// the network by itself.
const CHROMIUM_FLAGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,800",
];

/// A headless Chromium (Debian's `/usr/bin/chromium`, `OFGW_TEST_CHROMIUM` to override) driven by
/// its own chromedriver (`OFGW_TEST_CHROMEDRIVER`) on a free port, with a fresh profile
/// directory. Dropping it ends the session and kills the driver and every browser process.
pub struct Browser {
    client: fantoccini::Client,
    driver: Child,
    driver_port: u16,
    session_id: Option<String>,
    profile: TempDir,
}

impl Browser {
    /// Starts chromedriver, waits until it listens, then opens a session (launches Chromium).
    pub async fn start() -> Self {
        let profile = tempfile::Builder::new()
            .prefix("ofgw-chromium-")
            .tempdir()
            .expect("tempdir");
        let driver_port = free_port().await;
        let driver_log = profile.path().join("chromedriver.log");
        let chromedriver = std::env::var("OFGW_TEST_CHROMEDRIVER")
            .unwrap_or_else(|_| "/usr/bin/chromedriver".to_owned());
        let mut driver = Command::new(chromedriver)
            .arg(format!("--port={driver_port}"))
            .arg(format!("--log-path={}", driver_log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn chromedriver (is chromium-driver installed? bash .ci/services)");
        wait_ready(
            "chromedriver",
            &mut driver,
            Some(&driver_log),
            || async move { TcpStream::connect(("127.0.0.1", driver_port)).await.ok() },
        )
        .await;

        let chromium =
            std::env::var("OFGW_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
        let user_data = profile.path().join("profile");
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|flag| flag.to_string()).collect();
        args.push(format!("--user-data-dir={}", user_data.display()));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), "chrome".into());
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": chromium, "args": args }),
        );
        let mut builder = fantoccini::ClientBuilder::new(
            hyper_util::client::legacy::connect::HttpConnector::new(),
        );
        builder.capabilities(capabilities);
        let client = tokio::time::timeout(
            READY_WITHIN,
            builder.connect(&format!("http://127.0.0.1:{driver_port}")),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no browser session within {READY_WITHIN:?}{}",
                log_tail(Some(&driver_log))
            )
        })
        .unwrap_or_else(|e| panic!("open a browser session: {e}{}", log_tail(Some(&driver_log))));
        let session_id = client.session_id().await.ok().flatten();
        Self {
            client,
            driver,
            driver_port,
            session_id,
            profile,
        }
    }

    /// The directory of this browser's profile and driver log (every browser process names it).
    pub fn profile_dir(&self) -> &Path {
        self.profile.path()
    }

    /// The WebDriver client, for everything the helpers below do not cover.
    pub fn client(&self) -> &fantoccini::Client {
        &self.client
    }

    /// Navigates to `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// A PNG of the viewport, also written to `path`; returns its bytes.
    pub async fn screenshot(&self, path: &Path) -> Vec<u8> {
        let png = self.client.screenshot().await.expect("take a screenshot");
        std::fs::write(path, &png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        png
    }
}

impl Drop for Browser {
    /// Ends the session with a blocking `DELETE /session/{id}` to the driver (the test's runtime
    /// may be gone), which closes Chromium; then kills the driver and any process of this
    /// browser's profile that is left.
    fn drop(&mut self) {
        if let Some(session_id) = &self.session_id {
            let _ = delete_session(self.driver_port, session_id);
        }
        let _ = self.driver.start_kill();
        let profile = self.profile.path().display().to_string();
        let left = processes_mentioning(&profile);
        signal("KILL", &left);
        wait_exited(&left);
    }
}

/// `DELETE /session/{id}` to the chromedriver on `port`, waiting for its answer (it answers once
/// the browser has quit).
fn delete_session(port: u16, session_id: &str) -> std::io::Result<()> {
    let mut stream = StdTcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "DELETE /session/{session_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    // Read the head, then Content-Length bytes: chromedriver keeps the connection open.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(head_end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            if answer.len() >= head_end + 4 + length {
                return Ok(());
            }
        }
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Ok(());
        }
        answer.extend_from_slice(&chunk[..read]);
    }
}
