//! Prometheus metrics (SPEC §7), served as OpenMetrics text on the admin listener's `/metrics`.
//!
//! One [`Metrics`] handle (an `Arc`) owns the registry and every family; the meter, the rate
//! limiter and the ledger feed it through the methods below, the admin listener renders it.
//!
//! Labels are only client names (config names, never keys), route templates, status codes and
//! a few fixed words: nothing a caller sends verbatim, nothing secret, and a bounded number of
//! series. The hot-path methods build their label set from shared names (`Arc<str>` clones, no
//! copy) and touch atomics; a family's write lock is taken only the first time a label set is seen, and no lock
//! is ever held by a caller across an await (none of these methods is async).
//!
//! prometheus-client appends `_total` to counters (and the unit to a metric registered with
//! one): counters are registered without the suffix so that the exposed names are exactly
//! SPEC §7's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// What `render` produces: the OpenMetrics text format (prometheus-client's text encoder).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the request duration histogram: from a cached answer or a refusal
/// by the gateway itself (a few ms) up to the longest upstream timeout a config is likely to set.
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// The client or route label of a request that never got that far (`-`).
pub static UNKNOWN: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("-"));

/// A gauge with values the upstream reports: `u64`, never negative.
type U64Gauge = Gauge<u64, AtomicU64>;

/// A counter of credits: it adds with saturation, so an absurd figure can never wrap it to a
/// small value (which Prometheus would read as a reset, and count again).
type CreditCounter = Counter<u64, SaturatingU64>;

/// A counter's value that stops at `u64::MAX` instead of wrapping.
#[derive(Debug, Default)]
pub struct SaturatingU64(AtomicU64);

impl prometheus_client::metrics::counter::Atomic<u64> for SaturatingU64 {
    fn inc(&self) -> u64 {
        self.inc_by(1)
    }

