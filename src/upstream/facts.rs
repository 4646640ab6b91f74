//! What an upstream answer says about credits, the cache and its rate limits (SPEC §2), in one
//! type whichever way it says it: the `x-ofapi-*` / `x-rate-limit-*` headers, read once when the
//! head arrives, and the body's `_meta`, read as it streams (`layers::meter::scan`). The credit
//! figures are as the upstream gives them: [`super::figures::accept_credits`] decides which are
//! real.

use http::HeaderMap;

use crate::limiter::UpstreamReport;

/// The five figures; a field stays `None` when absent, of the wrong type or out of range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpstreamFacts {
    /// `x-ofapi-credits-used`, `_meta._credits.used`
    pub credits_used: Option<u64>,
    /// `x-ofapi-credits-balance`, `_meta._credits.balance`
    pub balance: Option<u64>,
    /// `x-ofapi-is-cached`, `_meta._cache.is_cached`
    pub cached: Option<bool>,
    /// `x-rate-limit-limit-minute`, `_meta._rate_limits.limit_minute`
    pub limit_minute: Option<u32>,
    /// `x-rate-limit-remaining-minute`, `_meta._rate_limits.remaining_minute`
    pub remaining_minute: Option<u32>,
}

impl UpstreamFacts {
    /// The headers' figures.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        // One pass over the names rather than five lookups, each parsing and hashing a name.
        // As with `HeaderMap::get`, only a name's first value counts.
        let mut read = Self::default();
        let mut seen = [false; 5];
        for (name, value) in headers {
            let field = match name.as_str() {
                "x-ofapi-credits-used" => 0,
                "x-ofapi-credits-balance" => 1,
                "x-ofapi-is-cached" => 2,
                "x-rate-limit-limit-minute" => 3,
                "x-rate-limit-remaining-minute" => 4,
                _ => continue,
            };
            if std::mem::replace(&mut seen[field], true) {
                continue;
            }
            let Some(text) = value.to_str().ok().map(str::trim) else {
                continue;
            };
            match field {
                0 => read.credits_used = text.parse().ok(),
                1 => read.balance = text.parse().ok(),
                2 => {
                    read.cached = if text.eq_ignore_ascii_case("true") {
                        Some(true)
                    } else if text.eq_ignore_ascii_case("false") {
                        Some(false)
                    } else {
                        None
                    }
                }
                3 => read.limit_minute = text.parse().ok(),
                _ => read.remaining_minute = text.parse().ok(),
            }
        }
        read
    }
}

impl UpstreamFacts {
    /// These figures, where `other` fills what they lack.
    pub fn or(self, other: Self) -> Self {
        Self {
            credits_used: self.credits_used.or(other.credits_used),
            balance: self.balance.or(other.balance),
            cached: self.cached.or(other.cached),
            limit_minute: self.limit_minute.or(other.limit_minute),
            remaining_minute: self.remaining_minute.or(other.remaining_minute),
        }
    }

    /// What the limiter learns from them.
    pub fn limiter_report(&self) -> UpstreamReport {
        UpstreamReport {
            limit_minute: self.limit_minute,
            remaining_minute: self.remaining_minute,
            cached: self.cached == Some(true),
        }
    }

    /// Whether they say all the limiter wants to know, so it need not wait for the body.
    pub fn tell_the_limiter_everything(&self) -> bool {
        self.limit_minute.is_some() && self.remaining_minute.is_some() && self.cached.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_headers_are_read_from_their_first_value() {
        let mut headers = HeaderMap::new();
        headers.append("x-ofapi-credits-used", " 3 ".parse().unwrap());
        headers.append("x-ofapi-credits-used", "9".parse().unwrap());
        headers.append("x-ofapi-credits-balance", "many".parse().unwrap());
        headers.append("x-ofapi-credits-balance", "100".parse().unwrap());
        headers.append("x-ofapi-is-cached", "TRUE".parse().unwrap());
        headers.append("x-rate-limit-limit-minute", "5000".parse().unwrap());
        headers.append("x-rate-limit-remaining-minute", "4999".parse().unwrap());
        headers.append("x-other", "1".parse().unwrap());
        let read = UpstreamFacts::from_headers(&headers);
        assert_eq!(
            read,
            UpstreamFacts {
                credits_used: Some(3),
                balance: None,
                cached: Some(true),
                limit_minute: Some(5000),
                remaining_minute: Some(4999),
            }
        );
        assert_eq!(
            UpstreamFacts::from_headers(&HeaderMap::new()),
            UpstreamFacts::default()
        );
    }
}
