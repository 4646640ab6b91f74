//! The sandbox's in-memory world and the bookkeeping an upstream call goes through: the seeded
//! tracking links per Fansly account, the credit balance, the per-minute request window and the
//! response cache. Everything here is synchronous and takes "now" as an argument, so it is tested
//! without a server or a real clock; the routes hold the one `Mutex` around it only between awaits.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use super::clock::DAY_MS;

/// How many tracking links every Fansly account is seeded with.
pub(crate) const SEEDED_LINKS: u64 = 25;
/// How long a cached GET response is served before it is recomputed (undocumented upstream; chosen).
pub(crate) const CACHE_TTL_MS: u64 = 60_000;
/// The Fansly account id all seeded links report as their owner (taken from the doc example).
const FANSLY_ACCOUNT_NUMBER: &str = "800000000000000001";
/// The first seeded link id is this plus one (ids as in the doc examples: `100000000000000003`).
const LINK_ID_BASE: u64 = 100_000_000_000_000_000;
/// `createdAt` of link 3 in the doc example; the others are spaced an hour apart around it.
const LINK_3_CREATED_AT_MS: u64 = 1_780_512_430_000;
/// Labels of the seeded links, cycled; link 3 is "Twitter bio" as in the doc example.
const SEED_LABELS: [&str; 10] = [
    "FYP",
    "Search",
    "Twitter bio",
    "Reddit",
    "Instagram bio",
    "TikTok",
    "Linktree",
    "Telegram",
    "Discord",
    "YouTube",
];

/// One tracking link as the sandbox stores it.
#[derive(Debug, Clone)]
pub(crate) struct TrackingLink {
    /// 1-based position in the seed; drives the made-up counts.
    seq: u64,
    pub(crate) label: String,
    pub(crate) description: String,
}

impl TrackingLink {
    fn seeded(seq: u64) -> Self {
        let base = SEED_LABELS[usize::try_from((seq - 1) % 10).unwrap_or(0)];
        let round = (seq - 1) / 10;
        let label = if round == 0 {
            base.to_owned()
        } else {
            format!("{base} {}", round + 1)
        };
        Self {
            seq,
            label,
            description: String::new(),
        }
    }

    pub(crate) fn id(&self) -> String {
        (LINK_ID_BASE + self.seq).to_string()
    }

    /// Daily counts for one UTC day (days since the epoch): made up, but stable.
    pub(crate) fn day_stats(&self, day: u64) -> DayCounts {
        let clicks = (day * 7 + self.seq * 13) % 25;
        let claims = clicks * 2 / 3;
        let follows = claims / 3;
        let subscriptions = follows / 2;
        DayCounts {
            clicks,
            claims,
            follows,
            subscriptions,
        }
    }

    /// The link as the upstream renders it. `with_totals` fills the aggregate counts (the list
    /// route documents them); the update's documented example has them `null`.
    pub(crate) fn to_json(&self, with_totals: bool) -> LinkJson {
        let created = LINK_3_CREATED_AT_MS as i64 + (self.seq as i64 - 3) * 3_600_000;
        let (clicks, claims, follows, subscriptions, net, gross) = if with_totals {
            let clicks = (self.seq * 37) % 200 + 10;
            let claims = clicks / 2;
            let follows = claims / 2;
            let subscriptions = follows / 3;
            let gross = (subscriptions as f64) * 9.99;
            let net = (gross * 80.0).round() / 100.0;
            (
                Some(clicks),
                Some(claims),
                Some(follows),
                Some(subscriptions),
                Some((gross * 100.0).round() / 100.0),
                Some(net),
            )
        } else {
            (None, None, None, None, None, None)
        };
        LinkJson {
            id: self.id(),
            account_id: FANSLY_ACCOUNT_NUMBER,
            internal_id: (1000 + self.seq - 1).to_string(),
            kind: 1000,
            status: 1,
            label: self.label.clone(),
            description: self.description.clone(),
            metadata: "{}",
            created_at: created,
            clicks,
            claims,
            follows,
            subscriptions,
            total_net: net,
            total_gross: gross,
        }
    }
}

/// One day of a link's engagement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DayCounts {
    pub(crate) clicks: u64,
    pub(crate) claims: u64,
    pub(crate) follows: u64,
    pub(crate) subscriptions: u64,
}

/// A tracking link on the wire, fields in the order of the documented example.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LinkJson {
    id: String,
    account_id: &'static str,
    internal_id: String,
    #[serde(rename = "type")]
    kind: u32,
    status: u32,
    label: String,
    description: String,
    metadata: &'static str,
    created_at: i64,
    clicks: Option<u64>,
    claims: Option<u64>,
    follows: Option<u64>,
    subscriptions: Option<u64>,
    total_net: Option<f64>,
    total_gross: Option<f64>,
}

