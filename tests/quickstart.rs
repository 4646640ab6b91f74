//! The README's quickstart, in process: `config/quickstart.toml` (listeners moved to free ports)
//! runs the gateway in front of the in-process sandbox, and the printed curl works.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use support::*;

const DEMO_KEY: &str = "ofgw_demo_quickstart_only_never_use_in_production";

async fn start_quickstart() -> TestGateway {
    let gateway = TestGateway::from_file(Path::new("config/quickstart.toml")).await;
    assert_eq!(
        gateway.demo_client_key().as_deref(),
        Some(DEMO_KEY),
        "the README's curl uses this key"
    );
    gateway
}

async fn put(gateway: &TestGateway, key: &str, body: &'static str) -> (u16, serde_json::Value) {
    let url = gateway.url("/api/fansly/fansly_acct_demo/tracking-links/100000000000000003");
    let resp = HttpClient::http1().call("PUT", &url, key, body).await;
    (resp.status.as_u16(), resp.json())
}

#[tokio::test]
async fn the_readme_curl_updates_a_tracking_link_through_the_quickstart_gateway() {
    bounded(30, async {
        let gateway = start_quickstart().await;
        let body = r#"{"label": "Twitter bio (updated)", "description": "Updated description."}"#;
        let (status, first) = put(&gateway, DEMO_KEY, body).await;
        assert_eq!(status, 200, "{first}");
        assert_eq!(first["data"]["label"], "Twitter bio (updated)");
        assert_eq!(first["data"]["description"], "Updated description.");
        assert_eq!(first["_meta"]["_credits"]["used"], 1);

        let (status, second) = put(&gateway, DEMO_KEY, body).await;
        assert_eq!(status, 200);
        let balance = |v: &serde_json::Value| v["_meta"]["_credits"]["balance"].as_u64().unwrap();
        assert_eq!(
            balance(&second),
            balance(&first) - 1,
            "the sandbox charges each update"
        );

        let (status, refused) = put(&gateway, "ofgw_not_the_demo_key", body).await;
        assert_eq!(status, 401);
        assert_eq!(refused["code"], "unauthenticated");
        gateway.shutdown().await;
    })
    .await
}
