//! Live reload (SIGHUP) of the real binary: clients and keys change without a restart, a bad
//! file keeps the old config, requests in flight finish, and TLS certificates are swapped for new
//! connections. Each step waits for the gateway's own log line, never for time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use support::process::GatewayProcess;
use support::*;

/// A config whose clients are `clients` (name, key); TLS files if given.
fn toml(
    upstream: &str,
    dir: &Path,
    clients: &[(&str, &str)],
    tls: Option<(&Path, &Path)>,
) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"10s\"\n{tls}\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nbase_url = \"{upstream}\"\napi_key_env = \"ONLYFANSAPI_API_KEY\"\n\
         [ledger]\npath = \"{ledger}\"\n",
        tls = tls.map_or(String::new(), |(cert, key)| format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        )),
        ledger = dir.join("ledger.sqlite").display(),
    );
    for (name, key) in clients {
        text.push_str(&format!(
            "[[clients]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\n",
            sha256_hex(key.as_bytes())
        ));
    }
    text
}

/// Puts this CA's leaf certificate and key at the paths the config names.
fn install(ca: &TestCa, cert: &Path, key: &Path) {
    std::fs::write(cert, &ca.cert_pem).unwrap();
    std::fs::write(key, &ca.key_pem).unwrap();
}

async fn start(dir: &Path, text: &str) -> (GatewayProcess, String) {
    let served = GatewayProcess::start(dir, text).await;
    let base = format!("http://{}", served.client_addr);
    (served, base)
}

/// Writes the new file, sends SIGHUP and waits for the gateway to say how it went.
async fn reload(served: &mut GatewayProcess, dir: &Path, text: &str, expect: &str) -> String {
    std::fs::write(dir.join("gateway.toml"), text).unwrap();
    served.signal("HUP");
    served
        .process
        .wait_line(expect, |line| line.contains(expect))
        .await
}

async fn status(client: &HttpClient, base: &str, key: &str) -> u16 {
    client
        .get(&format!("{base}{}", "/api/whoami"), Some(key))
        .await
        .status
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_keys_change_on_sighup_without_a_restart() {
    bounded(60, async {
        let mock = MockUpstream::start(|_| Reply::fixture()).await;
        let dir = tempfile::tempdir().unwrap();
        let (mut served, base) = start(
            dir.path(),
            &toml(&mock.base_url(), dir.path(), &[("alpha", ALPHA_KEY)], None),
        )
        .await;
        let client = HttpClient::http1();
        assert_eq!(status(&client, &base, ALPHA_KEY).await, 200);
        assert_eq!(status(&client, &base, SCOPED_KEY).await, 401);

        // A new client works at once.
        let both = toml(
            &mock.base_url(),
            dir.path(),
            &[("alpha", ALPHA_KEY), ("beta", SCOPED_KEY)],
            None,
        );
        reload(&mut served, dir.path(), &both, "configuration reloaded").await;
        assert_eq!(status(&client, &base, SCOPED_KEY).await, 200);

        // A removed key gets 401 at once, on the same keep-alive connection too.
        let beta_only = toml(&mock.base_url(), dir.path(), &[("beta", SCOPED_KEY)], None);
        reload(
            &mut served,
            dir.path(),
            &beta_only,
            "configuration reloaded",
        )
        .await;
        assert_eq!(status(&client, &base, ALPHA_KEY).await, 401);
        assert_eq!(status(&client, &base, SCOPED_KEY).await, 200);

        // An invalid file is refused with one clear line; the old config stays in force.
        let line = reload(
            &mut served,
            dir.path(),
            "[server]\nlisten = 5\n",
            "reload refused",
        )
        .await;
        assert!(line.contains("server.listen"), "{line}");
        assert_eq!(status(&client, &base, SCOPED_KEY).await, 200);
        assert_eq!(status(&client, &base, ALPHA_KEY).await, 401);

        // Settings that need a restart are named.
        let moved = both.replacen(
            "shutdown_grace = \"10s\"",
            "shutdown_grace = \"10s\"\nmax_body_bytes = 5",
            1,
        );
        let line = reload(
            &mut served,
            dir.path(),
            &moved,
            "take effect only after a restart",
        )
        .await;
        assert!(line.contains("server limits"), "{line}");
        served.signal("TERM");
        served.process.child.wait().await.unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_during_a_reload_finishes_normally() {
    bounded(60, async {
        let gate = Gate::new();
        let held = gate.clone();
        let mock = MockUpstream::start(move |_| Reply::fixture().gated(&held)).await;
        let dir = tempfile::tempdir().unwrap();
        let (mut served, base) = start(
            dir.path(),
            &toml(&mock.base_url(), dir.path(), &[("alpha", ALPHA_KEY)], None),
        )
        .await;
        let in_flight = tokio::spawn({
            let base = base.clone();
            async move {
                HttpClient::http1()
                    .get(&format!("{base}/api/whoami"), Some(ALPHA_KEY))
                    .await
            }
        });
        mock.wait_for_count(1).await;
        // Even a reload that revokes the in-flight request's own key lets it finish.
        let revoked = toml(&mock.base_url(), dir.path(), &[("beta", SCOPED_KEY)], None);
        reload(&mut served, dir.path(), &revoked, "configuration reloaded").await;
        gate.open();
        let resp = in_flight.await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), FIXTURE);
        served.signal("TERM");
        assert!(served.process.child.wait().await.unwrap().success());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_tls_certificate_for_new_connections() {
    bounded(60, async {
        let mock = MockUpstream::start(|_| Reply::fixture()).await;
        let dir = tempfile::tempdir().unwrap();
        let (first_ca, second_ca) = (TestCa::new(), TestCa::new());
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        install(&first_ca, &cert, &key);
        let text = toml(
            &mock.base_url(),
            dir.path(),
            &[("alpha", ALPHA_KEY)],
            Some((&cert, &key)),
        );
        let (mut served, base) = start(dir.path(), &text).await;
        let base = base.replace("http://127.0.0.1", "https://localhost");
        let url = format!("{base}/api/whoami");
        assert_eq!(
            HttpClient::https(&first_ca, Alpn::Http1)
                .get(&url, Some(ALPHA_KEY))
                .await
                .status,
            200
        );

        install(&second_ca, &cert, &key);
        reload(&mut served, dir.path(), &text, "configuration reloaded").await;
        let trusting_second = HttpClient::https(&second_ca, Alpn::H2);
        let resp = trusting_second.get(&url, Some(ALPHA_KEY)).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.version, http::Version::HTTP_2);
        let stale = HttpClient::https(&first_ca, Alpn::Http1);
        let refused = stale
            .send(request("GET", &url).body(empty_body()).unwrap())
            .await;
        assert!(refused.is_err(), "the old certificate is no longer served");
        served.signal("TERM");
        let _ = tokio::time::timeout(Duration::from_secs(15), served.process.child.wait()).await;
    })
    .await
}
