//! The upstream key is never printed, logged or returned (SPEC §4): not in any response of any
//! kind, not in the configuration's `Debug`, not in `check`'s output or refusals, not in the logs
//! of `serve` at its most verbose, not in a panic's message and backtrace. And the admin listener
//! stays on loopback unless the config says otherwise (docs/security.md).

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use support::process::{command, Served};
use support::*;

#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.contains(UPSTREAM_KEY) && !text.contains("upstream-SECRET"),
        "the upstream key leaked in {what}: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_response_of_any_kind_carries_the_upstream_key() {
    bounded(30, async {
        let gate = Gate::new();
        let held = gate.clone();
        let mock = MockUpstream::start(move |req| {
            let path = req.uri.path();
            if path.ends_with("/slow") {
                Reply::fixture().gated(&held)
            } else if path.ends_with("/close") {
                Reply::Close
            } else if path.ends_with("/unauthorized") {
                Reply::json(401, r#"{"error":"Unauthorized. Check your API key."}"#)
            } else if path.ends_with("/redirect") {
                Reply::status(302).header("location", "https://cdn.example.test/x")
            } else {
                Reply::fixture()
            }
        })
        .await;
        let gw = TestGateway::start(
            &mock.base_url(),
            Options {
                max_body_bytes: 1024,
                upstream_timeout: Duration::from_millis(300),
                ..Options::default()
            },
        )
        .await;
        let client = HttpClient::http1();
        let link = gw.url(&tracking_link_path(ACCOUNT));
        let mut responses = vec![
            // Success, and upstream answers passed through.
            client
                .call("PUT", &link, ALPHA_KEY, r#"{"label":"x"}"#)
                .await,
            client.get(&gw.url("/api/whoami"), Some(ALPHA_KEY)).await,
            client
                .get(&gw.url("/api/x/unauthorized"), Some(ALPHA_KEY))
                .await,
            client
                .get(&gw.url("/api/x/redirect"), Some(ALPHA_KEY))
                .await,
            // Every kind of gateway error.
            client.get(&gw.url("/api//x"), Some(ALPHA_KEY)).await,
            client.call("PUT", &link, ALPHA_KEY, "{nope").await,
            client.get(&gw.url("/api/whoami"), None).await,
            client.get(&gw.url("/api/whoami"), Some(UPSTREAM_KEY)).await,
            client.get(&gw.url("/api/whoami"), Some(DISABLED_KEY)).await,
            client.get(&gw.url("/api/whoami"), Some(SCOPED_KEY)).await,
            client.get(&gw.url("/nope"), Some(ALPHA_KEY)).await,
            client
                .send(
                    request("OPTIONS", &gw.url("/api/whoami"))
                        .header("authorization", bearer(ALPHA_KEY))
                        .body(empty_body())
                        .unwrap(),
                )
                .await
                .unwrap(),
            client
                .send(
                    request("POST", &gw.url("/api/x"))
                        .header("authorization", bearer(ALPHA_KEY))
                        .body(full_body(vec![b'a'; 4096]))
                        .unwrap(),
                )
                .await
                .unwrap(),
            client
                .send(
                    request("PUT", &link)
                        .header("authorization", bearer(ALPHA_KEY))
                        .header("content-type", "text/plain")
                        .body(full_body(r#"{"label":"x"}"#))
                        .unwrap(),
                )
                .await
                .unwrap(),
            client.call("PUT", &link, ALPHA_KEY, r#"{"label":5}"#).await,
            client.get(&gw.url("/api/x/close"), Some(ALPHA_KEY)).await,
            client.get(&gw.url("/api/x/slow"), Some(ALPHA_KEY)).await,
            client.get(&gw.url("/healthz"), None).await,
        ];
        gate.open();
        let statuses: Vec<u16> = responses.iter().map(|r| r.status.as_u16()).collect();
        assert_eq!(
            statuses,
            [
                200, 200, 401, 302, 400, 400, 401, 401, 401, 403, 404, 405, 413, 415, 422, 502,
                504, 200
            ]
        );
        let offline = TestGateway::start(&closed_port_url().await, Options::default()).await;
        responses.push(
            client
                .get(&offline.url("/api/whoami"), Some(ALPHA_KEY))
                .await,
        );
        assert_eq!(responses.last().unwrap().status, 502);
        for resp in &responses {
            assert_no_secret(&format!("a {} response", resp.status), &resp.everything());
        }
        let admin = client.get(&gw.admin_url("/readyz"), None).await;
        assert_no_secret("/readyz", &admin.everything());
    })
    .await
}

#[tokio::test]
async fn the_configs_debug_output_redacts_the_upstream_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = build_config(
        "https://app.onlyfansapi.com",
        Options::default(),
        dir.path(),
    );
    let debug = format!("{config:?}");
    assert_no_secret("format!(\"{:?}\", config)", &debug);
    let pretty = format!("{config:#?}");
    assert_no_secret("format!(\"{:#?}\", config)", &pretty);
    assert!(debug.contains("redacted"), "{debug}");
    assert_no_secret("the summary", &config.summary());
    // Nor do client keys appear: only their hashes are held.
    assert!(!debug.contains(ALPHA_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_gateways_config_redacts_the_upstream_key() {
    bounded(20, async {
        let mock = MockUpstream::start(|_| Reply::fixture()).await;
        let gw = TestGateway::start(&mock.base_url(), Options::default()).await;
        assert_no_secret("Gateway::config()", &format!("{:?}", gw.config()));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// The real binary: `check`, a panic, `serve` at trace level
// ---------------------------------------------------------------------------------------------

/// A config for the binary: listeners on port 0, the upstream at `upstream`, the key from
/// `key_source` (an `api_key_env` or `api_key_file` line), one client with [`ALPHA_KEY`].
fn binary_toml(upstream: &str, dir: &Path, key_source: &str, extra_upstream: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[upstream]
base_url = "{upstream}"
{key_source}
{extra_upstream}

[ledger]
path = "{ledger}"

[[clients]]
name = "alpha"
key_sha256 = "{alpha}"
"#,
        ledger = dir.join("ledger.sqlite").display(),
        alpha = sha256_hex(ALPHA_KEY.as_bytes()),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn output(mut cmd: tokio::process::Command) -> (std::process::ExitStatus, String) {
    let out = bounded(30, cmd.output()).await.expect("run the binary");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

#[tokio::test]
async fn check_and_its_refusals_never_print_the_upstream_key() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = "https://app.onlyfansapi.com";
    let from_env = write(
        dir.path(),
        "env.toml",
        &binary_toml(
            upstream,
            dir.path(),
            r#"api_key_env = "ONLYFANSAPI_API_KEY""#,
            "",
        ),
    );
    let key_file = write(dir.path(), "key", &format!("{UPSTREAM_KEY}\n"));
    let from_file = write(
        dir.path(),
        "file.toml",
        &binary_toml(
            upstream,
            dir.path(),
            &format!("api_key_file = \"{}\"", key_file.display()),
            "",
        ),
    );
    let broken = write(
        dir.path(),
        "broken.toml",
        &binary_toml(
            upstream,
            dir.path(),
            r#"api_key_env = "ONLYFANSAPI_API_KEY""#,
            "timeout = \"soon\"",
        ),
    );
    // (config, the key in the environment, whether `check` accepts it)
    let cases = [
        (&from_env, UPSTREAM_KEY.to_owned(), true),
        (&from_file, String::new(), true),
        (&broken, UPSTREAM_KEY.to_owned(), false),
        // A key that cannot go in a header is refused without being shown.
        (&from_env, format!("{UPSTREAM_KEY} \u{7f}"), false),
    ];
    for (config, key, accepted) in cases {
        let mut cmd = command(config, dir.path());
        cmd.arg("check").env("RUST_BACKTRACE", "1");
        if !key.is_empty() {
            cmd.env("ONLYFANSAPI_API_KEY", &key);
        }
        let (status, text) = output(cmd).await;
        assert_eq!(status.success(), accepted, "{}: {text}", config.display());
        assert_no_secret(&format!("check {}", config.display()), &text);
    }
}

/// `check` writes its summary to stdout; on a full disk (`/dev/full`) `println!` panics. With
/// backtraces on, the panic's message and backtrace name code, never data.
#[tokio::test]
async fn a_panic_with_backtraces_on_never_prints_the_upstream_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "gateway.toml",
        &binary_toml(
            "https://app.onlyfansapi.com",
            dir.path(),
            r#"api_key_env = "ONLYFANSAPI_API_KEY""#,
            "",
        ),
    );
    for backtrace in ["1", "full"] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full (Linux)");
        let mut cmd = command(&config, dir.path());
        cmd.arg("check")
            .env("ONLYFANSAPI_API_KEY", UPSTREAM_KEY)
            .env("RUST_BACKTRACE", backtrace)
            .stdout(Stdio::from(full))
            .stderr(Stdio::piped());
        // Not `output()`: tokio's pipes stdout whatever was set.
        let child = cmd.spawn().expect("spawn check");
        let out = bounded(30, child.wait_with_output()).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(101),
            "a panic's exit code: {stderr}"
        );
        assert!(stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains("stack backtrace"), "{stderr}");
        assert_no_secret(&format!("a panic, RUST_BACKTRACE={backtrace}"), &stderr);
    }
}

/// Everything `serve` can say at `RUST_LOG=trace` (hyper, h2, rustls included) over a TLS +
/// HTTP/2 upstream, with backtraces on, through a forwarded call, refusals and a graceful stop:
/// neither the upstream key nor a client key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_at_trace_level_never_logs_a_key() {
    bounded(60, async {
        let ca = TestCa::new();
        let mock = MockUpstream::start_tls(&ca, |req| {
            if req.uri.path().ends_with("/fail") {
                Reply::Close
            } else {
                Reply::fixture()
            }
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let config = write(
            dir.path(),
            "gateway.toml",
            &binary_toml(
                &mock.base_url(),
                dir.path(),
                r#"api_key_env = "ONLYFANSAPI_API_KEY""#,
                &format!("ca_file = \"{}\"", ca.ca_path.display()),
            ),
        );
        let mut cmd = command(&config, dir.path());
        cmd.arg("serve")
            .env("ONLYFANSAPI_API_KEY", UPSTREAM_KEY)
            .env("RUST_LOG", "trace")
            .env("RUST_BACKTRACE", "full");
        let mut served = Served::spawn(cmd);
        let (client_addr, _) = served.ready().await;
        let http = HttpClient::http1();
        let base = format!("http://{client_addr}");
        let link = format!("{base}{}", tracking_link_path(ACCOUNT));
        let resp = http.call("PUT", &link, ALPHA_KEY, r#"{"label":"x"}"#).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(
            mock.received()[0].version,
            http::Version::HTTP_2,
            "the upstream call should have gone over HTTP/2"
        );
        let statuses = [
            http.get(&format!("{base}/api/x/fail"), Some(ALPHA_KEY))
                .await
                .status,
            http.get(&format!("{base}/api/whoami"), Some(UPSTREAM_KEY))
                .await
                .status,
            http.get(&format!("{base}/api/whoami"), Some(UNKNOWN_KEY))
                .await
                .status,
        ];
        assert_eq!(statuses.map(|s| s.as_u16()), [502, 401, 401]);
        served.signal("TERM");
        let (status, lines) = served.finish().await;
        assert!(status.success(), "exit {status:?}");
        let text = lines.join("\n");
        assert!(
            text.contains("\"level\":\"TRACE\""),
            "trace logging was not on"
        );
        assert_no_secret("serve's output at trace level", &text);
        for key in [ALPHA_KEY, UNKNOWN_KEY] {
            assert!(!text.contains(key), "a client key was logged");
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// The admin listener
// ---------------------------------------------------------------------------------------------

#[test]
fn the_admin_listener_is_on_loopback_unless_the_config_says_otherwise() {
    let key = |_: &str| Some("k".to_owned());
    let parse = |text: &str| {
        ofapi_gateway::config::parse_str(Path::new("t.toml"), text, &key).expect("valid")
    };
    let default = parse("");
    assert_eq!(default.admin.listen, "127.0.0.1:8081".parse().unwrap());
    assert!(!default.admin_is_open());
    // The shipped examples keep it there too (Kubernetes binds 0.0.0.0 with a token: deploy/).
    for example in ["config/gateway.toml", "config/quickstart.toml"] {
        let config = ofapi_gateway::config::load_with_env(Path::new(example), &key)
            .unwrap_or_else(|e| panic!("{example}: {e}"));
        assert!(config.admin.listen.ip().is_loopback(), "{example}");
    }
    // Moved off loopback without a token, `check` says it is open (and `serve` warns).
    let open = parse("[admin]\nlisten = \"0.0.0.0:9091\"");
    assert!(open.admin_is_open());
    assert!(open.summary().contains(ofapi_gateway::config::ADMIN_OPEN));
    let token = |name: &str| Some(if name == "T" { "tok" } else { "k" }.to_owned());
    let guarded = ofapi_gateway::config::parse_str(
        Path::new("t.toml"),
        "[admin]\nlisten = \"0.0.0.0:9091\"\ntoken_env = \"T\"",
        &token,
    )
    .unwrap();
    assert!(!guarded.admin_is_open());
    assert!(!guarded
        .summary()
        .contains(ofapi_gateway::config::ADMIN_OPEN));
}
