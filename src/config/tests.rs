//! Config loading: the full file, the defaults, and every refusal naming its key.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::*;

const SECRET: &str = "test-TopSecretUpstreamKey-42";
const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn file() -> &'static Path {
    Path::new("test.toml")
}

/// The environment most tests run with: only the default upstream key variable.
fn default_env(name: &str) -> Option<String> {
    (name == "ONLYFANSAPI_API_KEY").then(|| SECRET.to_owned())
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_str(file(), text, &default_env)
}

fn parse_ok(text: &str) -> Config {
    match parse(text) {
        Ok(c) => c,
        Err(e) => panic!("refused: {e}"),
    }
}

/// Asserts `text` is refused with an error keyed `key`, and returns the one-line message.
#[track_caller]
fn refused(text: &str, key: &str) -> String {
    refused_with(text, key, &default_env)
}

#[track_caller]
fn refused_with(text: &str, key: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    let err = match parse_str(file(), text, env) {
        Ok(_) => panic!("accepted, expected an error at {key}:\n{text}"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("test.toml: {key}: ")),
        "expected key {key}, got: {msg}"
    );
    assert!(!msg.contains('\n'), "not one line: {msg:?}");
    assert!(!msg.contains(SECRET), "secret leaked: {msg}");
    assert_eq!(err.key, key);
    msg
}

fn temp_file(content: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(content).unwrap();
    f.flush().unwrap();
    f
}

fn path_str(f: &tempfile::NamedTempFile) -> String {
    f.path().to_str().unwrap().to_owned()
}

/// A self-signed cert and its key as PEM files.
fn cert_and_key() -> (tempfile::NamedTempFile, tempfile::NamedTempFile) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    (
        temp_file(ck.cert.pem().as_bytes()),
        temp_file(ck.signing_key.serialize_pem().as_bytes()),
    )
}

fn client(name: &str, hash: &str) -> String {
    format!("[[clients]]\nname = \"{name}\"\nkey_sha256 = \"{hash}\"\n")
}

