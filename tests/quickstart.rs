//! The README's quickstart, in process: `config/quickstart.toml` (listeners moved to free ports)
//! runs the gateway in front of the in-process sandbox, and the printed curl works.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use http_body_util::BodyExt;
use ofapi_gateway::config;
use ofapi_gateway::server::Gateway;
use support::*;

const DEMO_KEY: &str = "ofgw_demo_quickstart_only_never_use_in_production";

async fn start_quickstart() -> Gateway {
    let mut config = config::load(Path::new("config/quickstart.toml")).expect("quickstart.toml");
    let any_port = "127.0.0.1:0".parse().unwrap();
    config.server.listen = any_port;
    config.admin.listen = any_port;
    config.sandbox.as_mut().expect("[sandbox]").listen = any_port;
    assert_eq!(
        config.sandbox.as_ref().unwrap().demo_client_key.as_deref(),
        Some(DEMO_KEY),
        "the README's curl uses this key"
    );
    Gateway::start(config).await.expect("start")
}

async fn put(gateway: &Gateway, key: &str, body: &'static str) -> (u16, serde_json::Value) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::put(format!(
        "http://{}/api/fansly/fansly_acct_demo/tracking-links/100000000000000003",
        gateway.client_addr
    ))
    .header("authorization", format!("Bearer {key}"))
    .header("content-type", "application/json")
    .body(http_body_util::Full::new(bytes::Bytes::from_static(
        body.as_bytes(),
    )))
    .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
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