/// Whether an account id is one the sandbox knows: any `fansly_acct_<something>`.
pub(crate) fn is_fansly_account(id: &str) -> bool {
    id.strip_prefix("fansly_acct_").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// The outcome of asking the per-minute window for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Counted; this many requests are left in the current minute.
    Admitted { remaining: u32 },
    /// The minute's budget is spent; retry after this many whole seconds (≥ 1).
    Limited { retry_after_secs: u64 },
}

/// A fixed window per wall-clock UTC minute.
#[derive(Debug, Default)]
struct RateWindow {
    /// Minutes since the epoch that `used` belongs to.
    minute: u64,
    /// Requests counted in that minute.
    used: u32,
}

/// A cached GET response body, without its `_meta` (which is rebuilt on every hit).
#[derive(Debug, Clone)]
pub(crate) struct CachedPayload {
    pub(crate) data: Value,
    pub(crate) pagination: Option<Value>,
    pub(crate) etag: String,
    pub(crate) cached_at_ms: u64,
}

/// Everything the sandbox remembers.
#[derive(Debug)]
pub(crate) struct SandboxState {
    /// Per-minute limit (`limit_minute`).
    limit_minute: u32,
    /// Credits left; never below 0.
    balance: u64,
    window: RateWindow,
    /// Seeded lazily, on an account's first call, so any `fansly_acct_...` id works.
    accounts: HashMap<String, Vec<TrackingLink>>,
    /// (account, canonical path+query) → payload. Entries past `CACHE_TTL_MS` are dead.
    cache: HashMap<(String, String), CachedPayload>,
}

impl SandboxState {
    pub(crate) fn new(limit_minute: u32, starting_balance: u64) -> Self {
        Self {
            limit_minute,
            balance: starting_balance,
            window: RateWindow::default(),
            accounts: HashMap::new(),
            cache: HashMap::new(),
        }
    }

    pub(crate) fn limit_minute(&self) -> u32 {
        self.limit_minute
    }

    pub(crate) fn balance(&self) -> u64 {
        self.balance
    }

    fn roll_window(&mut self, now_ms: u64) {
        let minute = now_ms / 60_000;
        if minute != self.window.minute {
            self.window = RateWindow { minute, used: 0 };
        }
    }

    /// Requests left in the current minute, without counting one.
    pub(crate) fn remaining(&mut self, now_ms: u64) -> u32 {
        self.roll_window(now_ms);
        self.limit_minute.saturating_sub(self.window.used)
    }

    /// Counts one request against the current minute, or refuses it.
    pub(crate) fn admit(&mut self, now_ms: u64) -> Admission {
        self.roll_window(now_ms);
        if self.window.used >= self.limit_minute {
            let next_minute_ms = (self.window.minute + 1) * 60_000;
            let retry_after_secs = next_minute_ms.saturating_sub(now_ms).div_ceil(1000).max(1);
            return Admission::Limited { retry_after_secs };
        }
        self.window.used += 1;
        Admission::Admitted {
            remaining: self.limit_minute - self.window.used,
        }
    }

    /// Debits up to `price` credits and returns what was actually debited, so the balance always
    /// goes down by exactly the reported `used` (and stops at 0).
    pub(crate) fn charge(&mut self, price: u64) -> u64 {
        let used = price.min(self.balance);
        self.balance -= used;
        used
    }

    /// The account's links, seeding them on first use.
    pub(crate) fn links(&mut self, account: &str) -> &mut Vec<TrackingLink> {
        self.accounts
            .entry(account.to_owned())
            .or_insert_with(|| (1..=SEEDED_LINKS).map(TrackingLink::seeded).collect())
    }

    pub(crate) fn link_mut(&mut self, account: &str, id: &str) -> Option<&mut TrackingLink> {
        self.links(account).iter_mut().find(|l| l.id() == id)
    }

    pub(crate) fn cache_get(
        &mut self,
        account: &str,
        key: &str,
        now_ms: u64,
    ) -> Option<CachedPayload> {
        let k = (account.to_owned(), key.to_owned());
        match self.cache.get(&k) {
            Some(hit) if now_ms < hit.cached_at_ms + CACHE_TTL_MS => Some(hit.clone()),
            Some(_) => {
                self.cache.remove(&k);
                None
            }
            None => None,
        }
    }

    pub(crate) fn cache_put(&mut self, account: &str, key: &str, payload: CachedPayload) {
        self.cache
            .insert((account.to_owned(), key.to_owned()), payload);
    }

    /// Drops every cached response of one account (after a write to it).
    pub(crate) fn invalidate_account(&mut self, account: &str) {
        self.cache.retain(|(acct, _), _| acct != account);
    }
}