#[test]
fn full_file_with_every_key_parses_with_the_right_values() {
    let (cert, key) = cert_and_key();
    let demo_key = "ofgw_demo_key";
    let demo_hash = hex::encode(KeyHash::of_key(demo_key).0);
    let text = format!(
        r#"
[server]
listen = "0.0.0.0:9443"
tls_cert = "{cert}"
tls_key = "{key}"
public_url = "https://gateway.example.com/"
max_body_bytes = 2048
request_timeout = "45s"
max_concurrent_requests = 64
shutdown_grace = "10s"
header_read_timeout = "5s"
max_connections = 500
send_timeout = "20s"

[admin]
listen = "127.0.0.1:9444"
token_env = "ADMIN_TOKEN"

[upstream]
base_url = "https://upstream.example.com/prefix/"
api_key_env = "MY_UPSTREAM_KEY"
ca_file = "{cert}"
connect_timeout = "3s"
timeout = "2m"
forwarded_headers = "replace"

[rate_limit]
requests_per_minute = 5000
headroom = 0.5
max_wait = "500ms"

[ledger]
path = "/var/lib/gw/ledger.sqlite"
retention = "30d"

[credits]
low_balance_warning = 123

[sandbox]
listen = "127.0.0.1:9445"
demo_client_key = "{demo_key}"

[[clients]]
name = "crm-app"
key_sha256 = "{demo_hash}"
disabled = false
requests_per_minute = 600
credit_budget = 50000
budget_period = "day"
allow = ["PUT /api/fansly/*/tracking-links/*", "GET /api/fansly/**"]
accounts = ["fansly_acct_123"]

[[clients]]
name = "ops_2"
key_sha256 = ["{H1}", "{H2}"]
disabled = true
"#,
        cert = path_str(&cert),
        key = path_str(&key),
    );
    let env = |name: &str| match name {
        "MY_UPSTREAM_KEY" => Some(format!("  {SECRET}\n")),
        "ADMIN_TOKEN" => Some("admin-token".to_owned()),
        _ => None,
    };
    let c = parse_str(file(), &text, &env).unwrap();

    assert_eq!(c.source, PathBuf::from("test.toml"));
    assert_eq!(c.server.listen, "0.0.0.0:9443".parse().unwrap());
    let tls = c.server.tls.as_ref().unwrap();
    assert_eq!(tls.cert, cert.path());
    assert_eq!(tls.key, key.path());
    assert_eq!(
        tls.server_config.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    assert_eq!(
        c.server.public_url.as_deref(),
        Some("https://gateway.example.com")
    );
    assert_eq!(c.server.max_body_bytes, 2048);
    assert_eq!(c.server.request_timeout, Duration::from_secs(45));
    assert_eq!(c.server.max_concurrent_requests, 64);
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(10));
    assert_eq!(c.server.header_read_timeout, Duration::from_secs(5));
    assert_eq!(c.server.max_connections, 500);
    assert_eq!(c.server.send_timeout, Duration::from_secs(20));

    assert_eq!(c.admin.listen, "127.0.0.1:9444".parse().unwrap());
    assert_eq!(c.admin.token.as_ref().unwrap().expose(), "admin-token");

    assert_eq!(
        c.upstream.base_url.to_string(),
        "https://upstream.example.com/prefix"
    );
    assert_eq!(c.upstream.path_prefix(), "/prefix");
    assert_eq!(c.upstream.api_key.expose(), SECRET);
    assert_eq!(c.upstream.api_key_source, "env MY_UPSTREAM_KEY");
    assert_eq!(c.upstream.extra_roots.len(), 1);
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.upstream.timeout, Duration::from_secs(120));
    assert_eq!(c.upstream.forwarded_headers, ForwardedHeaders::Replace);

    assert_eq!(c.rate_limit.requests_per_minute.get(), 5000);
    assert_eq!(c.rate_limit.headroom, 0.5);
    assert_eq!(c.rate_limit.max_wait, Duration::from_millis(500));

    assert_eq!(c.ledger.path, PathBuf::from("/var/lib/gw/ledger.sqlite"));
    assert_eq!(c.ledger.retention, Duration::from_secs(30 * 86_400));
    assert_eq!(c.credits.low_balance_warning, 123);

    let sb = c.sandbox.as_ref().unwrap();
    assert_eq!(sb.listen, "127.0.0.1:9445".parse().unwrap());
    assert_eq!(sb.demo_client_key.as_deref(), Some(demo_key));

    let clients = &c.clients.clients;
    assert_eq!(clients.len(), 2);
    let crm = &clients[0];
    assert_eq!(crm.id.as_str(), "crm-app");
    assert_eq!(crm.key_hashes, vec![KeyHash::of_key(demo_key)]);
    assert!(!crm.disabled);
    assert_eq!(crm.requests_per_minute.map(NonZeroU32::get), Some(600));
    assert_eq!(crm.credit_budget, Some(50000));
    assert_eq!(crm.budget_period, BudgetPeriod::Day);
    let allow = crm.allow.as_ref().unwrap();
    assert_eq!(
        allow,
        &vec![
            RoutePattern::parse("PUT /api/fansly/*/tracking-links/*").unwrap(),
            RoutePattern::parse("GET /api/fansly/**").unwrap(),
        ]
    );
    assert_eq!(crm.accounts, Some(vec!["fansly_acct_123".to_owned()]));
    let ops = &clients[1];
    assert_eq!(ops.id.as_str(), "ops_2");
    assert!(ops.disabled);
    assert_eq!(ops.key_hashes.len(), 2);
    assert_eq!(ops.requests_per_minute, None);
    assert_eq!(ops.credit_budget, None);
    assert_eq!(ops.budget_period, BudgetPeriod::Month);
    assert_eq!(ops.allow, None);
    assert_eq!(ops.accounts, None);
    assert_eq!(
        c.clients
            .lookup(&KeyHash::of_key(demo_key))
            .map(|c| c.id.as_str()),
        Some("crm-app")
    );
}

#[test]
fn an_empty_file_gets_the_spec_defaults() {
    let c = parse_ok("");
    assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert!(c.server.tls.is_none());
    assert_eq!(
        c.server.public_url, None,
        "derived from the bound listener at start"
    );
    assert_eq!(c.server.max_body_bytes, 10_485_760);
    assert_eq!(c.server.request_timeout, Duration::from_secs(60));
    assert_eq!(c.server.max_concurrent_requests, 1024);
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.server.header_read_timeout, Duration::from_secs(30));
    assert_eq!(c.server.max_connections, 10_000);
    assert_eq!(c.server.send_timeout, Duration::from_secs(60));
    assert_eq!(c.admin.listen, "127.0.0.1:8081".parse().unwrap());
    assert!(c.admin.token.is_none());
    assert_eq!(c.upstream.base_url.host(), Some("app.onlyfansapi.com"));
    assert_eq!(c.upstream.base_url.scheme_str(), Some("https"));
    assert_eq!(c.upstream.path_prefix(), "");
    assert_eq!(c.upstream.api_key.expose(), SECRET);
    assert_eq!(c.upstream.api_key_source, "env ONLYFANSAPI_API_KEY");
    assert!(c.upstream.extra_roots.is_empty());
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.upstream.timeout, Duration::from_secs(60));
    assert_eq!(c.upstream.forwarded_headers, ForwardedHeaders::Strip);
    assert_eq!(c.rate_limit.requests_per_minute.get(), 1000);
    assert_eq!(c.rate_limit.headroom, 0.9);
    assert_eq!(c.rate_limit.max_wait, Duration::from_secs(2));
    assert_eq!(c.ledger.path, PathBuf::from("data/ledger.sqlite"));
    assert_eq!(c.ledger.retention, Duration::from_secs(90 * 86_400));
    assert_eq!(c.credits.low_balance_warning, 10_000);
    assert!(c.sandbox.is_none());
    assert!(c.clients.clients.is_empty(), "zero clients is valid");
}

