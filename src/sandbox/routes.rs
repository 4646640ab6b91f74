//! The sandbox's HTTP surface: routing, authentication, the rate-limit / cache / credit pipeline
//! every call goes through, and the upstream-shaped JSON (`data`, `_pagination`, `_meta`) and
//! `x-ofapi-*` / `x-rate-limit-*` headers. The state lock is taken only after the request body
//! has been read and released before the response is returned, so it never spans an await.

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, ETAG, HOST, IF_NONE_MATCH, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::clock::{format_rfc3339, parse_iso8601_ms, Clock, DAY_MS};
use super::state::{
    is_fansly_account, page, stats_days, validate_update, Admission, CachedPayload, SandboxState,
    ValidationErrors,
};
use super::SandboxOptions;

/// The body every sandbox response has.
pub(crate) type SandboxBody = Full<Bytes>;

/// Update request bodies above this are refused with 413 (the documented body is two strings).
const MAX_BODY_BYTES: usize = 1 << 20;
/// Page size when `limit` is absent (undocumented for Fansly; the OnlyFans stored list uses 10).
const DEFAULT_LIMIT: u64 = 10;
/// Largest accepted `limit` (undocumented; chosen).
const MAX_LIMIT: u64 = 100;
/// Longest stats range accepted, in days (undocumented; chosen to bound the response).
const MAX_STATS_DAYS: u64 = 366;
/// Default stats range when `after` is absent: "30 days ago" (documented).
const DEFAULT_STATS_RANGE_MS: u64 = 30 * DAY_MS;

const X_CREDITS_USED: HeaderName = HeaderName::from_static("x-ofapi-credits-used");
const X_CREDITS_BALANCE: HeaderName = HeaderName::from_static("x-ofapi-credits-balance");
const X_IS_CACHED: HeaderName = HeaderName::from_static("x-ofapi-is-cached");
const X_LIMIT_MINUTE: HeaderName = HeaderName::from_static("x-rate-limit-limit-minute");
const X_REMAINING_MINUTE: HeaderName = HeaderName::from_static("x-rate-limit-remaining-minute");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const NOTE_ALWAYS: &str = "Always";
const NOTE_FREE: &str = "Free endpoint";
const NOTE_CACHE_HIT: &str = "Cache HIT. No credits debited";
const NOTE_CACHE_MISS: &str = "Cache MISS. Credits debited";
const NOTE_CACHE_DISABLED: &str = "Cache disabled for this endpoint";
const NOTE_CACHE_BYPASS: &str =
    "Add ?fresh=true to the request URL to skip the cache and get a fresh response from Fansly";
const NOTICE_NO_DAILY_LIMITS: &str = "We have decided to remove our daily rate limits. Please remove any references to these in your integrations.";

/// What a route costs and whether its responses are cached.
#[derive(Debug, Clone, Copy)]
struct Pricing {
    credits: u64,
    cached: bool,
}

/// `GET /api/fansly/{a}/tracking-links`: 1 credit (chosen), cached (chosen).
const LIST: Pricing = Pricing {
    credits: 1,
    cached: true,
};
/// `GET /api/fansly/{a}/tracking-links/{id}/stats`: 1 credit, "Cache disabled" (both documented).
const STATS: Pricing = Pricing {
    credits: 1,
    cached: false,
};
/// `PUT /api/fansly/{a}/tracking-links/{id}`: 1 credit, "Cache disabled" (both documented).
const UPDATE: Pricing = Pricing {
    credits: 1,
    cached: false,
};
/// `GET /api/whoami`: free (chosen; team endpoints do not call Fansly).
const WHOAMI: Pricing = Pricing {
    credits: 0,
    cached: false,
};

/// The routes the sandbox knows, borrowed from the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Whoami,
    List { account: &'a str },
    Update { account: &'a str, link: &'a str },
    Stats { account: &'a str, link: &'a str },
}

