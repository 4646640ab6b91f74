//! Running the real binary: a `serve` child whose output lines are collected and waited for
//! (readiness and reload lines instead of sleeps), signals sent to it, and its memory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::gateway::UPSTREAM_KEY;

pub const BIN: &str = env!("CARGO_BIN_EXE_ofapi-gateway");

/// The binary with `--config config`, run in `dir`, with a clean environment for its settings.
pub fn command(config: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(config)
        .current_dir(dir)
        .env_remove("OFAPI_GATEWAY_CONFIG")
        .env_remove("ONLYFANSAPI_API_KEY")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// A running `serve` child whose output lines are collected and can be waited for.
pub struct Served {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    rx: mpsc::UnboundedReceiver<String>,
}

impl Served {
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn serve");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for stream in [
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(stderr),
        ] {
            let lines = lines.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    lines.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        Self { child, lines, rx }
    }

    /// The next output line satisfying `pred`.
    pub async fn wait_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let lines = self.lines.clone();
        tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = self.rx.recv().await {
                if pred(&line) {
                    return line;
                }
            }
            panic!(
                "output ended before {what}:\n{}",
                lines.lock().unwrap().join("\n")
            )
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no {what} within 20s:\n{}",
                self.lines.lock().unwrap().join("\n")
            )
        })
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Served {
    /// Every output line so far (stdout and stderr, in arrival order).
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for the child to exit and its output to end; returns its status and every line.
    pub async fn finish(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the child exits")
            .expect("wait for the child");
        tokio::time::timeout(Duration::from_secs(10), self.output_closed())
            .await
            .expect("its output ends");
        (status, self.lines())
    }

    /// Waits until the child has closed its output (it is exiting).
    pub async fn output_closed(&mut self) {
        while self.rx.recv().await.is_some() {}
    }

    /// Sends `signal` (`HUP`, `TERM`, `KILL`, ...) to the child.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("child still running");
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Waits for the `ofapi-gateway ready` line; returns the client and admin addresses.
    pub async fn ready(&mut self) -> (std::net::SocketAddr, std::net::SocketAddr) {
        let line = self
            .wait_line("the ready line", |l| l.contains("ofapi-gateway ready"))
            .await;
        let json: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
        let addr = |field: &str| json[field].as_str().expect(field).parse().expect(field);
        (addr("client"), addr("admin"))
    }
}

/// The binary serving a config file the test wrote, with [`UPSTREAM_KEY`] in its environment,
/// ready: the usual way to run the gateway as a process.
pub struct GatewayProcess {
    pub process: Served,
    /// `dir/gateway.toml`.
    pub config: PathBuf,
    pub client_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

impl GatewayProcess {
    /// Writes `toml` as `dir/gateway.toml` and runs `serve` on it in `dir` (logging at its
    /// default level, whatever `RUST_LOG` says); returns once it is ready.
    pub async fn start(dir: &Path, toml: &str) -> Self {
        let config = dir.join("gateway.toml");
        std::fs::write(&config, toml).expect("write gateway.toml");
        let mut cmd = command(&config, dir);
        cmd.arg("serve")
            .env_remove("RUST_LOG")
            .env("ONLYFANSAPI_API_KEY", UPSTREAM_KEY);
        let mut process = Served::spawn(cmd);
        let (client_addr, admin_addr) = process.ready().await;
        Self {
            process,
            config,
            client_addr,
            admin_addr,
        }
    }

    /// The client listener's URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.client_addr)
    }

    /// The admin listener's URL for `path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// Sends `signal` (`HUP`, `TERM`, `KILL`, ...).
    pub fn signal(&self, signal: &str) {
        self.process.signal(signal);
    }

    /// Waits for the process to exit; its status and every output line.
    pub async fn finish(self) -> (std::process::ExitStatus, Vec<String>) {
        self.process.finish().await
    }

    /// SIGTERM, then the exit status (asserted success) and every output line.
    pub async fn stop(self) -> Vec<String> {
        self.signal("TERM");
        let (status, lines) = self.finish().await;
        assert!(status.success(), "exit {status:?}:\n{}", lines.join("\n"));
        lines
    }
}

/// The resident set size of process `pid` (`VmRSS`), in bytes.
pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024
}

/// The resident set size of this process (the tests and their in-process gateway), in bytes.
pub fn own_rss() -> u64 {
    rss_of(std::process::id())
}