#[test]
fn public_url_left_out_stays_unset_with_tls_too() {
    let (cert, key) = cert_and_key();
    let c = parse_ok(&format!(
        "[server]\nlisten = \"[::1]:8443\"\ntls_cert = {:?}\ntls_key = {:?}\n",
        path_str(&cert),
        path_str(&key)
    ));
    assert_eq!(c.server.public_url, None);
}

#[test]
fn a_client_gets_its_defaults() {
    let c = parse_ok(&client("a", H1));
    let a = &c.clients.clients[0];
    assert!(!a.disabled);
    assert_eq!(a.budget_period, BudgetPeriod::Month);
    assert_eq!(
        (
            a.requests_per_minute,
            a.credit_budget,
            &a.allow,
            &a.accounts
        ),
        (None, None, &None, &None)
    );
}

#[test]
fn max_wait_may_be_zero() {
    let c = parse_ok("[rate_limit]\nmax_wait = \"0s\"");
    assert_eq!(c.rate_limit.max_wait, Duration::ZERO);
}

#[test]
fn unknown_keys_are_refused_with_their_dotted_path() {
    let msg = refused("[server]\nlistn = \"127.0.0.1:1\"", "server.listn");
    assert!(msg.contains("unknown field `listn`"), "{msg}");
    refused("[serverr]\nlisten = \"127.0.0.1:1\"", "serverr");
    refused("api_key = \"x\"", "api_key");
    refused(
        "[sandbox]\nlisten = \"127.0.0.1:1\"\nport = 1",
        "sandbox.port",
    );
    let msg = refused(
        &format!("{}{}colour = \"red\"\n", client("a", H1), client("b", H2)),
        "clients[1].colour",
    );
    assert!(msg.contains("unknown field"), "{msg}");
}

#[test]
fn wrong_types_are_refused_with_their_dotted_path() {
    let msg = refused(
        &format!(
            "{}{}requests_per_minute = \"many\"\n",
            client("a", H1),
            client("b", H2)
        ),
        "clients[1].requests_per_minute",
    );
    assert!(msg.contains("invalid type"), "{msg}");
    refused("[server]\nmax_body_bytes = -1", "server.max_body_bytes");
    refused("[server]\nrequest_timeout = 60", "server.request_timeout");
    refused("[rate_limit]\nheadroom = \"lots\"", "rate_limit.headroom");
    refused(
        "[[clients]]\nname = \"a\"\nkey_sha256 = 5",
        "clients[0].key_sha256",
    );
    refused(
        &format!("[[clients]]\nname = \"a\"\nkey_sha256 = [\"{H1}\", 5]"),
        "clients[0].key_sha256[1]",
    );
    let msg = refused(
        &format!("{}budget_period = \"week\"", client("a", H1)),
        "clients[0].budget_period",
    );
    assert!(msg.contains("`day`") && msg.contains("`month`"), "{msg}");
    let msg = refused(
        "[upstream]\nforwarded_headers = \"keep\"",
        "upstream.forwarded_headers",
    );
    assert!(
        msg.contains("`strip`") && msg.contains("`replace`"),
        "{msg}"
    );
    refused("[sandbox]\ndemo_client_key = \"k\"", "sandbox");
}

#[test]
fn toml_syntax_errors_give_line_and_column_on_one_line() {
    let msg = refused("[server]\nlisten = \"127.0.0.1:8080\n", "line 2, column 25");
    assert!(msg.len() < 200, "{msg}");
    refused(
        "[server]\nlisten = \"a\"\nlisten = \"b\"\n",
        "line 3, column 1",
    );
}

