//! The real binary (SPEC §3, §4): `check`, `keygen`, and `serve` with its readiness line, a
//! graceful SIGTERM drain, and logs that never hold a key.

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use support::process::*;
use support::*;
use tokio::process::Command;

fn hash(key: &str) -> String {
    sha256_hex(key.as_bytes())
}

/// A complete, valid config: both listeners on port 0, the upstream at `upstream`, key from
/// `ONLYFANSAPI_API_KEY`, two clients.
fn good_toml(upstream: &str, dir: &Path) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:8080"
max_body_bytes = 1048576
request_timeout = "30s"
max_concurrent_requests = 64
shutdown_grace = "10s"

[admin]
listen = "127.0.0.1:0"

[upstream]
base_url = "{upstream}"
api_key_env = "ONLYFANSAPI_API_KEY"
connect_timeout = "2s"
timeout = "20s"

[rate_limit]
requests_per_minute = 1000
headroom = 0.9
max_wait = "2s"

[ledger]
path = "{ledger}"
retention = "90d"

[credits]
low_balance_warning = 10000

[[clients]]
name = "crm-app"
key_sha256 = "{alpha}"
allow = ["PUT /api/fansly/*/tracking-links/*", "GET /api/fansly/**"]
accounts = ["{ACCOUNT}"]

[[clients]]
name = "reporting"
key_sha256 = ["{scoped}", "{accounts}"]
disabled = true
"#,
        ledger = dir.join("data/ledger.sqlite").display(),
        alpha = hash(ALPHA_KEY),
        scoped = hash(SCOPED_KEY),
        accounts = hash(ACCOUNTS_KEY),
    )
}

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn run(mut cmd: Command) -> Output {
    bounded(30, cmd.output()).await.expect("run the binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn check_accepts_a_good_config_and_prints_its_clients_but_never_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "gateway.toml",
        &good_toml("https://app.onlyfansapi.com", dir.path()),
    );
    let mut cmd = command(&path, dir.path());
    cmd.arg("check").env("ONLYFANSAPI_API_KEY", UPSTREAM_KEY);
    let out = run(cmd).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("crm-app"), "{stdout}");
    assert!(stdout.contains("reporting"), "{stdout}");
    for output in [&stdout, &stderr] {
        assert!(!output.contains(UPSTREAM_KEY), "key printed: {output}");
        assert!(!output.contains("upstream-SECRET"), "key printed: {output}");
    }
}

/// Runs `check` on `toml` (with the key in the env unless `with_env_key` is false) and asserts
/// it fails with one stderr line naming the file and `key`.
async fn assert_check_refuses(toml: &str, with_env_key: bool, key: &str) {
    let dir = tempfile::tempdir().unwrap();
    let toml = toml.replace("@DIR@", &dir.path().display().to_string());
    let path = write_config(dir.path(), "bad-gateway.toml", &toml);
    let mut cmd = command(&path, dir.path());
    cmd.arg("check");
    if with_env_key {
        cmd.env("ONLYFANSAPI_API_KEY", UPSTREAM_KEY);
    }
    let out = run(cmd).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        !out.status.success(),
        "check accepted a bad config ({key}); stdout: {stdout}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one stderr line expected, got: {stderr:?}");
    let line = lines[0];
    assert!(
        line.contains("bad-gateway.toml"),
        "the file is not named: {line}"
    );
    assert!(line.contains(key), "the key {key:?} is not named: {line}");
    for output in [&stdout, &stderr] {
        assert!(!output.contains(UPSTREAM_KEY), "key printed: {output}");
    }
}

fn good() -> String {
    good_toml("https://app.onlyfansapi.com", Path::new("@DIR@"))
}

#[tokio::test]
async fn check_refuses_an_unknown_key_naming_it() {
    let toml = good().replacen("listen = \"127.0.0.1:0\"", "listn = \"127.0.0.1:0\"", 1);
    assert_check_refuses(&toml, true, "server.listn").await;
}

#[tokio::test]
async fn check_refuses_a_bad_duration_naming_it() {
    let toml = good().replace(
        "request_timeout = \"30s\"",
        "request_timeout = \"30 parsecs\"",
    );
    assert_check_refuses(&toml, true, "server.request_timeout").await;
}

