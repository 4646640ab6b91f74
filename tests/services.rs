//! The test services of `tests/support/services.rs` work for real: private Redis and PostgreSQL
//! servers that can be killed and restarted, a database of its own per test on the shared
//! PostgreSQL, the shared servers at their URLs, and a headless Chromium that loads, clicks and
//! screenshots a page served on 127.0.0.1. (`bash .ci/services` installs and starts them.)

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use redis::AsyncCommands;
use support::services::*;
use support::*;
use tokio_postgres::error::SqlState;

async fn redis_connection(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
}

#[tokio::test]
async fn private_redis_stores_refuses_connections_once_killed_and_answers_again_after_restart() {
    bounded(60, async {
        let mut redis = PrivateRedis::start().await;
        let mut conn = redis_connection(&redis.url()).await.expect("connect");
        let () = conn.set("greeting", "hello").await.expect("SET");
        let value: String = conn.get("greeting").await.expect("GET");
        assert_eq!(value, "hello");

        redis.kill().await;
        let refused = redis_connection(&redis.url())
            .await
            .expect_err("a killed server takes no connection");
        assert!(refused.is_connection_refusal(), "{refused}");

        redis.restart().await;
        let mut conn = redis_connection(&redis.url()).await.expect("reconnect");
        let pong: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .expect("PING");
        assert_eq!(pong, "PONG");
        let value: Option<String> = conn.get("greeting").await.expect("GET");
        assert_eq!(value, None, "a private Redis keeps nothing on disk");
    })
    .await;
}