#[test]
fn each_bad_value_is_refused_naming_its_key() {
    let cases: &[(&str, &str)] = &[
        ("[server]\nlisten = \"localhost:8080\"", "server.listen"),
        ("[server]\nlisten = \"127.0.0.1\"", "server.listen"),
        (
            "[server]\npublic_url = \"gateway.example.com\"",
            "server.public_url",
        ),
        (
            "[server]\npublic_url = \"ftp://gateway.example.com\"",
            "server.public_url",
        ),
        (
            "[server]\npublic_url = \"https://gw.example.com/?a=1\"",
            "server.public_url",
        ),
        (
            "[server]\npublic_url = \"https://gw.example.com/#top\"",
            "server.public_url",
        ),
        (
            "[server]\npublic_url = \"https://gw.example.com/sub\"",
            "server.public_url",
        ),
        ("[server]\nmax_body_bytes = 0", "server.max_body_bytes"),
        (
            "[server]\nrequest_timeout = \"0s\"",
            "server.request_timeout",
        ),
        (
            "[server]\nrequest_timeout = \"soon\"",
            "server.request_timeout",
        ),
        (
            "[server]\nrequest_timeout = \"30\"",
            "server.request_timeout",
        ),
        (
            "[server]\nmax_concurrent_requests = 0",
            "server.max_concurrent_requests",
        ),
        (
            "[server]\nshutdown_grace = \"0ms\"",
            "server.shutdown_grace",
        ),
        (
            "[server]\nheader_read_timeout = \"0s\"",
            "server.header_read_timeout",
        ),
        ("[server]\nmax_connections = 0", "server.max_connections"),
        ("[server]\nsend_timeout = \"0s\"", "server.send_timeout"),
        (
            "[server]\nmax_connections = 9223372036854775807",
            "server.max_connections",
        ),
        ("[server]\ntls_cert = \"cert.pem\"", "server.tls_key"),
        ("[server]\ntls_key = \"key.pem\"", "server.tls_cert"),
        ("[admin]\nlisten = \"nope\"", "admin.listen"),
        ("[admin]\nlisten = \"127.0.0.1:8080\"", "admin.listen"),
        ("[admin]\ntoken_env = \"\"", "admin.token_env"),
        (
            "[admin]\ntoken_env = \"NOT_SET_ANYWHERE\"",
            "admin.token_env",
        ),
        (
            "[upstream]\nbase_url = \"app.onlyfansapi.com\"",
            "upstream.base_url",
        ),
        (
            "[upstream]\nbase_url = \"https://app.onlyfansapi.com?x=1\"",
            "upstream.base_url",
        ),
        (
            "[upstream]\nbase_url = \"https://u:p@app.onlyfansapi.com\"",
            "upstream.base_url",
        ),
        (
            "[upstream]\nca_file = \"/nonexistent/ca.pem\"",
            "upstream.ca_file",
        ),
        (
            "[upstream]\nconnect_timeout = \"0s\"",
            "upstream.connect_timeout",
        ),
        ("[upstream]\ntimeout = \"-1s\"", "upstream.timeout"),
        (
            "[rate_limit]\nrequests_per_minute = 0",
            "rate_limit.requests_per_minute",
        ),
        ("[rate_limit]\nheadroom = 0.0", "rate_limit.headroom"),
        ("[rate_limit]\nheadroom = 1.5", "rate_limit.headroom"),
        ("[rate_limit]\nheadroom = nan", "rate_limit.headroom"),
        (
            "[rate_limit]\nrequests_per_minute = 1\nheadroom = 0.5",
            "rate_limit.headroom",
        ),
        (
            "[rate_limit]\nmax_wait = \"2 parsecs\"",
            "rate_limit.max_wait",
        ),
        ("[ledger]\npath = \"\"", "ledger.path"),
        ("[ledger]\nretention = \"23h\"", "ledger.retention"),
        ("[ledger]\nretention = \"0d\"", "ledger.retention"),
        ("[sandbox]\nlisten = \"x\"", "sandbox.listen"),
        ("[sandbox]\nlisten = \"127.0.0.1:8081\"", "sandbox.listen"),
        (
            "[sandbox]\nlisten = \"127.0.0.1:9\"\ndemo_client_key = \"k\"",
            "sandbox.demo_client_key",
        ),
    ];
    for (text, key) in cases {
        refused(text, key);
    }
}