/// One page of a list: which items, and where the next page starts (if there is one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Page {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) next_offset: Option<u64>,
}

/// `limit`/`offset` over `total` items. An offset past the end gives an empty last page.
pub(crate) fn page(total: usize, limit: u64, offset: u64) -> Page {
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(total);
    let end = start
        .saturating_add(usize::try_from(limit).unwrap_or(usize::MAX))
        .min(total);
    let next_offset = (end < total).then(|| offset + limit);
    Page {
        start,
        end,
        next_offset,
    }
}

/// Laravel-style validation errors: field → messages, in the order they were found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ValidationErrors(pub(crate) Vec<(&'static str, String)>);

impl ValidationErrors {
    pub(crate) fn add(&mut self, field: &'static str, message: String) {
        self.0.push((field, message));
    }

    /// Laravel's top-level `message`: the first error, plus "(and N more error[s])".
    pub(crate) fn message(&self) -> String {
        let first = self
            .0
            .first()
            .map(|(_, m)| m.as_str())
            .unwrap_or("The given data was invalid.");
        match self.0.len() {
            0 | 1 => first.to_owned(),
            2 => format!("{first} (and 1 more error)"),
            n => format!("{first} (and {} more errors)", n - 1),
        }
    }

    /// `{"message": ..., "errors": {"field": ["..."]}}`
    pub(crate) fn to_json(&self) -> Value {
        let mut errors = serde_json::Map::new();
        for (field, msg) in &self.0 {
            let entry = errors
                .entry((*field).to_owned())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = entry {
                list.push(Value::String(msg.clone()));
            }
        }
        serde_json::json!({ "message": self.message(), "errors": errors })
    }
}

/// A valid update request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UpdateLink {
    pub(crate) label: String,
    /// `None` when absent or `null`: the description is left as it was.
    pub(crate) description: Option<String>,
}

/// Validates `PUT .../tracking-links/{id}` the way a Laravel form request would
/// (`label: required|string|max:255`, `description: nullable|string`). A body that is not a
/// JSON object is treated as empty, as Laravel does, so it fails on `label`.
pub(crate) fn validate_update(body: &[u8]) -> Result<UpdateLink, ValidationErrors> {
    let parsed: Option<serde_json::Map<String, Value>> = serde_json::from_slice(body).ok();
    let fields = parsed.unwrap_or_default();
    let mut errors = ValidationErrors::default();
    let label = match fields.get("label") {
        None | Some(Value::Null) => {
            errors.add("label", "The label field is required.".to_owned());
            None
        }
        // Laravel trims strings and turns empty ones into null before validating.
        Some(Value::String(s)) if s.trim().is_empty() => {
            errors.add("label", "The label field is required.".to_owned());
            None
        }
        Some(Value::String(s)) if s.trim().chars().count() > 255 => {
            errors.add(
                "label",
                "The label field must not be greater than 255 characters.".to_owned(),
            );
            None
        }
        Some(Value::String(s)) => Some(s.trim().to_owned()),
        Some(_) => {
            errors.add("label", "The label field must be a string.".to_owned());
            None
        }
    };
    let description = match fields.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.trim().to_owned()),
        Some(_) => {
            errors.add(
                "description",
                "The description field must be a string.".to_owned(),
            );
            None
        }
    };
    match label {
        Some(label) if errors.0.is_empty() => Ok(UpdateLink { label, description }),
        _ => Err(errors),
    }
}

