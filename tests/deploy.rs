#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The deployment artifacts under `deploy/` agree with the gateway itself:
//! - every metric the Grafana dashboards and the Prometheus alerts use is one the gateway exports;
//! - the dashboards are valid JSON whose panels all have a title and the provisioned datasource;
//! - the gateway configs shipped for compose, systemd and Kubernetes pass the gateway's own
//!   validation, listen where their platform needs, and drain before their platform's SIGKILL.
//!
//! Syntax of the YAML, the alert rules and the systemd unit is checked by `deploy/validate.sh`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ofapi_gateway::config::{self, Config};
use ofapi_gateway::metrics::Metrics;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(relative: &str) -> String {
    let path = deploy_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = deploy_dir().join("grafana/dashboards");
    let mut found: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no dashboards in {}", dir.display());
    found
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
            (path.display().to_string(), json)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Metric names

/// The metric families of SPEC §7 and the deployment brief.
const DOCUMENTED: &[&str] = &[
    "ofapi_gateway_requests_total",
    "ofapi_gateway_credits_used_total",
    "ofapi_gateway_credits_unknown_total",
    "ofapi_gateway_credit_balance",
    "ofapi_gateway_upstream_rate_limit",
    "ofapi_gateway_rate_limited_total",
    "ofapi_gateway_unattributed_credits_total",
    "ofapi_gateway_budget_spent_credits",
    "ofapi_gateway_budget_remaining_credits",
    "ofapi_gateway_ledger_dropped_rows_total",
    "ofapi_gateway_request_duration_seconds_bucket",
    "ofapi_gateway_request_duration_seconds_sum",
    "ofapi_gateway_request_duration_seconds_count",
];

/// Every identifier in `text` that starts with `ofapi_gateway_` (a simple tokenizer: a metric
/// name is a run of `[A-Za-z0-9_:]`).
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut token = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            token.push(c);
        } else {
            if token.starts_with("ofapi_gateway_") {
                names.insert(token.clone());
            }
            token.clear();
        }
    }
    names
}

/// The PromQL of a dashboard: panel and target `expr`s and templating queries.
fn dashboard_queries(node: &Value, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_queries(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| dashboard_queries(item, out)),
        _ => {}
    }
}

/// Sample names a scrape of `exposition` yields. prometheus-client writes a counter's family as
/// `# TYPE name counter` (without `_total`) and its samples as `name_total`; a histogram's as
/// `name_bucket`, `name_sum`, `name_count`. Both the `# TYPE` lines and the samples are used, so
/// a family that has no sample yet still counts.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_owned());
            match kind {
                "counter" if !name.ends_with("_total") => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                "summary" => {
                    for suffix in ["_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {}
            }
        } else if !line.is_empty() && !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// A gateway's metrics with every family fed once.
fn rendered_metrics() -> String {
    let metrics = Metrics::new();
    let (client, route) = (
        "crm-app".into(),
        "PUT /api/fansly/{account}/tracking-links/{id}".into(),
    );
    metrics.request(&client, &route, 200, Duration::from_millis(120));
    metrics.request(&client, &route, 502, Duration::from_millis(40));
    metrics.credits(&client, &route, 5);
    metrics.credits_unknown(&client, &route);
    metrics.balance(123_456);
    metrics.upstream_rate_limit(Some(1000), Some(900));
    metrics.rate_limited("crm-app", "client");
    metrics.rate_limited("crm-app", "upstream");
    metrics.unattributed_credits(3);
    metrics.budget("crm-app", 100, Some(900));
    metrics.ledger_dropped(2);
    let text = metrics.render();
    assert!(
        !text.trim().is_empty(),
        "Metrics::render() returned nothing (is src/metrics.rs still the stub?)"
    );
    text
}

#[test]
fn dashboards_and_alerts_use_only_exported_metrics() {
    let mut used: Vec<(String, String)> = Vec::new(); // (metric, where)
    for (path, dashboard) in dashboards() {
        let mut queries = Vec::new();
        dashboard_queries(&dashboard, &mut queries);
        assert!(!queries.is_empty(), "{path}: no PromQL found");
        for name in metric_names_in(&queries.join("\n")) {
            used.push((name, path.clone()));
        }
    }
    for rules in ["prometheus/alerts.yml", "prometheus/alerts.test.yml"] {
        for name in metric_names_in(&read(rules)) {
            used.push((name, format!("deploy/{rules}")));
        }
    }
    assert!(
        used.len() >= 10,
        "suspiciously few metric names found: {used:?}"
    );

    let exposition = rendered_metrics();
    let exported = exported_names(&exposition);
    let missing: Vec<String> = used
        .iter()
        .filter(|(name, _)| !exported.contains(name))
        .map(|(name, place)| format!("{name} (used in {place})"))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics used by deploy/ but not exported by the gateway:\n  {}\n\nexposition:\n{exposition}",
        missing.join("\n  ")
    );

    let undocumented: Vec<&String> = used
        .iter()
        .map(|(name, _)| name)
        .filter(|name| !DOCUMENTED.contains(&name.as_str()))
        .collect();
    assert!(
        undocumented.is_empty(),
        "deploy/ uses metrics outside the documented set: {undocumented:?}"
    );
}