#[test]
fn each_bad_client_value_is_refused_naming_its_key() {
    let base = client("ok", H2);
    let cases: &[(String, &str)] = &[
        (
            format!("[[clients]]\nkey_sha256 = \"{H1}\""),
            "clients[1].name",
        ),
        (client("Upper", H1), "clients[1].name"),
        (client("", H1), "clients[1].name"),
        (client("has space", H1), "clients[1].name"),
        (client(&"x".repeat(65), H1), "clients[1].name"),
        (
            "[[clients]]\nname = \"a\"".to_owned(),
            "clients[1].key_sha256",
        ),
        (
            "[[clients]]\nname = \"a\"\nkey_sha256 = []".to_owned(),
            "clients[1].key_sha256",
        ),
        (client("a", "abc"), "clients[1].key_sha256"),
        (client("a", &"g".repeat(64)), "clients[1].key_sha256"),
        (client("a", &format!("{H1}0")), "clients[1].key_sha256"),
        (
            format!("[[clients]]\nname = \"a\"\nkey_sha256 = [\"{H1}\", \"xyz\"]"),
            "clients[1].key_sha256[1]",
        ),
        (
            format!("{}requests_per_minute = 0", client("a", H1)),
            "clients[1].requests_per_minute",
        ),
        (format!("{}allow = []", client("a", H1)), "clients[1].allow"),
        (
            format!(
                "{}allow = [\"GET /api/**\", \"GET /v2/x\"]",
                client("a", H1)
            ),
            "clients[1].allow[1]",
        ),
        (
            format!("{}allow = [\"FETCH /api/x\"]", client("a", H1)),
            "clients[1].allow[0]",
        ),
        (
            format!("{}allow = [\"/api//x\"]", client("a", H1)),
            "clients[1].allow[0]",
        ),
        (
            format!("{}accounts = []", client("a", H1)),
            "clients[1].accounts",
        ),
        (
            format!("{}accounts = [\"acct_1\", \"\"]", client("a", H1)),
            "clients[1].accounts[1]",
        ),
        (
            format!("{}accounts = [\"a/b\"]", client("a", H1)),
            "clients[1].accounts[0]",
        ),
    ];
    for (text, key) in cases {
        refused(&format!("{base}{text}\n"), key);
    }
}

#[test]
fn a_key_hash_is_not_echoed_in_its_error() {
    // Someone pasting the key itself instead of its hash must not find it in the logs.
    let pasted = "ofgw_the_actual_client_key_pasted_by_mistake";
    let msg = refused(&client("a", pasted), "clients[0].key_sha256");
    assert!(!msg.contains(pasted), "{msg}");
}

#[test]
fn duplicate_client_names_are_refused() {
    let msg = refused(
        &format!("{}{}", client("crm", H1), client("crm", H2)),
        "clients[1].name",
    );
    assert!(
        msg.contains("duplicate") && msg.contains("clients[0]"),
        "{msg}"
    );
}

#[test]
fn a_hash_shared_by_two_clients_is_refused_naming_both() {
    let msg = refused(
        &format!(
            "{}[[clients]]\nname = \"second\"\nkey_sha256 = [\"{H2}\", \"{}\"]\n",
            client("first", H1),
            H1.to_uppercase()
        ),
        "clients[1].key_sha256[1]",
    );
    assert!(
        msg.contains("\"first\"") && msg.contains("clients[0]"),
        "{msg}"
    );
}

#[test]
fn a_hash_listed_twice_for_one_client_is_refused() {
    refused(
        &format!("[[clients]]\nname = \"a\"\nkey_sha256 = [\"{H1}\", \"{H1}\"]"),
        "clients[0].key_sha256[1]",
    );
}

#[test]
fn key_rotation_with_two_hashes_accepts_both_keys() {
    let (old, new) = ("ofgw_old_key", "ofgw_new_key");
    let c = parse_ok(&format!(
        "[[clients]]\nname = \"crm\"\nkey_sha256 = [\"{}\", \"{}\"]\n",
        hex::encode(KeyHash::of_key(old).0),
        hex::encode(KeyHash::of_key(new).0).to_uppercase(),
    ));
    for key in [old, new] {
        let found = c.clients.lookup(&KeyHash::of_key(key)).unwrap();
        assert_eq!(found.id.as_str(), "crm");
    }
    assert!(c.clients.lookup(&KeyHash::of_key("ofgw_other")).is_none());
}

#[test]
fn upper_case_hex_hashes_are_accepted_and_stored_as_bytes() {
    let c = parse_ok(&client("a", &"AB".repeat(32)));
    assert_eq!(c.clients.clients[0].key_hashes, vec![KeyHash([0xab; 32])]);
}