/// The UTC days (since the epoch) a stats request covers, `after` to `before` inclusive.
pub(crate) fn stats_days(after_ms: u64, before_ms: u64) -> std::ops::RangeInclusive<u64> {
    (after_ms / DAY_MS)..=(before_ms / DAY_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_780_000_000_000 - 1_780_000_000_000 % 60_000; // a minute boundary

    #[test]
    fn balance_goes_down_by_exactly_what_is_charged_and_stops_at_zero() {
        let mut s = SandboxState::new(10, 3);
        assert_eq!(s.charge(1), 1);
        assert_eq!(s.balance(), 2);
        assert_eq!(s.charge(0), 0);
        assert_eq!(s.balance(), 2);
        assert_eq!(s.charge(5), 2);
        assert_eq!(s.balance(), 0);
        assert_eq!(s.charge(1), 0);
    }

    #[test]
    fn rate_window_refuses_past_the_limit_until_the_minute_turns() {
        let mut s = SandboxState::new(2, 0);
        assert_eq!(s.admit(T0 + 1_000), Admission::Admitted { remaining: 1 });
        assert_eq!(s.admit(T0 + 2_000), Admission::Admitted { remaining: 0 });
        assert_eq!(
            s.admit(T0 + 20_500),
            Admission::Limited {
                retry_after_secs: 40
            }
        );
        assert_eq!(s.remaining(T0 + 59_999), 0);
        assert_eq!(s.admit(T0 + 60_000), Admission::Admitted { remaining: 1 });
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let mut s = SandboxState::new(0, 0);
        assert_eq!(
            s.admit(T0 + 59_999),
            Admission::Limited {
                retry_after_secs: 1
            }
        );
        assert_eq!(
            s.admit(T0),
            Admission::Limited {
                retry_after_secs: 60
            }
        );
    }

    fn payload(at: u64) -> CachedPayload {
        CachedPayload {
            data: serde_json::json!([1]),
            pagination: None,
            etag: "\"x\"".into(),
            cached_at_ms: at,
        }
    }

    #[test]
    fn cache_hits_until_the_ttl_and_is_dropped_by_a_write_to_the_account() {
        let mut s = SandboxState::new(10, 0);
        s.cache_put("fansly_acct_a", "/k", payload(T0));
        s.cache_put("fansly_acct_b", "/k", payload(T0));
        assert!(s
            .cache_get("fansly_acct_a", "/k", T0 + CACHE_TTL_MS - 1)
            .is_some());
        assert!(s.cache_get("fansly_acct_a", "/other", T0).is_none());
        assert!(s
            .cache_get("fansly_acct_a", "/k", T0 + CACHE_TTL_MS)
            .is_none());
        s.cache_put("fansly_acct_a", "/k", payload(T0));
        s.invalidate_account("fansly_acct_a");
        assert!(s.cache_get("fansly_acct_a", "/k", T0).is_none());
        assert!(s.cache_get("fansly_acct_b", "/k", T0).is_some());
    }

    #[test]
    fn pagination_math_covers_all_items_once_and_ends_with_no_next_page() {
        assert_eq!(
            page(25, 10, 0),
            Page {
                start: 0,
                end: 10,
                next_offset: Some(10)
            }
        );
        assert_eq!(
            page(25, 10, 20),
            Page {
                start: 20,
                end: 25,
                next_offset: None
            }
        );
        assert_eq!(page(25, 5, 20).next_offset, None);
        assert_eq!(page(25, 10, 99).start, 25);
        assert_eq!(page(25, 10, 99).next_offset, None);
        assert_eq!(page(25, 10, u64::MAX).end, 25);
    }

    #[test]
    fn accounts_are_seeded_lazily_with_the_same_links() {
        let mut s = SandboxState::new(10, 0);
        let a: Vec<String> = s.links("fansly_acct_a").iter().map(|l| l.id()).collect();
        let b: Vec<String> = s.links("fansly_acct_b").iter().map(|l| l.id()).collect();
        assert_eq!(a.len(), 25);
        assert_eq!(a, b);
        assert_eq!(a[2], "100000000000000003");
        assert_eq!(
            s.link_mut("fansly_acct_a", "100000000000000003")
                .map(|l| l.label.clone()),
            Some("Twitter bio".into())
        );
        assert!(is_fansly_account("fansly_acct_123"));
        assert!(!is_fansly_account("acct_123"));
        assert!(!is_fansly_account("fansly_acct_"));
    }

    #[test]
    fn update_requires_a_non_empty_string_label() {
        let missing = validate_update(br#"{"description":"x"}"#).unwrap_err();
        assert_eq!(
            missing.0,
            vec![("label", "The label field is required.".to_owned())]
        );
        assert_eq!(
            validate_update(br#"{"label":"  "}"#).unwrap_err().message(),
            "The label field is required."
        );
        assert_eq!(
            validate_update(b"not json").unwrap_err().message(),
            "The label field is required."
        );
        assert_eq!(
            validate_update(br#"{"label":5}"#).unwrap_err().message(),
            "The label field must be a string."
        );
        let two = validate_update(br#"{"label":5,"description":[]}"#).unwrap_err();
        assert_eq!(
            two.message(),
            "The label field must be a string. (and 1 more error)"
        );
        assert_eq!(
            two.to_json(),
            serde_json::json!({
                "message": "The label field must be a string. (and 1 more error)",
                "errors": {"label": ["The label field must be a string."], "description": ["The description field must be a string."]}
            })
        );
    }

    #[test]
    fn update_accepts_label_with_optional_or_null_description() {
        assert_eq!(
            validate_update(br#"{"label":"Bio","description":null,"extra":1}"#),
            Ok(UpdateLink {
                label: "Bio".into(),
                description: None
            })
        );
        assert_eq!(
            validate_update(br#"{"label":"Bio","description":"d"}"#),
            Ok(UpdateLink {
                label: "Bio".into(),
                description: Some("d".into())
            })
        );
    }
}