#[test]
fn the_gateway_exports_every_documented_metric() {
    let exposition = rendered_metrics();
    let exported = exported_names(&exposition);
    let missing: Vec<&&str> = DOCUMENTED
        .iter()
        .filter(|name| !exported.contains(**name))
        .collect();
    assert!(
        missing.is_empty(),
        "documented metrics missing from the exposition: {missing:?}\n\nexposition:\n{exposition}"
    );
}

#[test]
fn the_tokenizer_and_exposition_parser_work() {
    let names = metric_names_in(
        r#"histogram_quantile(0.99, sum by (route, le) (rate(ofapi_gateway_request_duration_seconds_bucket[5m])))
           / ofapi_gateway_credit_balance{job="ofapi-gateway"} xofapi_gateway_nope"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "ofapi_gateway_credit_balance",
            "ofapi_gateway_request_duration_seconds_bucket"
        ]
    );
    let exported = exported_names(
        "# HELP ofapi_gateway_requests Requests.\n\
         # TYPE ofapi_gateway_requests counter\n\
         ofapi_gateway_requests_total{client=\"a\",route=\"r\",status=\"200\"} 1\n\
         # TYPE ofapi_gateway_request_duration_seconds histogram\n\
         # TYPE ofapi_gateway_credit_balance gauge\n\
         ofapi_gateway_credit_balance 5\n\
         # EOF\n",
    );
    for name in [
        "ofapi_gateway_requests_total",
        "ofapi_gateway_request_duration_seconds_bucket",
        "ofapi_gateway_request_duration_seconds_count",
        "ofapi_gateway_credit_balance",
    ] {
        assert!(exported.contains(name), "{name} not in {exported:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Dashboards

/// The uid of the Prometheus datasource that deploy/grafana/provisioning defines.
fn provisioned_datasource_uid() -> String {
    read("grafana/provisioning/datasources/prometheus.yml")
        .lines()
        .find_map(|line| line.trim().strip_prefix("uid:"))
        .map(|uid| uid.trim().trim_matches(['"', '\'']).to_owned())
        .expect("the provisioned datasource has a uid")
}

fn all_panels(panels: &[Value], out: &mut Vec<Value>) {
    for panel in panels {
        out.push(panel.clone());
        if let Some(nested) = panel.get("panels").and_then(Value::as_array) {
            all_panels(nested, out);
        }
    }
}

#[test]
fn dashboards_are_valid_and_every_panel_has_a_title_and_the_provisioned_datasource() {
    let uid = provisioned_datasource_uid();
    for (path, dashboard) in dashboards() {
        let schema = dashboard["schemaVersion"].as_u64().unwrap_or(0);
        assert!(schema >= 36, "{path}: schemaVersion {schema} < 36");
        assert!(
            dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()),
            "{path}: no dashboard uid"
        );
        let mut panels = Vec::new();
        all_panels(
            dashboard["panels"].as_array().expect("a panels array"),
            &mut panels,
        );
        assert!(panels.len() >= 10, "{path}: only {} panels", panels.len());
        let mut ids = BTreeSet::new();
        for panel in &panels {
            let title = panel["title"].as_str().unwrap_or("");
            assert!(
                !title.trim().is_empty(),
                "{path}: a panel has no title: {panel}"
            );
            assert!(
                ids.insert(panel["id"].as_u64().expect("a numeric panel id")),
                "{path}: duplicate panel id in {title:?}"
            );
            assert_eq!(
                panel["datasource"]["uid"].as_str(),
                Some(uid.as_str()),
                "{path}: panel {title:?} must use the provisioned datasource uid {uid:?}"
            );
            for target in panel["targets"].as_array().into_iter().flatten() {
                assert!(
                    target["expr"]
                        .as_str()
                        .is_some_and(|e| !e.trim().is_empty()),
                    "{path}: panel {title:?} has a target without expr"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Gateway configs shipped under deploy/

const LEDGER: &str = "/var/lib/ofapi-gateway/ledger.sqlite";

/// Validates a shipped config with the gateway's own rules: secrets from a fake environment,
/// and `api_key_file` (a path that exists only on the target platform) pointed at a temp file.
fn validate_shipped(name: &str, text: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("onlyfansapi_api_key");
    std::fs::write(&key_file, "ofapi_test_upstream_key\n").unwrap();
    let text: String = text
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("api_key_file") {
                format!("api_key_file = {:?}", key_file.display().to_string())
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let env = |var: &str| match var {
        "OFAPI_GATEWAY_ADMIN_TOKEN" => Some("test-admin-token".to_owned()),
        "ONLYFANSAPI_API_KEY" => Some("ofapi_test_upstream_key".to_owned()),
        _ => None,
    };
    let config = config::parse_str(Path::new(name), &text, &env)
        .unwrap_or_else(|e| panic!("{name} is refused by the gateway: {e}"));
    assert!(
        config.admin.token.is_some(),
        "{name}: /metrics must be protected by admin.token_env"
    );
    assert_eq!(config.ledger.path, Path::new(LEDGER), "{name}: ledger.path");
    assert!(
        config.sandbox.is_none(),
        "{name}: no [sandbox] in a deployment"
    );
    config
}

fn assert_all_interfaces(name: &str, addr: SocketAddr, port: u16) {
    assert!(
        addr.ip().is_unspecified() && addr.port() == port,
        "{name}: must listen on 0.0.0.0:{port} in a container, not {addr}"
    );
}

/// The gateway.toml block embedded in deploy/k8s/configmap.yaml.
fn configmap_gateway_toml() -> String {
    let yaml = read("k8s/configmap.yaml");
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "gateway.toml: |");
    let header = lines
        .next()
        .expect("configmap.yaml has data.gateway.toml: |");
    let indent = header.len() - header.trim_start().len() + 2;
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The number after `key` on the first line of `text` that starts with it (like `45s` or `45`).
fn seconds_after(text: &str, key: &str) -> u64 {
    let value = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .unwrap_or_else(|| panic!("{key} not found"));
    let digits: String = value
        .trim()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{key}: {value:?}"))
}

fn assert_drains_before_kill(name: &str, config: &Config, kill_after_secs: u64) {
    let grace = config.server.shutdown_grace;
    assert!(
        grace + Duration::from_secs(5) <= Duration::from_secs(kill_after_secs),
        "{name}: shutdown_grace {grace:?} leaves no room before SIGKILL at {kill_after_secs}s"
    );
}

#[test]
fn compose_config_is_valid_and_fits_the_compose_file() {
    let config = validate_shipped("deploy/compose/gateway.toml", &read("compose/gateway.toml"));
    assert_all_interfaces("deploy/compose/gateway.toml", config.server.listen, 8080);
    assert_all_interfaces("deploy/compose/gateway.toml", config.admin.listen, 8081);
    let compose = read("compose.yaml");
    assert_drains_before_kill(
        "deploy/compose.yaml",
        &config,
        seconds_after(&compose, "stop_grace_period:"),
    );
    assert!(
        !compose.contains("ONLYFANSAPI_API_KEY="),
        "the upstream key must not be in compose.yaml"
    );
}

#[test]
fn kubernetes_config_is_valid_and_fits_the_deployment() {
    let config = validate_shipped("deploy/k8s/configmap.yaml", &configmap_gateway_toml());
    assert_all_interfaces("deploy/k8s/configmap.yaml", config.server.listen, 8080);
    assert_all_interfaces("deploy/k8s/configmap.yaml", config.admin.listen, 8081);
    let deployment = read("k8s/deployment.yaml");
    assert_drains_before_kill(
        "deploy/k8s/deployment.yaml",
        &config,
        seconds_after(&deployment, "terminationGracePeriodSeconds:"),
    );
    assert_eq!(seconds_after(&deployment, "replicas:"), 1, "one replica");
    assert!(deployment.contains("type: Recreate"), "strategy Recreate");
}

#[test]
fn systemd_config_is_valid_and_fits_the_unit() {
    let config = validate_shipped("deploy/systemd/gateway.toml", &read("systemd/gateway.toml"));
    let unit = read("systemd/ofapi-gateway.service");
    assert_drains_before_kill(
        "deploy/systemd/ofapi-gateway.service",
        &config,
        seconds_after(&unit, "TimeoutStopSec="),
    );
    // The key file the config names is where LoadCredential= puts it.
    assert!(read("systemd/gateway.toml")
        .contains("\"/run/credentials/ofapi-gateway.service/onlyfansapi_api_key\""));
    assert!(unit.contains("LoadCredential=onlyfansapi_api_key:"));
    assert!(unit.contains("StateDirectory=ofapi-gateway"));
}