#[test]
fn a_missing_upstream_key_is_refused_naming_the_variable() {
    let none = |_: &str| None;
    let msg = refused_with("", "upstream.api_key_env", &none);
    assert!(
        msg.contains("ONLYFANSAPI_API_KEY") && msg.contains("not set"),
        "{msg}"
    );

    let msg = refused(
        "[upstream]\napi_key_env = \"OTHER_KEY\"",
        "upstream.api_key_env",
    );
    assert!(msg.contains("OTHER_KEY"), "{msg}");
}

#[test]
fn an_empty_or_blank_upstream_key_is_refused() {
    for value in ["", "  \n\t "] {
        let env = |name: &str| (name == "ONLYFANSAPI_API_KEY").then(|| value.to_owned());
        let msg = refused_with("", "upstream.api_key_env", &env);
        assert!(msg.contains("is empty"), "{msg}");
    }
}

#[test]
fn an_upstream_key_unfit_for_a_header_is_refused_without_showing_it() {
    let env =
        |name: &str| (name == "ONLYFANSAPI_API_KEY").then(|| format!("{SECRET} {SECRET}\u{7f}"));
    refused_with("", "upstream.api_key_env", &env);
}

#[test]
fn the_upstream_key_file_is_read_and_trimmed() {
    let f = temp_file(format!("\n  {SECRET}\r\n\n").as_bytes());
    let none = |_: &str| None;
    let c = parse_str(
        file(),
        &format!("[upstream]\napi_key_file = {:?}", path_str(&f)),
        &none,
    )
    .unwrap();
    assert_eq!(c.upstream.api_key.expose(), SECRET);
    assert_eq!(c.upstream.api_key_source, format!("file {}", path_str(&f)));
}

#[test]
fn an_unreadable_or_empty_key_file_is_refused_naming_the_file() {
    let msg = refused(
        "[upstream]\napi_key_file = \"/nonexistent/secret\"",
        "upstream.api_key_file",
    );
    assert!(msg.contains("/nonexistent/secret"), "{msg}");
    let empty = temp_file(b"  \n");
    let msg = refused(
        &format!("[upstream]\napi_key_file = {:?}", path_str(&empty)),
        "upstream.api_key_file",
    );
    assert!(
        msg.contains(&path_str(&empty)) && msg.contains("empty"),
        "{msg}"
    );
}

#[test]
fn api_key_env_and_api_key_file_together_are_refused() {
    let f = temp_file(SECRET.as_bytes());
    let msg = refused(
        &format!(
            "[upstream]\napi_key_env = \"ONLYFANSAPI_API_KEY\"\napi_key_file = {:?}",
            path_str(&f)
        ),
        "upstream.api_key_file",
    );
    assert!(msg.contains("not both"), "{msg}");
}

#[test]
fn the_secret_never_appears_in_debug_summary_or_errors() {
    let f = temp_file(SECRET.as_bytes());
    let env = |name: &str| match name {
        "ONLYFANSAPI_API_KEY" | "ADMIN" => Some(SECRET.to_owned()),
        _ => None,
    };
    let c = parse_str(
        file(),
        &format!("[admin]\ntoken_env = \"ADMIN\"\n{}", client("a", H1)),
        &env,
    )
    .unwrap();
    for text in [format!("{c:?}"), format!("{c:#?}"), c.summary()] {
        assert!(!text.contains(SECRET), "secret leaked: {text}");
        assert!(!text.contains("TopSecret"), "secret leaked: {text}");
    }
    assert!(format!("{c:?}").contains("[redacted]"));

    let from_file = parse_str(
        file(),
        &format!("[upstream]\napi_key_file = {:?}", path_str(&f)),
        &|_| None,
    )
    .unwrap();
    assert!(!format!("{from_file:?}").contains(SECRET));

    // Errors raised after the key was read must not carry it either.
    for text in [
        "[rate_limit]\nheadroom = 2.0".to_owned(),
        format!("{}{}", client("a", H1), client("a", H2)),
        "[upstream]\napi_key_env = \"ONLYFANSAPI_API_KEY\"\napi_key_file = \"/x\"".to_owned(),
        format!("[upstream]\napi_key_file = {:?}\nbogus = 1", path_str(&f)),
    ] {
        let err = parse_str(file(), &text, &env).unwrap_err();
        assert!(!err.to_string().contains(SECRET), "{err}");
        assert!(!format!("{err:?}").contains(SECRET), "{err:?}");
    }
}