impl Route<'_> {
    fn parse(path: &str) -> Option<Route<'_>> {
        let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        match segments.as_slice() {
            ["api", "whoami"] => Some(Route::Whoami),
            ["api", "fansly", account, "tracking-links"] if !account.is_empty() => {
                Some(Route::List { account })
            }
            ["api", "fansly", account, "tracking-links", link]
                if !account.is_empty() && !link.is_empty() =>
            {
                Some(Route::Update { account, link })
            }
            ["api", "fansly", account, "tracking-links", link, "stats"]
                if !account.is_empty() && !link.is_empty() =>
            {
                Some(Route::Stats { account, link })
            }
            _ => None,
        }
    }

    fn method(&self) -> Method {
        match self {
            Route::Update { .. } => Method::PUT,
            _ => Method::GET,
        }
    }
}

/// The `_meta` figures of one response; also rendered as headers.
#[derive(Debug, Clone)]
struct Meta {
    used: u64,
    balance: u64,
    credit_note: &'static str,
    is_cached: bool,
    cached_at: Option<String>,
    cache_note: &'static str,
    limit_minute: u32,
    remaining_minute: u32,
}

#[derive(Serialize)]
struct MetaJson<'a> {
    #[serde(rename = "_credits")]
    credits: CreditsJson<'a>,
    #[serde(rename = "_cache")]
    cache: CacheJson<'a>,
    #[serde(rename = "_rate_limits")]
    rate_limits: RateLimitsJson,
}

#[derive(Serialize)]
struct CreditsJson<'a> {
    used: u64,
    balance: u64,
    note: &'a str,
}

#[derive(Serialize)]
struct CacheJson<'a> {
    is_cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cached_at: Option<&'a str>,
    note: &'a str,
}

#[derive(Serialize)]
struct RateLimitsJson {
    limit_minute: u32,
    limit_day: Option<u32>,
    remaining_minute: u32,
    remaining_day: Option<u32>,
    notice: &'static str,
}

/// A 2xx body, keys in the documented order.
#[derive(Serialize)]
struct Envelope<'a> {
    data: &'a Value,
    #[serde(rename = "_pagination", skip_serializing_if = "Option::is_none")]
    pagination: Option<&'a Value>,
    #[serde(rename = "_meta")]
    meta: MetaJson<'a>,
}

impl Meta {
    fn to_json(&self) -> MetaJson<'_> {
        MetaJson {
            credits: CreditsJson {
                used: self.used,
                balance: self.balance,
                note: self.credit_note,
            },
            cache: CacheJson {
                is_cached: self.is_cached,
                cached_at: self.cached_at.as_deref(),
                note: self.cache_note,
            },
            rate_limits: RateLimitsJson {
                limit_minute: self.limit_minute,
                limit_day: None,
                remaining_minute: self.remaining_minute,
                remaining_day: None,
                notice: NOTICE_NO_DAILY_LIMITS,
            },
        }
    }

    fn apply_headers(&self, headers: &mut HeaderMap) {
        headers.insert(X_CREDITS_USED, HeaderValue::from(self.used));
        headers.insert(X_CREDITS_BALANCE, HeaderValue::from(self.balance));
        headers.insert(
            X_IS_CACHED,
            HeaderValue::from_static(if self.is_cached { "true" } else { "false" }),
        );
        rate_headers(headers, self.limit_minute, self.remaining_minute);
    }
}

