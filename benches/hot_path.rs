//! Micro-benchmarks of the pieces every request goes through (issue 6): the key lookup, the
//! path check and route template, the `_meta` scanner (per MB of response, and per call on the
//! fixture response), and the limiter's slot check. Criterion reports time per operation;
//! compare runs on the same machine.
//!
//!     cargo bench --bench hot_path

use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::Method;
use ofapi_gateway::config::{self, KeyHash};
use ofapi_gateway::layers::authenticate::bearer_token;
use ofapi_gateway::layers::meter::rewrite::NextPageRewriter;
use ofapi_gateway::layers::meter::scan::MetaScanner;
use ofapi_gateway::layers::route::{check_path, classify};
use ofapi_gateway::limiter::Limiter;
use ofapi_gateway::log_format::JsonLines;
use tracing_subscriber::fmt::format::JsonFields;

const PATH: &str = "/api/fansly/fansly_acct_123/tracking-links/845759434926862336";
const FIXTURE: &str = include_str!("../src/sandbox/fixtures/update-tracking-link.200.json");

fn config(clients: usize) -> config::Config {
    let mut toml = String::from(
        "[upstream]\napi_key_env = \"K\"\n[rate_limit]\nrequests_per_minute = 100000000\nheadroom = 1.0\n",
    );
    for i in 0..clients {
        let hash = hex_of(&KeyHash::of_key(&format!("ofgw_bench_key_{i}")).0);
        toml.push_str(&format!(
            "[[clients]]\nname = \"client-{i}\"\nkey_sha256 = \"{hash}\"\n"
        ));
    }
    config::parse_str(Path::new("bench.toml"), &toml, &|_| Some("k".into()))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("authenticate");
    for clients in [1, 100, 10_000] {
        let config = config(clients);
        let header = format!("Bearer ofgw_bench_key_{}", clients / 2);
        group.bench_with_input(
            BenchmarkId::new("parse+sha256+lookup", clients),
            &header,
            |b, header| {
                b.iter(|| {
                    let key = bearer_token(header.as_bytes()).unwrap_or_default();
                    config.clients.lookup(&KeyHash::of_key(key)).is_some()
                })
            },
        );
    }
    group.finish();
}

fn routing(c: &mut Criterion) {
    c.bench_function("route/check_path", |b| {
        b.iter(|| check_path(std::hint::black_box(PATH)))
    });
    c.bench_function("route/classify", |b| {
        b.iter(|| classify(&Method::PUT, std::hint::black_box(PATH)))
    });
}

fn meta_scanner(c: &mut Criterion) {
    // One MB of list data in front of the fixture's `_meta`, fed in 16 KiB chunks.
    let item = r#"{"id":"100000000000000003","label":"Twitter \"bio\" {x}","metadata":"{}","clicks":null},"#;
    let mut body = String::from(r#"{"data":["#);
    while body.len() < 1 << 20 {
        body.push_str(item);
    }
    body.push_str(r#"{}],"#);
    body.push_str(&FIXTURE[FIXTURE.find("\"_meta\"").unwrap_or(0)..]);
    let mut group = c.benchmark_group("meter");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("scan 1 MB", |b| {
        b.iter(|| {
            let mut scanner = MetaScanner::new();
            for chunk in body.as_bytes().chunks(16 * 1024) {
                scanner.feed(chunk);
            }
            scanner.found()
        })
    });
    group.finish();

    // One whole response as the proxy benchmark's upstream sends it: the fixture compacted
    // (678 bytes, `data` first), in one chunk. A PUT goes through the scanner alone, a GET
    // through the `next_page` rewriter (which drives the same tokenizer; built per response, as
    // the meter does).
    let compact = bytes::Bytes::from(compact(FIXTURE));
    let mut group = c.benchmark_group("meter");
    group.throughput(Throughput::Bytes(compact.len() as u64));
    group.bench_function(format!("scan fixture {} B", compact.len()), |b| {
        b.iter(|| {
            let mut scanner = MetaScanner::new();
            scanner.feed(std::hint::black_box(&compact));
            scanner.found()
        })
    });
    group.bench_function(format!("rewrite fixture {} B", compact.len()), |b| {
        b.iter(|| {
            let mut rewriter =
                NextPageRewriter::new("https://app.onlyfansapi.com", "http://127.0.0.1:8080");
            let out = rewriter.push(std::hint::black_box(compact.clone()));
            (out, rewriter.found())
        })
    });
    group.finish();
}

/// `json` without the whitespace between tokens (what `json.dumps(separators=(",", ":"))`
/// gives, keys in their order).
fn compact(json: &str) -> String {
    let (mut out, mut in_string, mut escaped) = (String::new(), false, false);
    for c in json.chars() {
        if in_string {
            (in_string, escaped) = (escaped || c != '"', !escaped && c == '\\');
        } else if c.is_ascii_whitespace() {
            continue;
        } else {
            in_string = c == '"';
        }
        out.push(c);
    }
    out
}

fn limiter(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let config = config(1);
    let limiter = runtime.block_on(async { Limiter::new(&config) });
    let client = Arc::clone(&config.clients.clients[0]);
    c.bench_function("limiter/acquire+finish", |b| {
        b.iter(|| {
            runtime.block_on(async {
                if let Ok(ticket) = limiter.acquire(&client).await {
                    limiter.finish(ticket);
                }
            })
        })
    });
}

/// The access line of one forwarded call (the meter's event, 14 fields) through the JSON
/// subscriber the binary installs (the hand-written `JsonLines`), and through
/// tracing-subscriber's own JSON formatter it replaced, into a sink.
fn access_log(c: &mut Criterion) {
    let builder = || {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(std::io::sink)
    };
    let json_lines = builder()
        .with_ansi(false)
        .fmt_fields(JsonFields::new())
        .event_format(JsonLines)
        .finish();
    tracing::subscriber::with_default(json_lines, || access_line(c, "log/access line (JSON)"));
    let builtin = builder()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .finish();
    tracing::subscriber::with_default(builtin, || {
        access_line(c, "log/access line (tracing-subscriber JSON)")
    });
}

fn access_line(c: &mut Criterion, name: &str) {
    let request_id = "a3f361c9204c56b22a915ba3409a669a".to_owned();
    let account = Some("fansly_acct_123".to_owned());
    c.bench_function(name, |b| {
        b.iter(|| {
            tracing::info!(
                request_id = %request_id,
                client = "crm-app",
                method = %Method::PUT,
                route = "PUT /api/fansly/{account}/tracking-links/{id}",
                account = account.as_deref(),
                status = 200u16,
                credits_used = Some(1u64),
                credit_balance = Some(10_055_796u64),
                cached = Some(false),
                upstream_ms = Some(3u64),
                total_ms = 4u64,
                outcome = "complete",
                bytes = 676u64,
                "request"
            )
        })
    });
}

criterion_group!(
    benches,
    key_lookup,
    routing,
    meta_scanner,
    limiter,
    access_log
);
criterion_main!(benches);