#[test]
fn the_admin_token_comes_from_its_env_var() {
    let env = |name: &str| match name {
        "ONLYFANSAPI_API_KEY" => Some(SECRET.to_owned()),
        "ADMIN_TOKEN" => Some(" tok \n".to_owned()),
        "BLANK" => Some("   ".to_owned()),
        _ => None,
    };
    let c = parse_str(file(), "[admin]\ntoken_env = \"ADMIN_TOKEN\"", &env).unwrap();
    assert_eq!(c.admin.token.unwrap().expose(), "tok");
    let msg = refused_with("[admin]\ntoken_env = \"BLANK\"", "admin.token_env", &env);
    assert!(msg.contains("BLANK") && msg.contains("empty"), "{msg}");
    let msg = refused_with("[admin]\ntoken_env = \"UNSET\"", "admin.token_env", &env);
    assert!(msg.contains("UNSET") && msg.contains("not set"), "{msg}");
}

#[test]
fn tls_cert_and_key_from_rcgen_load() {
    let (cert, key) = cert_and_key();
    let c = parse_ok(&format!(
        "[server]\ntls_cert = {:?}\ntls_key = {:?}",
        path_str(&cert),
        path_str(&key)
    ));
    let tls = c.server.tls.unwrap();
    assert_eq!(
        tls.server_config.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    assert_eq!(c.server.public_url, None);
}

#[test]
fn a_tls_key_that_does_not_match_the_cert_is_refused() {
    let (cert, _) = cert_and_key();
    let (_, other_key) = cert_and_key();
    let msg = refused(
        &format!(
            "[server]\ntls_cert = {:?}\ntls_key = {:?}",
            path_str(&cert),
            path_str(&other_key)
        ),
        "server.tls_key",
    );
    assert!(msg.contains("does not match"), "{msg}");
}

#[test]
fn tls_files_without_the_right_pem_are_refused() {
    let (cert, key) = cert_and_key();
    let junk = temp_file(b"not pem at all\n");
    // The key file holds no certificate, the cert file no key.
    refused(
        &format!(
            "[server]\ntls_cert = {:?}\ntls_key = {:?}",
            path_str(&key),
            path_str(&key)
        ),
        "server.tls_cert",
    );
    refused(
        &format!(
            "[server]\ntls_cert = {:?}\ntls_key = {:?}",
            path_str(&cert),
            path_str(&cert)
        ),
        "server.tls_key",
    );
    refused(
        &format!(
            "[server]\ntls_cert = {:?}\ntls_key = {:?}",
            path_str(&cert),
            path_str(&junk)
        ),
        "server.tls_key",
    );
    let msg = refused(
        &format!(
            "[server]\ntls_cert = \"/nonexistent/cert.pem\"\ntls_key = {:?}",
            path_str(&key)
        ),
        "server.tls_cert",
    );
    assert!(msg.contains("/nonexistent/cert.pem"), "{msg}");
}

#[test]
fn ca_file_roots_are_loaded_and_a_file_without_certificates_is_refused() {
    let (cert, key) = cert_and_key();
    let c = parse_ok(&format!("[upstream]\nca_file = {:?}", path_str(&cert)));
    assert_eq!(c.upstream.extra_roots.len(), 1);
    let msg = refused(
        &format!("[upstream]\nca_file = {:?}", path_str(&key)),
        "upstream.ca_file",
    );
    assert!(msg.contains("no PEM certificate"), "{msg}");
}

#[test]
fn base_url_keeps_a_path_prefix_without_trailing_slash() {
    let c = parse_ok("[upstream]\nbase_url = \"http://127.0.0.1:9000/v1/proxy//\"");
    assert_eq!(
        c.upstream.base_url.to_string(),
        "http://127.0.0.1:9000/v1/proxy"
    );
    assert_eq!(c.upstream.path_prefix(), "/v1/proxy");
    let c = parse_ok("[upstream]\nbase_url = \"http://127.0.0.1:9000/\"");
    assert_eq!(c.upstream.path_prefix(), "");
}

#[test]
fn the_demo_client_key_must_belong_to_a_client() {
    let c = parse_ok(&format!(
        "[sandbox]\nlisten = \"127.0.0.1:9000\"\ndemo_client_key = \"ofgw_demo\"\n{}",
        client("demo", &hex::encode(KeyHash::of_key("ofgw_demo").0))
    ));
    assert_eq!(
        c.sandbox.unwrap().demo_client_key.as_deref(),
        Some("ofgw_demo")
    );
    let msg = refused(
        &format!(
            "[sandbox]\nlisten = \"127.0.0.1:9000\"\ndemo_client_key = \"ofgw_wrong\"\n{}",
            client("demo", &hex::encode(KeyHash::of_key("ofgw_demo").0))
        ),
        "sandbox.demo_client_key",
    );
    assert!(!msg.contains("ofgw_wrong"), "{msg}");
}

#[test]
fn the_summary_names_listeners_upstream_limits_and_clients() {
    let c = parse_ok(&format!(
        "[ledger]\nretention = \"30d\"\n{}disabled = true\nrequests_per_minute = 60\ncredit_budget = 500\nbudget_period = \"day\"\nallow = [\"GET /api/**\"]\naccounts = [\"acct_1\"]\n",
        client("crm-app", H1)
    ));
    let s = c.summary();
    for needle in [
        "test.toml",
        "127.0.0.1:8080",
        "no TLS",
        "127.0.0.1:8081",
        "https://app.onlyfansapi.com",
        "env ONLYFANSAPI_API_KEY",
        "1000/min",
        "0.9",
        "900/min",
        "2s",
        "data/ledger.sqlite",
        "retention 30d",
        "crm-app [DISABLED]",
        "60/min",
        "500 credits/day",
        "\"GET /api/**\"",
        "acct_1",
    ] {
        assert!(s.contains(needle), "summary lacks {needle:?}:\n{s}");
    }
    assert!(s.lines().count() >= 8, "{s}");
}

#[test]
fn load_reads_the_file_and_a_missing_file_is_refused() {
    let f = temp_file(client("a", H1).as_bytes());
    let c = load_with_env(f.path(), &default_env).unwrap();
    assert_eq!(c.source, f.path());
    assert_eq!(c.clients.clients.len(), 1);

    let err = load_with_env(Path::new("/nonexistent/gateway.toml"), &default_env).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("/nonexistent/gateway.toml: (file): cannot read"),
        "{msg}"
    );
}