fn rate_headers(headers: &mut HeaderMap, limit: u32, remaining: u32) {
    headers.insert(X_LIMIT_MINUTE, HeaderValue::from(limit));
    headers.insert(X_REMAINING_MINUTE, HeaderValue::from(remaining));
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response<SandboxBody> {
    let (status, bytes) = match serde_json::to_vec(body) {
        Ok(bytes) => (status, Bytes::from(bytes)),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from_static(br#"{"error":"Internal Server Error."}"#),
        ),
    };
    let mut resp = Response::new(Full::new(bytes));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error(status: StatusCode, message: impl Display) -> Response<SandboxBody> {
    json_response(status, &json!({ "error": message.to_string() }))
}

/// An error answered after the request was counted: it carries the rate-limit figures too.
fn counted_error(resp: Response<SandboxBody>, limit: u32, remaining: u32) -> Response<SandboxBody> {
    let mut resp = resp;
    rate_headers(resp.headers_mut(), limit, remaining);
    resp
}

fn validation_failed(errors: &ValidationErrors) -> Response<SandboxBody> {
    json_response(StatusCode::UNPROCESSABLE_ENTITY, &errors.to_json())
}

fn etag_of(data: &Value, pagination: Option<&Value>) -> String {
    let bytes = serde_json::to_vec(&(data, pagination)).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    format!("\"{}\"", hex::encode(&digest[..16]))
}

/// RFC 9110 weak comparison of `If-None-Match` against our (strong) tag.
fn if_none_match_hits(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decoded query pairs, in request order.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn query_get<'q>(pairs: &'q [(String, String)], key: &str) -> Option<&'q str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The cache key for a GET: the path and its query, sorted, without `fresh`.
fn cache_key(path: &str, pairs: &[(String, String)]) -> String {
    let mut kept: Vec<&(String, String)> = pairs.iter().filter(|(k, _)| k != "fresh").collect();
    kept.sort();
    let query: Vec<String> = kept.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{path}?{}", query.join("&"))
}

fn wants_fresh(pairs: &[(String, String)]) -> bool {
    matches!(query_get(pairs, "fresh"), Some("true" | "1"))
}

/// `name` as an integer in `min..=max`, or a Laravel-style message.
fn integer_param(
    pairs: &[(String, String)],
    name: &'static str,
    default: u64,
    min: u64,
    max: u64,
    errors: &mut ValidationErrors,
) -> u64 {
    let Some(raw) = query_get(pairs, name) else {
        return default;
    };
    match raw.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => n,
        Ok(_) if max == u64::MAX => {
            errors.add(name, format!("The {name} field must be at least {min}."));
            default
        }
        Ok(_) => {
            errors.add(
                name,
                format!("The {name} field must be between {min} and {max}."),
            );
            default
        }
        Err(_) => {
            errors.add(name, format!("The {name} field must be an integer."));
            default
        }
    }
}

/// The host the client addressed us by, for `_pagination.next_page`.
fn request_host<B>(req: &Request<B>) -> String {
    req.headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "127.0.0.1".to_owned())
}

/// The sandbox application: settings, state and clock.
pub(crate) struct App {
    api_key: String,
    state: Mutex<SandboxState>,
    clock: Arc<dyn Clock>,
    /// Source of `x-request-id`s for requests that did not bring one.
    next_request_id: AtomicU64,
}

/// What a GET route computes on a miss: `data` and optionally `_pagination`.
type Produced = Result<(Value, Option<Value>), Box<Response<SandboxBody>>>;

impl App {
    pub(crate) fn new(options: SandboxOptions, clock: Arc<dyn Clock>) -> Self {
        Self {
            api_key: options.api_key,
            state: Mutex::new(SandboxState::new(
                options.requests_per_minute,
                options.starting_balance,
            )),
            clock,
            next_request_id: AtomicU64::new(1),
        }
    }