#[tokio::test]
async fn check_refuses_a_duplicate_client_name() {
    let toml = good().replace("name = \"reporting\"", "name = \"crm-app\"");
    assert_check_refuses(&toml, true, "clients[1].name").await;
}

#[tokio::test]
async fn check_refuses_a_duplicate_key_hash() {
    let toml = good().replace(&hash(SCOPED_KEY), &hash(ALPHA_KEY));
    assert_check_refuses(&toml, true, "key_sha256").await;
}

#[tokio::test]
async fn check_refuses_a_missing_upstream_key_in_the_environment() {
    assert_check_refuses(&good(), false, "upstream.api_key_env").await;
}

#[tokio::test]
async fn check_refuses_an_empty_upstream_key_file() {
    let toml = good().replace(
        "api_key_env = \"ONLYFANSAPI_API_KEY\"",
        "api_key_file = \"@DIR@/empty-key\"",
    );
    let dir = tempfile::tempdir().unwrap();
    // The file must exist and be empty: write it where @DIR@ will point.
    let toml_here = toml.replace("@DIR@", &dir.path().display().to_string());
    std::fs::write(dir.path().join("empty-key"), "").unwrap();
    let path = write_config(dir.path(), "bad-gateway.toml", &toml_here);
    let mut cmd = command(&path, dir.path());
    cmd.arg("check").env("ONLYFANSAPI_API_KEY", UPSTREAM_KEY);
    let out = run(cmd).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "check accepted an empty key file");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr:?}");
    assert!(lines[0].contains("bad-gateway.toml"), "{stderr}");
    assert!(lines[0].contains("upstream.api_key_file"), "{stderr}");
}

#[tokio::test]
async fn keygen_prints_a_url_safe_key_and_the_block_holding_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let mut keys = Vec::new();
    for _ in 0..2 {
        let mut cmd = command(&dir.path().join("absent.toml"), dir.path());
        cmd.args(["keygen", "--name", "crm-app"]);
        let out = run(cmd).await;
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
        let key = stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("ofgw_"))
            .unwrap_or_else(|| panic!("no key line: {stdout}"))
            .to_owned();
        let random = &key["ofgw_".len()..];
        assert!(random.len() >= 43, "{key}");
        assert!(
            random
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "not URL-safe: {key}"
        );
        assert!(stdout.contains("[[clients]]"), "{stdout}");
        assert!(stdout.contains("name = \"crm-app\""), "{stdout}");
        let hash_line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with("key_sha256"))
            .unwrap_or_else(|| panic!("no key_sha256: {stdout}"));
        assert_eq!(
            hash_line.split('"').nth(1),
            Some(hash(&key).as_str()),
            "{hash_line}"
        );
        // The block holds only the hash.
        let block = &stdout[stdout.find("[[clients]]").unwrap()..];
        assert!(!block.contains(&key));
        keys.push(key);
    }
    assert_ne!(keys[0], keys[1], "two keygens gave the same key");
}