#[test]
fn error_display_is_file_key_reason_on_one_line() {
    let err = ConfigError {
        file: PathBuf::from("a.toml"),
        key: "server.listen".to_owned(),
        reason: "bad\nthing\r\n".to_owned(),
    };
    assert_eq!(err.to_string(), "a.toml: server.listen: bad thing  ");
    let _: &dyn std::error::Error = &err;
}

#[test]
fn the_documented_example_config_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml");
    let c = match load_with_env(&path, &default_env) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(c.upstream.api_key_source, "env ONLYFANSAPI_API_KEY");
    assert!(!c.clients.clients.is_empty());
    assert!(c.clients.clients.iter().all(|c| !c.key_hashes.is_empty()));
}

#[test]
fn key_hashes_are_equal_only_when_every_byte_is() {
    let key = KeyHash::of_key("ofgw_some_client_key");
    assert_eq!(key, KeyHash::of_key("ofgw_some_client_key"));
    for at in [0, 15, 31] {
        let mut other = key;
        other.0[at] ^= 1;
        assert_ne!(key, other, "byte {at}");
    }
    // The registry finds a client by its hash, and nothing by a hash one bit away.
    let client = Arc::new(Client {
        id: ClientId("c".into()),
        key_hashes: vec![key],
        disabled: false,
        requests_per_minute: None,
        credit_budget: None,
        budget_period: BudgetPeriod::Month,
        allow: None,
        accounts: None,
    });
    let registry = ClientRegistry::new(vec![client]);
    assert_eq!(registry.lookup(&key).map(|c| c.id.as_str()), Some("c"));
    let mut near = key;
    near.0[31] ^= 0x80;
    assert!(registry.lookup(&near).is_none());
}

#[test]
fn a_tls_key_file_without_a_key_or_with_a_broken_one_is_refused() {
    let (cert, _key) = cert_and_key();
    let tls = |key: &tempfile::NamedTempFile| {
        format!(
            "[server]\ntls_cert = {:?}\ntls_key = {:?}",
            path_str(&cert),
            path_str(key)
        )
    };
    // The certificate file given as the key: PEM, but no private key in it.
    let msg = refused(&tls(&cert), "server.tls_key");
    assert!(msg.contains("holds no PEM private key"), "{msg}");
    let broken =
        temp_file(b"-----BEGIN PRIVATE KEY-----\n!!!not base64!!!\n-----END PRIVATE KEY-----\n");
    let msg = refused(&tls(&broken), "server.tls_key");
    assert!(msg.contains("is not valid PEM"), "{msg}");
}
