//! The tests' HTTP clients (hyper-util's pooled client: HTTP/1.1, h2c, HTTPS with either; the
//! `h2` crate's, for control over HTTP/2 frames), the whole response they read, and the check of
//! a SPEC §5 gateway error.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::bodies::{empty_body, full_body, BoxError, TestBody};
use super::tls::{client_config, TestCa};

/// A response read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
    /// Headers and body as one lossy string, for "appears nowhere" checks.
    pub fn everything(&self) -> String {
        let mut all = String::new();
        for (name, value) in &self.headers {
            all.push_str(name.as_str());
            all.push_str(": ");
            all.push_str(&String::from_utf8_lossy(value.as_bytes()));
            all.push('\n');
        }
        all.push_str(&self.text());
        all
    }
}

/// Asserts a SPEC §5 gateway error: status, JSON body with `error`, `code` and a `request_id`
/// equal to the `x-request-id` header. Returns the body.
#[track_caller]
pub fn assert_gateway_error(resp: &Resp, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(
        resp.status.as_u16(),
        status,
        "unexpected status; body: {}",
        resp.text()
    );
    let content_type = resp.header("content-type").unwrap_or("");
    assert!(
        content_type.starts_with("application/json"),
        "content-type {content_type:?}"
    );
    let body = resp.json();
    assert_eq!(body["code"], code, "body: {body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "error sentence missing: {body}"
    );
    let id = resp
        .header("x-request-id")
        .expect("x-request-id on every response");
    assert!(!id.is_empty());
    assert_eq!(body["request_id"], id, "body: {body}");
    body
}

/// `Authorization: Bearer <key>`.
pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// A request builder for `method url`.
pub fn request(method: &str, url: &str) -> http::request::Builder {
    Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("method"))
        .uri(url)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    Http1,
    H2,
}

/// A pooled hyper-util client; plain HTTP/1.1, h2c (prior knowledge), or HTTPS trusting a CA.
#[derive(Clone)]
pub struct HttpClient {
    client: LegacyClient<HttpsConnector<HttpConnector>, TestBody>,
}

impl HttpClient {
    pub fn http1() -> Self {
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(client_config(&[]))
            .https_or_http()
            .enable_http1()
            .build();
        Self {
            client: LegacyClient::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub fn h2c() -> Self {
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(client_config(&[]))
            .https_or_http()
            .enable_http2()
            .build();
        Self {
            client: LegacyClient::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector),
        }
    }

    /// HTTPS only, trusting `ca`, offering only `alpn`.
    pub fn https(ca: &TestCa, alpn: Alpn) -> Self {
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(client_config(std::slice::from_ref(&ca.ca_der)))
            .https_only();
        let connector = match alpn {
            Alpn::Http1 => builder.enable_http1().build(),
            Alpn::H2 => builder.enable_http2().build(),
        };
        Self {
            client: LegacyClient::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Sends `req` and returns the response with its body unread.
    pub async fn send_streaming(
        &self,
        req: Request<TestBody>,
    ) -> Result<Response<Incoming>, BoxError> {
        Ok(self.client.request(req).await?)
    }

    /// Sends `req` and reads the whole response.
    pub async fn send(&self, req: Request<TestBody>) -> Result<Resp, BoxError> {
        let response = self.client.request(req).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Resp {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }

    /// `GET url`, with `Authorization: Bearer key` when given.
    pub async fn get(&self, url: &str, key: Option<&str>) -> Resp {
        let mut builder = request("GET", url);
        if let Some(key) = key {
            builder = builder.header("authorization", bearer(key));
        }
        self.send(builder.body(empty_body()).expect("request"))
            .await
            .expect("GET")
    }

    /// `method url` with `key` and `body` (JSON content type when non-empty).
    pub async fn call(&self, method: &str, url: &str, key: &str, body: &str) -> Resp {
        let mut builder = request(method, url).header("authorization", bearer(key));
        if !body.is_empty() {
            builder = builder.header("content-type", "application/json");
        }
        self.send(builder.body(full_body(body.to_owned())).expect("request"))
            .await
            .expect("request")
    }
}

/// An HTTP/2 connection (prior knowledge) from the `h2` crate, set up by `builder`, for tests
/// that control its frames and flow-control windows; its connection task runs in the background.
pub async fn h2_connect(
    addr: SocketAddr,
    builder: &h2::client::Builder,
) -> (
    h2::client::SendRequest<Bytes>,
    JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (send, connection) = builder.handshake(tcp).await.expect("h2 handshake");
    (send, tokio::spawn(connection))
}