#[tokio::test]
async fn connection_manager_reaches_a_private_redis_again_after_its_restart() {
    bounded(60, async {
        let mut redis = PrivateRedis::start().await;
        let client = redis::Client::open(redis.url()).expect("client");
        let mut manager = client.get_connection_manager().await.expect("manager");
        let () = manager.set("k", "before").await.expect("SET");

        redis.kill().await;
        let down: redis::RedisResult<Option<String>> = manager.get("k").await;
        assert!(
            down.is_err(),
            "a command to a killed server fails: {down:?}"
        );

        redis.restart().await;
        // The manager reconnects in the background; each command until then fails at once.
        let after = loop {
            match manager.set::<_, _, ()>("k", "after").await {
                Ok(()) => break manager.get::<_, String>("k").await.expect("GET"),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        assert_eq!(after, "after");
    })
    .await;
}

#[tokio::test]
async fn private_postgres_keeps_committed_rows_across_a_sigkill_and_restart() {
    bounded(90, async {
        let mut postgres = PrivatePostgres::start().await;
        let client = pg_connect(&postgres.url()).await.expect("connect");
        client
            .batch_execute(
                "CREATE TABLE ledger (id bigint PRIMARY KEY, credits bigint NOT NULL);
                 INSERT INTO ledger VALUES (1, 42);",
            )
            .await
            .expect("create and insert");

        postgres.kill().await;
        let lost = client.simple_query("SELECT 1").await;
        assert!(lost.is_err(), "the old connection is gone");
        let refused = pg_connect(&postgres.url())
            .await
            .expect_err("a killed server takes no connection");
        let cause = std::error::Error::source(&refused)
            .and_then(|source| source.downcast_ref::<std::io::Error>())
            .map(std::io::Error::kind);
        assert_eq!(
            cause,
            Some(std::io::ErrorKind::ConnectionRefused),
            "{refused:?}"
        );

        postgres.restart().await;
        let client = pg_connect(&postgres.url()).await.expect("reconnect");
        let row = client
            .query_one("SELECT credits FROM ledger WHERE id = 1", &[])
            .await
            .expect("the row survived");
        assert_eq!(row.get::<_, i64>(0), 42);
    })
    .await;
}

#[tokio::test]
async fn test_databases_are_isolated_and_dropped_with_their_handle() {
    bounded(60, async {
        let first = TestDatabase::create().await;
        let second = TestDatabase::create().await;
        assert_ne!(first.name(), second.name());

        let a = first.connect().await;
        a.batch_execute("CREATE TABLE only_here (n int); INSERT INTO only_here VALUES (7);")
            .await
            .expect("create in the first");
        let n: i32 = a
            .query_one("SELECT n FROM only_here", &[])
            .await
            .expect("select")
            .get(0);
        assert_eq!(n, 7);

        let b = second.connect().await;
        let missing = b
            .query("SELECT n FROM only_here", &[])
            .await
            .expect_err("the second database has no such table");
        assert_eq!(
            missing.code(),
            Some(&SqlState::UNDEFINED_TABLE),
            "{missing}"
        );

        // Dropping the handle drops the database, even with a connection still open to it.
        let name = first.name().to_owned();
        drop(first);
        let admin = pg_connect(&database_url()).await.expect("connect");
        let left = admin
            .query("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .expect("pg_database");
        assert!(left.is_empty(), "{name} still exists");
    })
    .await;
}

#[tokio::test]
async fn shared_redis_and_postgres_answer_at_their_urls() {
    bounded(30, async {
        let mut conn = redis_connection(&redis_url())
            .await
            .unwrap_or_else(|e| panic!("Redis at {} (bash .ci/services): {e}", redis_url()));
        let prefix = unique_prefix("shared_redis");
        assert_ne!(prefix, unique_prefix("shared_redis"));
        let key = format!("{prefix}probe");
        let () = conn.set_ex(&key, "here", 60).await.expect("SET EX");
        let value: String = conn.get(&key).await.expect("GET");
        assert_eq!(value, "here");
        let () = conn.del(&key).await.expect("DEL");

        let client = pg_connect(&database_url()).await.unwrap_or_else(|e| {
            panic!("PostgreSQL at {} (bash .ci/services): {e}", database_url())
        });
        let one: i32 = client
            .query_one("SELECT 1", &[])
            .await
            .expect("SELECT 1")
            .get(0);
        assert_eq!(one, 1);
    })
    .await;
}

/// A page whose button changes a text with inline JavaScript.
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>ofgw browser check</title></head>
<body style="font: 24px sans-serif; background: #fff">
  <p id="status">waiting</p>
  <button id="go" onclick="document.getElementById('status').textContent = 'clicked ' + (1 + 1)">Go</button>
</body></html>"#;

#[tokio::test]
async fn browser_loads_a_local_page_clicks_its_button_and_saves_a_png_screenshot() {
    bounded(90, async {
        let site = MockUpstream::start(|request| {
            if request.path_and_query() == "/" {
                Reply::status(200)
                    .header("content-type", "text/html; charset=utf-8")
                    .body(PAGE)
            } else {
                Reply::status(404)
            }
        })
        .await;
        let browser = Browser::start().await;
        browser.goto(&format!("{}/", site.base_url())).await;
        assert!(
            site.received()
                .iter()
                .any(|request| request.path_and_query() == "/"),
            "the page came from the local server"
        );

        let client = browser.client();
        let status = client
            .find(fantoccini::Locator::Id("status"))
            .await
            .expect("#status");
        assert_eq!(status.text().await.expect("text"), "waiting");
        client
            .find(fantoccini::Locator::Id("go"))
            .await
            .expect("#go")
            .click()
            .await
            .expect("click");
        assert_eq!(status.text().await.expect("text"), "clicked 2");

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("page.png");
        let png = browser.screenshot(&path).await;
        let saved = std::fs::read(&path).expect("the screenshot file");
        assert_eq!(saved, png);
        assert!(saved.len() > 8, "{} bytes", saved.len());
        assert_eq!(&saved[..8], b"\x89PNG\r\n\x1a\n", "a PNG signature");

        let profile = browser.profile_dir().display().to_string();
        assert!(
            !processes_mentioning(&profile).is_empty(),
            "the browser runs"
        );
        drop(browser);
        let left = processes_mentioning(&profile);
        assert!(
            left.is_empty(),
            "browser processes left after drop: {left:?}"
        );
    })
    .await;
}