#[tokio::test]
async fn keygen_refuses_a_bad_client_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(&dir.path().join("absent.toml"), dir.path());
    cmd.args(["keygen", "--name", "Bad Name"]);
    let out = run(cmd).await;
    assert!(!out.status.success());
    assert!(!text(&out.stdout).contains("ofgw_"));
    assert!(text(&out.stderr).contains("name"), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_ready_proxies_drains_on_sigterm_and_never_logs_a_key() {
    bounded(60, async {
        let gate = Gate::new();
        let held = gate.clone();
        let mock = MockUpstream::start(move |req| {
            if req.uri.path().ends_with("/slow") {
                Reply::fixture().gated(&held)
            } else {
                Reply::fixture()
            }
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(
            dir.path(),
            "gateway.toml",
            &good_toml(&mock.base_url(), dir.path()),
        );
        let mut cmd = command(&path, dir.path());
        cmd.arg("serve")
            .env("ONLYFANSAPI_API_KEY", UPSTREAM_KEY)
            .env("RUST_LOG", "debug");
        let mut served = Served::spawn(cmd);

        let ready = served
            .wait_line("the ready line", |line| {
                line.contains("ofapi-gateway ready")
            })
            .await;
        let ready: serde_json::Value = serde_json::from_str(&ready)
            .unwrap_or_else(|e| panic!("ready line is not JSON ({e}): {ready}"));
        assert_eq!(ready["message"], "ofapi-gateway ready", "{ready}");
        let client_addr: std::net::SocketAddr = ready["client"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no client address: {ready}"));
        let admin_addr: std::net::SocketAddr = ready["admin"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no admin address: {ready}"));
        assert_ne!(client_addr.port(), 0);
        assert_ne!(admin_addr.port(), 0);

        let client = HttpClient::http1();
        let base = format!("http://{client_addr}");
        let link = format!("{base}{}", tracking_link_path(ACCOUNT));
        let resp = client
            .call("PUT", &link, ALPHA_KEY, r#"{"label":"via serve"}"#)
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.text(), FIXTURE);
        assert_eq!(
            mock.received()[0].header("authorization"),
            Some(format!("Bearer {UPSTREAM_KEY}").as_str())
        );
        let readyz = client
            .get(&format!("http://{admin_addr}/readyz"), None)
            .await;
        assert_eq!(readyz.status, 200);

        // A mix of bad requests, one of them presenting the upstream key as a gateway key.
        let statuses = [
            client.get(&format!("{base}/api/whoami"), None).await.status,
            client
                .get(&format!("{base}/api/whoami"), Some(UPSTREAM_KEY))
                .await
                .status,
            client
                .get(&format!("{base}/api/whoami"), Some(SCOPED_KEY))
                .await
                .status,
            client
                .get(&format!("{base}/api/whoami"), Some(ALPHA_KEY))
                .await
                .status,
            client
                .call("PUT", &link, ALPHA_KEY, r#"{"label":""}"#)
                .await
                .status,
            client
                .get(&format!("{base}/nope"), Some(ALPHA_KEY))
                .await
                .status,
        ];
        assert_eq!(statuses.map(|s| s.as_u16()), [401, 401, 401, 403, 422, 404]);

        // One request held upstream while SIGTERM arrives.
        let slow = format!("{base}/api/fansly/{ACCOUNT}/slow");
        let in_flight =
            tokio::spawn(async move { HttpClient::http1().get(&slow, Some(ALPHA_KEY)).await });
        mock.wait_for_count(2).await;
        let pid = served.child.id().expect("pid").to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(killed.success());
        served
            .wait_line("the drain line", |line| line.contains("shutting down"))
            .await;
        gate.open();
        let resp = in_flight.await.unwrap();
        assert_eq!(
            resp.status,
            200,
            "the in-flight request was cut: {}",
            resp.text()
        );
        assert_eq!(resp.text(), FIXTURE);

        let status = tokio::time::timeout(Duration::from_secs(15), served.child.wait())
            .await
            .expect("serve exits after the drain")
            .unwrap();
        // Let the readers reach the end of both streams.
        served.output_closed().await;
        let output = served.output();
        assert!(status.success(), "exit {status:?}:\n{output}");
        assert!(
            !output.contains(UPSTREAM_KEY),
            "upstream key logged:\n{output}"
        );
        assert!(
            !output.contains("upstream-SECRET"),
            "upstream key logged:\n{output}"
        );
        for key in [ALPHA_KEY, SCOPED_KEY] {
            assert!(!output.contains(key), "a client key was logged:\n{output}");
        }
    })
    .await
}

#[tokio::test]
async fn serve_refuses_a_bad_config_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let toml = good_toml("https://app.onlyfansapi.com", dir.path())
        .replace("max_wait = \"2s\"", "max_wait = \"soon\"");
    let path = write_config(dir.path(), "gateway.toml", &toml);
    let mut cmd = command(&path, dir.path());
    cmd.arg("serve").env("ONLYFANSAPI_API_KEY", UPSTREAM_KEY);
    let out = run(cmd).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("rate_limit.max_wait"), "{stderr}");
    assert!(!stderr.contains(UPSTREAM_KEY) && !text(&out.stdout).contains(UPSTREAM_KEY));
}