    /// Answers one request. Never fails: every fault is a JSON response.
    pub(crate) async fn handle<B>(&self, req: Request<B>) -> Response<SandboxBody>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let request_id = req
            .headers()
            .get(&X_REQUEST_ID)
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.to_str().is_ok())
            .cloned();
        let mut resp = self.route(req).await;
        let request_id = request_id.unwrap_or_else(|| {
            let n = self.next_request_id.fetch_add(1, Ordering::Relaxed);
            HeaderValue::from_str(&format!("sbx-{n}")).unwrap_or_else(|_| HeaderValue::from(n))
        });
        resp.headers_mut().insert(X_REQUEST_ID, request_id);
        resp
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            // The auth scheme is case-insensitive (RFC 9110 §11.1).
            .is_some_and(|(scheme, key)| {
                scheme.eq_ignore_ascii_case("bearer") && key.trim() == self.api_key
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SandboxState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn route<B>(&self, req: Request<B>) -> Response<SandboxBody>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path().to_owned();
        let Some(route) = Route::parse(&path) else {
            return error(
                StatusCode::NOT_FOUND,
                format_args!("Not Found. The route {path} could not be found."),
            );
        };
        let expected = route.method();
        let method = req.method().clone();
        let allowed = method == expected || (expected == Method::GET && method == Method::HEAD);
        if !allowed {
            let allow = if expected == Method::GET {
                "GET, HEAD"
            } else {
                "PUT"
            };
            let mut resp = error(
                StatusCode::METHOD_NOT_ALLOWED,
                format_args!(
                    "The {method} method is not supported for route {path}. Supported methods: {allow}."
                ),
            );
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
            return resp;
        }
        if !self.authorized(req.headers()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized. Please provide a valid API key in the Authorization header as a Bearer token.",
            );
        }
        let pairs = query_pairs(req.uri().query().unwrap_or(""));
        match route {
            Route::Whoami => self.get(&req, None, WHOAMI, &path, &pairs, |_, _| {
                Ok((
                    json!({
                        "id": "team_sandbox",
                        "name": "OnlyFansAPI Sandbox",
                        "sandbox": true,
                    }),
                    None,
                ))
            }),
            Route::List { account } => {
                let next_base = format!("http://{}{path}", request_host(&req));
                self.get(&req, Some(account), LIST, &path, &pairs, |state, _| {
                    let mut errors = ValidationErrors::default();
                    let limit =
                        integer_param(&pairs, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT, &mut errors);
                    let offset = integer_param(&pairs, "offset", 0, 0, u64::MAX, &mut errors);
                    if !errors.0.is_empty() {
                        return Err(Box::new(validation_failed(&errors)));
                    }
                    let links = state.links(account);
                    let p = page(links.len(), limit, offset);
                    let list: Vec<_> = links[p.start..p.end]
                        .iter()
                        .map(|l| l.to_json(true))
                        .collect();
                    let next = p
                        .next_offset
                        .map(|o| format!("{next_base}?offset={o}&limit={limit}"));
                    Ok((
                        json!({ "list": list, "hasMore": next.is_some() }),
                        Some(json!({ "next_page": next })),
                    ))
                })
            }
            Route::Stats { account, link } => {
                self.get(&req, Some(account), STATS, &path, &pairs, |state, now| {
                    let mut errors = ValidationErrors::default();
                    let mut date = |name: &'static str, default: u64| match query_get(&pairs, name)
                    {
                        None | Some("") => default,
                        Some(raw) => parse_iso8601_ms(raw).unwrap_or_else(|| {
                            errors.add(name, format!("The {name} field must be a valid date."));
                            default
                        }),
                    };
                    let before = date("before", now);
                    let after = date("after", now.saturating_sub(DEFAULT_STATS_RANGE_MS));
                    if errors.0.is_empty() && after > before {
                        errors.add(
                            "after",
                            "The after field must be a date before before.".to_owned(),
                        );
                    } else if errors.0.is_empty() && (before - after) / DAY_MS >= MAX_STATS_DAYS {
                        errors.add(
                            "after",
                            format!(
                                "The date range must not be longer than {MAX_STATS_DAYS} days."
                            ),
                        );
                    }
                    if !errors.0.is_empty() {
                        return Err(Box::new(validation_failed(&errors)));
                    }
                    let Some(link) = state.link_mut(account, link) else {
                        return Err(Box::new(error(
                            StatusCode::NOT_FOUND,
                            "Tracking link not found.",
                        )));
                    };
                    let id = link.id();
                    let days: Vec<Value> = stats_days(after, before)
                        .map(|day| {
                            let c = link.day_stats(day);
                            let d = super::clock::civil_from_days(i64::try_from(day).unwrap_or(0));
                            json!({
                                "trackingLinkId": id,
                                "timestamp": day * DAY_MS,
                                "clicks": c.clicks,
                                "claims": c.claims,
                                "follows": c.follows,
                                "subscriptions": c.subscriptions,
                                "year": d.year,
                                "month": d.month,
                                "date": d.day,
                            })
                        })
                        .collect();
                    Ok((Value::Array(days), None))
                })
            }
            Route::Update { account, link } => {
                let account = account.to_owned();
                let link = link.to_owned();
                let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
                    .collect()
                    .await
                {
                    Ok(collected) => collected.to_bytes(),
                    Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large."),
                };
                self.update(&account, &link, &body)
            }
        }
    }

    /// The GET pipeline: cache lookup (a hit is free and not counted), else rate limit, compute,
    /// charge, cache; then `ETag` / `If-None-Match`.
    fn get<B>(
        &self,
        req: &Request<B>,
        account: Option<&str>,
        pricing: Pricing,
        path: &str,
        pairs: &[(String, String)],
        produce: impl FnOnce(&mut SandboxState, u64) -> Produced,
    ) -> Response<SandboxBody> {
        let now = self.clock.now_ms();
        let key = cache_key(path, pairs);
        let mut state = self.lock();
        let limit = state.limit_minute();
        let cache_account = account.unwrap_or("");
        if pricing.cached && !wants_fresh(pairs) {
            if let Some(hit) = state.cache_get(cache_account, &key, now) {
                let meta = Meta {
                    used: 0,
                    balance: state.balance(),
                    credit_note: NOTE_CACHE_HIT,
                    is_cached: true,
                    cached_at: Some(format_rfc3339(hit.cached_at_ms)),
                    cache_note: NOTE_CACHE_BYPASS,
                    limit_minute: limit,
                    remaining_minute: state.remaining(now),
                };
                drop(state);
                return respond(
                    req.headers(),
                    &hit.data,
                    hit.pagination.as_ref(),
                    &meta,
                    Some(&hit.etag),
                );
            }
        }
        let remaining = match state.admit(now) {
            Admission::Admitted { remaining } => remaining,
            Admission::Limited { retry_after_secs } => {
                return too_many_requests(limit, retry_after_secs)
            }
        };
        if let Some(account) = account {
            if !is_fansly_account(account) {
                return counted_error(
                    error(StatusCode::NOT_FOUND, "Fansly account not found."),
                    limit,
                    remaining,
                );
            }
        }
        let (data, pagination) = match produce(&mut state, now) {
            Ok(produced) => produced,
            Err(resp) => return counted_error(*resp, limit, remaining),
        };
        let used = state.charge(pricing.credits);
        let etag = etag_of(&data, pagination.as_ref());
        let (credit_note, cache_note) = match (pricing.cached, pricing.credits) {
            (true, _) => (NOTE_CACHE_MISS, NOTE_CACHE_BYPASS),
            (false, 0) => (NOTE_FREE, NOTE_CACHE_DISABLED),
            (false, _) => (NOTE_ALWAYS, NOTE_CACHE_DISABLED),
        };
        let meta = Meta {
            used,
            balance: state.balance(),
            credit_note,
            is_cached: false,
            cached_at: None,
            cache_note,
            limit_minute: limit,
            remaining_minute: remaining,
        };
        if pricing.cached {
            state.cache_put(
                cache_account,
                &key,
                CachedPayload {
                    data: data.clone(),
                    pagination: pagination.clone(),
                    etag: etag.clone(),
                    cached_at_ms: now,
                },
            );
        }
        drop(state);
        respond(
            req.headers(),
            &data,
            pagination.as_ref(),
            &meta,
            Some(&etag),
        )
    }

    /// `PUT .../tracking-links/{id}`: counted, validated, applied, charged; invalidates the
    /// account's cached responses.
    fn update(&self, account: &str, link_id: &str, body: &[u8]) -> Response<SandboxBody> {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let limit = state.limit_minute();
        let remaining = match state.admit(now) {
            Admission::Admitted { remaining } => remaining,
            Admission::Limited { retry_after_secs } => {
                return too_many_requests(limit, retry_after_secs)
            }
        };
        if !is_fansly_account(account) {
            return counted_error(
                error(StatusCode::NOT_FOUND, "Fansly account not found."),
                limit,
                remaining,
            );
        }
        let update = match validate_update(body) {
            Ok(update) => update,
            Err(errors) => return counted_error(validation_failed(&errors), limit, remaining),
        };
        let Some(link) = state.link_mut(account, link_id) else {
            return counted_error(
                error(StatusCode::NOT_FOUND, "Tracking link not found."),
                limit,
                remaining,
            );
        };
        link.label = update.label;
        if let Some(description) = update.description {
            link.description = description;
        }
        let data = match serde_json::to_value(link.to_json(false)) {
            Ok(data) => data,
            Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error."),
        };
        state.invalidate_account(account);
        let used = state.charge(UPDATE.credits);
        let meta = Meta {
            used,
            balance: state.balance(),
            credit_note: NOTE_ALWAYS,
            is_cached: false,
            cached_at: None,
            cache_note: NOTE_CACHE_DISABLED,
            limit_minute: limit,
            remaining_minute: remaining,
        };
        drop(state);
        let mut resp = json_response(
            StatusCode::OK,
            &Envelope {
                data: &data,
                pagination: None,
                meta: meta.to_json(),
            },
        );
        meta.apply_headers(resp.headers_mut());
        resp
    }
}

