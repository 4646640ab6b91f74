//! Bodies stream through the gateway both ways (SPEC §5, §7: "never buffering a whole
//! response"): memory stays flat while tens of megabytes pass.

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use http_body_util::BodyExt;
use support::process;
use support::*;

/// The tests here measure this process's memory; they must not overlap.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_upstream_response_streams_through_without_being_buffered() {
    let _serial = SERIAL.lock().await;
    bounded(120, async {
        let total = 64 * MB;
        let mock = MockUpstream::start(move |_| Reply::stream(total)).await;
        let gw = TestGateway::start(&mock.base_url(), Options::default()).await;
        let client = HttpClient::http1();

        // Warm up the pools and allocator so the baseline includes them.
        let resp = client.get(&gw.url("/api/whoami"), Some(ALPHA_KEY)).await;
        assert_eq!(resp.status, 200);
        let baseline = process::own_rss();

        let req = request(
            "GET",
            &gw.url("/api/fansly/fansly_acct_123/media/1/download"),
        )
        .header("authorization", bearer(ALPHA_KEY))
        .body(empty_body())
        .unwrap();
        let resp = client.send_streaming(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut received: u64 = 0;
        let mut peak = baseline;
        let mut next_sample = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("body frame");
            if let Some(data) = frame.data_ref() {
                assert!(data.iter().all(|b| *b == b'x'), "corrupted chunk");
                received += data.len() as u64;
            }
            if received >= next_sample {
                peak = peak.max(process::own_rss());
                next_sample += MB;
            }
        }
        peak = peak.max(process::own_rss());
        assert_eq!(received, total);
        let growth = peak.saturating_sub(baseline);
        assert!(
            growth < 25 * MB,
            "RSS grew by {} MB while {} MB streamed through",
            growth / MB,
            total / MB
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_chunked_upload_streams_to_the_upstream_intact() {
    let _serial = SERIAL.lock().await;
    bounded(120, async {
        let total = 24 * MB;
        let mock = MockUpstream::start(|_| Reply::json(201, r#"{"data":{"id":"m1"}}"#)).await;
        let gw = TestGateway::start(
            &mock.base_url(),
            Options {
                max_body_bytes: 32 * MB,
                ..Options::default()
            },
        )
        .await;
        let req = request("POST", &gw.url("/api/fansly/fansly_acct_123/media/upload"))
            .header("authorization", bearer(ALPHA_KEY))
            .header("content-type", "application/octet-stream")
            .body(counting_body(total, 32 * 1024))
            .unwrap();
        let resp = HttpClient::http1().send(req).await.unwrap();
        assert_eq!(resp.status, 201, "{}", resp.text());
        assert_eq!(resp.text(), r#"{"data":{"id":"m1"}}"#);

        let received = mock.received();
        assert_eq!(received.len(), 1);
        let got = &received[0];
        assert!(got.body_complete);
        assert_eq!(got.body.len() as u64, total);
        assert_eq!(sha256_hex(&got.body), counting_sha256(total));
        assert_eq!(got.header("content-type"), Some("application/octet-stream"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_upload_from_an_h2_client_streams_to_the_upstream_intact() {
    let _serial = SERIAL.lock().await;
    bounded(120, async {
        let total = 20 * MB + 12345;
        let mock = MockUpstream::start(|_| Reply::json(201, "{}")).await;
        let gw = TestGateway::start(
            &mock.base_url(),
            Options {
                max_body_bytes: 32 * MB,
                ..Options::default()
            },
        )
        .await;
        let req = request("POST", &gw.url("/api/fansly/fansly_acct_123/media/upload"))
            .header("authorization", bearer(ALPHA_KEY))
            .body(counting_body(total, 16 * 1024))
            .unwrap();
        let resp = HttpClient::h2c().send(req).await.unwrap();
        assert_eq!(resp.status, 201, "{}", resp.text());
        let got = &mock.received()[0];
        assert!(got.body_complete);
        assert_eq!(got.body.len() as u64, total);
        assert_eq!(sha256_hex(&got.body), counting_sha256(total));
    })
    .await
}