    fn inc_by(&self, v: u64) -> u64 {
        // The closure never declines, so both arms hold the previous value.
        match self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(v))
            }) {
            Ok(previous) | Err(previous) => previous,
        }
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The label set of a series without labels that should appear only once it has a value (a
/// balance of 0 before the upstream said anything would be a lie, and would trip alerts).
type NoLabels = [(&'static str, &'static str); 0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    client: Arc<str>,
    route: Arc<str>,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientRouteLabels {
    client: Arc<str>,
    route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLimitedLabels {
    client: String,
    /// `client` (its own limit) or `upstream` (the shared upstream budget).
    scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabels {
    client: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    /// `limit` or `remaining`.
    kind: &'static str,
}

/// A cheap handle on the gateway's metric families.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    /// Holds a clone of every family below; read-only once built, so `render` needs no lock.
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    credits_used: Family<ClientRouteLabels, CreditCounter>,
    credits_unknown: Family<ClientRouteLabels, Counter>,
    balance: Family<NoLabels, U64Gauge>,
    upstream_rate_limit: Family<KindLabels, U64Gauge>,
    /// The series of the three families above that never change labels, looked up once: a
    /// clone shares the family's value.
    balance_series: OnceLock<U64Gauge>,
    limit_series: OnceLock<U64Gauge>,
    remaining_series: OnceLock<U64Gauge>,
    rate_limited: Family<RateLimitedLabels, Counter>,
    unattributed_credits: CreditCounter,
    budget_spent: Family<ClientLabels, U64Gauge>,
    budget_remaining: Family<ClientLabels, U64Gauge>,
    ledger_dropped: Counter,
    /// The highest ledger total seen so far: `ledger_dropped` is raised by the difference, so
    /// the exposed series is a true counter although the ledger hands over a running total.
    ledger_dropped_seen: AtomicU64,
    request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

impl Metrics {
    pub fn new() -> Self {
        let requests = Family::default();
        let credits_used = Family::default();
        let credits_unknown = Family::default();
        let balance = Family::default();
        let upstream_rate_limit = Family::default();
        let rate_limited = Family::default();
        let unattributed_credits = CreditCounter::default();
        let budget_spent = Family::default();
        let budget_remaining = Family::default();
        let ledger_dropped = Counter::default();
        let request_duration: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);

        let mut registry = Registry::default();
        // Counters: registered without `_total`, which the encoder appends.
        registry.register(
            "ofapi_gateway_requests",
            "Requests answered, by client, route template and status sent to the client",
            requests.clone(),
        );
        registry.register(
            "ofapi_gateway_credits_used",
            "Credits the upstream charged, by client and route template",
            credits_used.clone(),
        );
        registry.register(
            "ofapi_gateway_credits_unknown",
            "Forwarded calls whose response did not say how many credits they cost",
            credits_unknown.clone(),
        );
        registry.register(
            "ofapi_gateway_credit_balance",
            "The team's credit balance as last reported by the upstream",
            balance.clone(),
        );
        registry.register(
            "ofapi_gateway_upstream_rate_limit",
            "The upstream's per-minute request limit and what remains of it, as last reported",
            upstream_rate_limit.clone(),
        );
        registry.register(
            "ofapi_gateway_rate_limited",
            "Requests refused with 429, by client and scope (client or upstream)",
            rate_limited.clone(),
        );
        registry.register(
            "ofapi_gateway_unattributed_credits",
            "Credits that left the balance without being charged to a call through the gateway",
            unattributed_credits.clone(),
        );
        registry.register(
            "ofapi_gateway_budget_spent_credits",
            "Credits a client has spent in its current budget period",
            budget_spent.clone(),
        );
        registry.register(
            "ofapi_gateway_budget_remaining_credits",
            "Credits left in a client's budget for the current period (clients with a budget)",
            budget_remaining.clone(),
        );
        registry.register(
            "ofapi_gateway_ledger_dropped_rows",
            "Ledger rows lost (writer behind, file unwritable too long, or ledger closed)",
            ledger_dropped.clone(),
        );
        // The unit is appended by the encoder: `ofapi_gateway_request_duration_seconds`.
        registry.register_with_unit(
            "ofapi_gateway_request_duration",
            "Time from request received to response body ended, by route template",
            Unit::Seconds,
            request_duration.clone(),
        );

        Self {
            inner: Arc::new(Inner {
                registry,
                requests,
                credits_used,
                credits_unknown,
                balance,
                upstream_rate_limit,
                balance_series: OnceLock::new(),
                limit_series: OnceLock::new(),
                remaining_series: OnceLock::new(),
                rate_limited,
                unattributed_credits,
                budget_spent,
                budget_remaining,
                ledger_dropped,
                ledger_dropped_seen: AtomicU64::new(0),
                request_duration,
            }),
        }
    }

    /// One finished request (forwarded or answered by the gateway).
    pub fn request(&self, client: &Arc<str>, route: &Arc<str>, status: u16, duration: Duration) {
        let inner = &self.inner;
        inner
            .requests
            .get_or_create(&RequestLabels {
                client: Arc::clone(client),
                route: Arc::clone(route),
                status,
            })
            .inc();
        inner
            .request_duration
            .get_or_create(&RouteLabels {
                route: Arc::clone(route),
            })
            .observe(duration.as_secs_f64());
    }

    /// Credits charged for a forwarded call.
    pub fn credits(&self, client: &Arc<str>, route: &Arc<str>, used: u64) {
        self.inner
            .credits_used
            .get_or_create(&client_route(client, route))
            .inc_by(used);
    }

    /// A forwarded call whose response said nothing about credits.
    pub fn credits_unknown(&self, client: &Arc<str>, route: &Arc<str>) {
        self.inner
            .credits_unknown
            .get_or_create(&client_route(client, route))
            .inc();
    }

    /// The latest credit balance the upstream reported.
    pub fn balance(&self, balance: u64) {
        let inner = &self.inner;
        let series = inner
            .balance_series
            .get_or_init(|| inner.balance.get_or_create(&[]).clone());
        series.set(balance);
    }

    /// The upstream's latest reported per-minute limit and remaining requests.
    pub fn upstream_rate_limit(&self, limit: Option<u32>, remaining: Option<u32>) {
        let inner = &self.inner;
        let family = &inner.upstream_rate_limit;
        if let Some(limit) = limit {
            kind_series(&inner.limit_series, family, "limit").set(u64::from(limit));
        }
        if let Some(remaining) = remaining {
            kind_series(&inner.remaining_series, family, "remaining").set(u64::from(remaining));
        }
    }

    /// A request refused with 429 (`scope`: `client` or `upstream`).
    pub fn rate_limited(&self, client: &str, scope: &str) {
        self.inner
            .rate_limited
            .get_or_create(&RateLimitedLabels {
                client: client.to_owned(),
                scope: scope.to_owned(),
            })
            .inc();
    }

    /// Credits that left the balance without being charged to a call through the gateway.
    pub fn unattributed_credits(&self, credits: u64) {
        self.inner.unattributed_credits.inc_by(credits);
    }

    /// A client's budget period: spent so far and what is left (`None`: no budget).
    pub fn budget(&self, client: &str, spent: u64, remaining: Option<u64>) {
        let labels = ClientLabels {
            client: client.to_owned(),
        };
        self.inner.budget_spent.get_or_create(&labels).set(spent);
        match remaining {
            Some(remaining) => {
                self.inner
                    .budget_remaining
                    .get_or_create(&labels)
                    .set(remaining);
            }
            // No budget (or no longer, after a reload): no `remaining` series at all.
            None => {
                self.inner.budget_remaining.remove(&labels);
            }
        }
    }

    /// Ledger rows dropped so far (a total, not an increment).
    pub fn ledger_dropped(&self, total: u64) {
        // `fetch_max` hands each increase to exactly one caller, so concurrent reports of the
        // same total never count twice, and a stale (lower) report changes nothing.
        let seen = self
            .inner
            .ledger_dropped_seen
            .fetch_max(total, Ordering::Relaxed);
        if total > seen {
            self.inner.ledger_dropped.inc_by(total - seen);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a `String` cannot fail, nor can encoding these metric types.
        if prometheus_client::encoding::text::encode(&mut out, &self.inner.registry).is_err() {
            tracing::error!("metrics: encoding failed");
        }
        out
    }
}

/// The series `kind` of `family`, looked up the first time only.
fn kind_series<'a>(
    cell: &'a OnceLock<U64Gauge>,
    family: &Family<KindLabels, U64Gauge>,
    kind: &'static str,
) -> &'a U64Gauge {
    cell.get_or_init(|| family.get_or_create(&KindLabels { kind }).clone())
}

fn client_route(client: &Arc<str>, route: &Arc<str>) -> ClientRouteLabels {
    ClientRouteLabels {
        client: Arc::clone(client),
        route: Arc::clone(route),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "PUT /api/fansly/{account}/tracking-links/{id}";

    /// The value of the sample line `series` (name and labels exactly as exposed), if present.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().expect("numeric sample"))
        })
    }

    /// The names in `# TYPE` lines with their types.
    fn types(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let (name, kind) = l.split_once(' ').expect("TYPE line");
                (name.to_owned(), kind.to_owned())
            })
            .collect()
    }

    #[test]
    fn families_are_exposed_under_exactly_the_spec_names_and_types() {
        // An empty family is not described at all: feed each once.
        let metrics = Metrics::new();
        metrics.request(
            &"crm-app".into(),
            &ROUTE.into(),
            200,
            Duration::from_millis(7),
        );
        metrics.credits(&"crm-app".into(), &ROUTE.into(), 1);
        metrics.credits_unknown(&"crm-app".into(), &ROUTE.into());
        metrics.balance(10);
        metrics.upstream_rate_limit(Some(5000), Some(4999));
        metrics.rate_limited("crm-app", "client");
        metrics.budget("crm-app", 1, Some(9));
        let text = metrics.render();
        let types = types(&text);
        let expect = [
            ("ofapi_gateway_requests", "counter"),
            ("ofapi_gateway_credits_used", "counter"),
            ("ofapi_gateway_credits_unknown", "counter"),
            ("ofapi_gateway_credit_balance", "gauge"),
            ("ofapi_gateway_upstream_rate_limit", "gauge"),
            ("ofapi_gateway_rate_limited", "counter"),
            ("ofapi_gateway_unattributed_credits", "counter"),
            ("ofapi_gateway_budget_spent_credits", "gauge"),
            ("ofapi_gateway_budget_remaining_credits", "gauge"),
            ("ofapi_gateway_ledger_dropped_rows", "counter"),
            ("ofapi_gateway_request_duration_seconds", "histogram"),
        ];
        for (name, kind) in expect {
            assert!(
                types.contains(&(name.to_owned(), kind.to_owned())),
                "{name} {kind} missing from {types:?}"
            );
        }
        assert_eq!(types.len(), expect.len(), "{types:?}");
        // Counter samples carry `_total` once, never twice.
        assert!(!text.contains("_total_total"), "{text}");
    }

    #[test]
    fn label_free_counters_start_at_zero_and_empty_families_stay_out() {
        let text = Metrics::new().render();
        assert_eq!(
            sample(&text, "ofapi_gateway_unattributed_credits_total"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "ofapi_gateway_ledger_dropped_rows_total"),
            Some(0.0)
        );
        assert!(!text.contains("ofapi_gateway_credit_balance"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn render_is_an_openmetrics_exposition_ending_in_eof() {
        let metrics = Metrics::new();
        metrics.request(
            &"crm-app".into(),
            &ROUTE.into(),
            200,
            Duration::from_millis(7),
        );
        let text = metrics.render();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("sample line");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        assert!(text.contains("# UNIT ofapi_gateway_request_duration_seconds seconds"));
    }

    #[test]
    fn request_counts_by_client_route_and_status_and_times_by_route() {
        let metrics = Metrics::new();
        metrics.request(
            &"crm-app".into(),
            &ROUTE.into(),
            200,
            Duration::from_millis(7),
        );
        metrics.request(
            &"crm-app".into(),
            &ROUTE.into(),
            200,
            Duration::from_millis(300),
        );
        metrics.request(
            &"crm-app".into(),
            &ROUTE.into(),
            429,
            Duration::from_millis(1),
        );
        metrics.request(
            &"billing".into(),
            &ROUTE.into(),
            200,
            Duration::from_secs(90),
        );
        let text = metrics.render();
        let requests = |client: &str, status: u16| {
            sample(
                &text,
                &format!(
                    "ofapi_gateway_requests_total{{client=\"{client}\",route=\"{ROUTE}\",status=\"{status}\"}}"
                ),
            )
        };
        assert_eq!(requests("crm-app", 200), Some(2.0));
        assert_eq!(requests("crm-app", 429), Some(1.0));
        assert_eq!(requests("billing", 200), Some(1.0));
        assert_eq!(requests("billing", 429), None);

        let bucket = |le: &str| {
            sample(
                &text,
                &format!(
                    "ofapi_gateway_request_duration_seconds_bucket{{le=\"{le}\",route=\"{ROUTE}\"}}"
                ),
            )
        };
        assert_eq!(bucket("0.005"), Some(1.0), "1 ms");
        assert_eq!(bucket("0.01"), Some(2.0), "cumulative: 1 ms and 7 ms");
        assert_eq!(bucket("0.5"), Some(3.0));
        assert_eq!(bucket("60.0"), Some(3.0), "90 s is above the last bound");
        assert_eq!(bucket("+Inf"), Some(4.0));
        assert_eq!(
            sample(
                &text,
                &format!("ofapi_gateway_request_duration_seconds_count{{route=\"{ROUTE}\"}}")
            ),
            Some(4.0)
        );
        let sum = sample(
            &text,
            &format!("ofapi_gateway_request_duration_seconds_sum{{route=\"{ROUTE}\"}}"),
        )
        .unwrap();
        assert!((sum - 90.308).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn credits_and_unknown_credits_add_up_per_client_and_route() {
        let metrics = Metrics::new();
        metrics.credits(&"crm-app".into(), &ROUTE.into(), 1);
        metrics.credits(&"crm-app".into(), &ROUTE.into(), 5);
        metrics.credits(&"crm-app".into(), &ROUTE.into(), 0);
        metrics.credits_unknown(&"billing".into(), &ROUTE.into());
        metrics.credits_unknown(&"billing".into(), &ROUTE.into());
        let text = metrics.render();
        let series = |name: &str, client: &str| {
            sample(
                &text,
                &format!("{name}{{client=\"{client}\",route=\"{ROUTE}\"}}"),
            )
        };
        assert_eq!(
            series("ofapi_gateway_credits_used_total", "crm-app"),
            Some(6.0)
        );
        assert_eq!(series("ofapi_gateway_credits_used_total", "billing"), None);
        assert_eq!(
            series("ofapi_gateway_credits_unknown_total", "billing"),
            Some(2.0)
        );
        assert_eq!(
            series("ofapi_gateway_credits_unknown_total", "crm-app"),
            None
        );
    }

    #[test]
    fn credit_counters_saturate_instead_of_wrapping_to_a_smaller_value() {
        let metrics = Metrics::new();
        metrics.credits(&"crm-app".into(), &ROUTE.into(), u64::MAX - 1);
        metrics.credits(&"crm-app".into(), &ROUTE.into(), 5);
        metrics.unattributed_credits(u64::MAX);
        metrics.unattributed_credits(1);
        let text = metrics.render();
        let exact = |series: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
                .map(str::to_owned)
        };
        let max = u64::MAX.to_string();
        assert_eq!(
            exact(&format!(
                "ofapi_gateway_credits_used_total{{client=\"crm-app\",route=\"{ROUTE}\"}}"
            )),
            Some(max.clone()),
            "{text}"
        );
        assert_eq!(
            exact("ofapi_gateway_unattributed_credits_total"),
            Some(max),
            "{text}"
        );
    }

    #[test]
    fn balance_and_upstream_limits_appear_once_reported_and_keep_the_latest() {
        let metrics = Metrics::new();
        let text = metrics.render();
        assert_eq!(sample(&text, "ofapi_gateway_credit_balance"), None);
        assert!(
            !text.contains("ofapi_gateway_upstream_rate_limit{"),
            "{text}"
        );

        metrics.balance(10_055_796);
        metrics.balance(10_055_795);
        metrics.upstream_rate_limit(Some(5000), Some(4999));
        metrics.upstream_rate_limit(None, Some(4998));
        let text = metrics.render();
        assert_eq!(
            sample(&text, "ofapi_gateway_credit_balance"),
            Some(10_055_795.0)
        );
        assert_eq!(
            sample(&text, "ofapi_gateway_upstream_rate_limit{kind=\"limit\"}"),
            Some(5000.0),
            "a report without the limit keeps the last one"
        );
        assert_eq!(
            sample(
                &text,
                "ofapi_gateway_upstream_rate_limit{kind=\"remaining\"}"
            ),
            Some(4998.0)
        );
    }

    #[test]
    fn rate_limited_and_unattributed_credits_count() {
        let metrics = Metrics::new();
        metrics.rate_limited("crm-app", "client");
        metrics.rate_limited("crm-app", "upstream");
        metrics.rate_limited("crm-app", "upstream");
        metrics.unattributed_credits(3);
        metrics.unattributed_credits(4);
        let text = metrics.render();
        assert_eq!(
            sample(
                &text,
                "ofapi_gateway_rate_limited_total{client=\"crm-app\",scope=\"client\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "ofapi_gateway_rate_limited_total{client=\"crm-app\",scope=\"upstream\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "ofapi_gateway_unattributed_credits_total"),
            Some(7.0)
        );
    }

    #[test]
    fn budget_remaining_is_exposed_only_for_clients_with_a_budget() {
        let metrics = Metrics::new();
        metrics.budget("crm-app", 120, Some(49_880));
        metrics.budget("billing", 7, None);
        let text = metrics.render();
        let spent = |c: &str| {
            sample(
                &text,
                &format!("ofapi_gateway_budget_spent_credits{{client=\"{c}\"}}"),
            )
        };
        let remaining = |c: &str| {
            sample(
                &text,
                &format!("ofapi_gateway_budget_remaining_credits{{client=\"{c}\"}}"),
            )
        };
        assert_eq!(spent("crm-app"), Some(120.0));
        assert_eq!(remaining("crm-app"), Some(49_880.0));
        assert_eq!(spent("billing"), Some(7.0));
        assert_eq!(remaining("billing"), None);

        // The budget was removed (reload): its remaining series goes with it.
        metrics.budget("crm-app", 130, None);
        let text = metrics.render();
        assert_eq!(
            sample(
                &text,
                "ofapi_gateway_budget_spent_credits{client=\"crm-app\"}"
            ),
            Some(130.0)
        );
        assert!(
            !text.contains("ofapi_gateway_budget_remaining_credits{"),
            "{text}"
        );
    }

    #[test]
    fn ledger_dropped_is_a_counter_that_follows_the_ledgers_total() {
        let metrics = Metrics::new();
        let dropped = |m: &Metrics| sample(&m.render(), "ofapi_gateway_ledger_dropped_rows_total");
        metrics.ledger_dropped(0);
        assert_eq!(dropped(&metrics), Some(0.0));
        metrics.ledger_dropped(3);
        metrics.ledger_dropped(3);
        assert_eq!(
            dropped(&metrics),
            Some(3.0),
            "the same total twice counts once"
        );
        metrics.ledger_dropped(10);
        assert_eq!(dropped(&metrics), Some(10.0));
        metrics.ledger_dropped(4);
        assert_eq!(
            dropped(&metrics),
            Some(10.0),
            "a stale total never lowers it"
        );
        assert!(metrics
            .render()
            .contains("# TYPE ofapi_gateway_ledger_dropped_rows counter"));
    }

    #[test]
    fn concurrent_ledger_totals_are_counted_exactly_once() {
        let metrics = Metrics::new();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let m = metrics.clone();
                s.spawn(move || {
                    for total in 0..=1000 {
                        m.ledger_dropped(total);
                    }
                });
            }
        });
        assert_eq!(
            sample(&metrics.render(), "ofapi_gateway_ledger_dropped_rows_total"),
            Some(1000.0)
        );
    }

    #[test]
    fn clones_share_the_same_families() {
        let metrics = Metrics::new();
        metrics.clone().credits(&"crm-app".into(), &ROUTE.into(), 2);
        assert_eq!(
            sample(
                &metrics.render(),
                &format!(
                    "ofapi_gateway_credits_used_total{{client=\"crm-app\",route=\"{ROUTE}\"}}"
                )
            ),
            Some(2.0)
        );
    }
}