/// 200 with the envelope, or 304 (no body, same figures as headers) when `If-None-Match` hits.
fn respond(
    request_headers: &HeaderMap,
    data: &Value,
    pagination: Option<&Value>,
    meta: &Meta,
    etag: Option<&str>,
) -> Response<SandboxBody> {
    let etag_value = etag.and_then(|e| HeaderValue::from_str(e).ok());
    let mut resp = match etag {
        Some(tag) if if_none_match_hits(request_headers, tag) => {
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            resp
        }
        _ => json_response(
            StatusCode::OK,
            &Envelope {
                data,
                pagination,
                meta: meta.to_json(),
            },
        ),
    };
    if let Some(v) = etag_value {
        resp.headers_mut().insert(ETAG, v);
    }
    meta.apply_headers(resp.headers_mut());
    resp
}

fn too_many_requests(limit: u32, retry_after_secs: u64) -> Response<SandboxBody> {
    let mut resp = error(
        StatusCode::TOO_MANY_REQUESTS,
        format_args!(
            "Too Many Requests. The limit of {limit} requests per minute has been reached; retry after {retry_after_secs} seconds."
        ),
    );
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    rate_headers(resp.headers_mut(), limit, 0);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        query_pairs(q)
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            pairs("before=2026-06-03T23%3A59%3A59Z&x=a+b&bad=%zz&empty"),
            vec![
                ("before".into(), "2026-06-03T23:59:59Z".into()),
                ("x".into(), "a b".into()),
                ("bad".into(), "%zz".into()),
                ("empty".into(), String::new()),
            ]
        );
    }

    #[test]
    fn cache_key_ignores_fresh_and_parameter_order() {
        let a = cache_key("/p", &pairs("limit=5&offset=10&fresh=true"));
        let b = cache_key("/p", &pairs("offset=10&limit=5"));
        assert_eq!(a, b);
        assert_ne!(a, cache_key("/p", &pairs("offset=15&limit=5")));
        assert!(wants_fresh(&pairs("fresh=true")));
        assert!(!wants_fresh(&pairs("fresh=false")));
    }

    #[test]
    fn if_none_match_uses_weak_comparison_and_lists() {
        let mut h = HeaderMap::new();
        h.insert(IF_NONE_MATCH, HeaderValue::from_static("\"a\", W/\"tag\""));
        assert!(if_none_match_hits(&h, "\"tag\""));
        assert!(!if_none_match_hits(&h, "\"other\""));
        h.insert(IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(if_none_match_hits(&h, "\"any\""));
        assert!(!if_none_match_hits(&HeaderMap::new(), "\"tag\""));
    }

    #[test]
    fn only_the_documented_paths_are_routes() {
        assert_eq!(Route::parse("/api/whoami"), Some(Route::Whoami));
        assert_eq!(
            Route::parse("/api/fansly/fansly_acct_1/tracking-links/7/stats"),
            Some(Route::Stats {
                account: "fansly_acct_1",
                link: "7"
            })
        );
        assert_eq!(
            Route::parse("/api/fansly/fansly_acct_1/tracking-links/"),
            None
        );
        assert_eq!(Route::parse("/api/fansly//tracking-links"), None);
        assert_eq!(Route::parse("/api/acct_1/tracking-links"), None);
    }

    #[tokio::test]
    async fn the_bearer_scheme_is_case_insensitive_but_the_key_is_not() {
        let app = App::new(
            SandboxOptions {
                api_key: "k".into(),
                requests_per_minute: 10,
                starting_balance: 10,
            },
            Arc::new(super::super::clock::SystemClock),
        );
        for (auth, status) in [
            ("bearer k", StatusCode::OK),
            ("BEARER k", StatusCode::OK),
            ("Bearer K", StatusCode::UNAUTHORIZED),
            ("Basic k", StatusCode::UNAUTHORIZED),
        ] {
            let req = Request::builder()
                .uri("/api/whoami")
                .header(AUTHORIZATION, auth)
                .body(Full::new(Bytes::new()))
                .unwrap();
            assert_eq!(app.handle(req).await.status(), status, "{auth}");
        }
    }
}
