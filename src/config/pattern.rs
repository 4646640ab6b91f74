//! `allow` route patterns: parsing `"PUT /api/fansly/*/tracking-links/*"` once at validation, and
//! matching them on every request without allocating.

use std::fmt;

use http::Method;

use super::{PatternSegment, RoutePattern};

/// The methods the gateway forwards (SPEC §5); a pattern naming another could never match.
const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

impl RoutePattern {
    /// Parses `"METHOD /api/..."` (METHOD one of GET POST PUT PATCH DELETE, or `*` for any) or
    /// `"/api/..."` alone (any method). Segments: `*` is exactly one, `**` zero or more,
    /// anything else is literal. The error is a short reason, without the input.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (method, path) = match s.split_once(char::is_whitespace) {
            _ if s.starts_with('/') => (None, s),
            Some((m, rest)) => (Some(m), rest.trim_start()),
            None => return Err("expected \"METHOD /api/...\" or \"/api/...\"".to_owned()),
        };
        let method = match method {
            None | Some("*") => None,
            Some(m) => match METHODS.iter().find(|known| known.as_str() == m) {
                Some(known) => Some(known.clone()),
                None => {
                    return Err(format!(
                        "unknown method `{m}`, expected GET, POST, PUT, PATCH, DELETE or *"
                    ))
                }
            },
        };
        if !path.starts_with("/api/") {
            return Err("path must start with /api/".to_owned());
        }
        let mut segments = Vec::new();
        for seg in path[1..].split('/') {
            segments.push(match seg {
                "" => return Err("empty path segment (doubled or trailing /)".to_owned()),
                "*" => PatternSegment::AnyOne,
                "**" => PatternSegment::AnyMany,
                "." | ".." => return Err("`.` and `..` segments never match".to_owned()),
                lit if lit.contains('*') => {
                    return Err("`*` and `**` must be a whole segment".to_owned())
                }
                lit if lit
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#')) =>
                {
                    return Err("path may not contain whitespace, `?` or `#`".to_owned())
                }
                lit => PatternSegment::Literal(lit.to_owned()),
            });
        }
        Ok(Self { method, segments })
    }

    /// Whether a request matches. `path` is the request's already-checked absolute path without
    /// query (`/api/fansly/acct/tracking-links/1`); no allocation happens here.
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        match path.strip_prefix('/') {
            Some(rest) => match_segments(&self.segments, Some(rest)),
            None => false,
        }
    }
}

/// Splits off the first segment of `rest` (segments joined by `/`, no leading slash).
fn split_first(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('/') {
        Some((seg, next)) => (seg, Some(next)),
        None => (rest, None),
    }
}

/// `rest` is `None` once every path segment is consumed. Backtracks only at `**`; patterns are
/// short, so the worst case stays tiny.
fn match_segments(pattern: &[PatternSegment], rest: Option<&str>) -> bool {
    let Some((first, more)) = pattern.split_first() else {
        return rest.is_none();
    };
    match first {
        PatternSegment::AnyMany => {
            if match_segments(more, rest) {
                return true;
            }
            match rest {
                Some(r) => match_segments(pattern, split_first(r).1),
                None => false,
            }
        }
        PatternSegment::AnyOne | PatternSegment::Literal(_) => {
            let Some(r) = rest else { return false };
            let (seg, next) = split_first(r);
            if let PatternSegment::Literal(lit) = first {
                if lit != seg {
                    return false;
                }
            }
            match_segments(more, next)
        }
    }
}

/// The pattern as an operator would write it, for summaries.
impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(m) = &self.method {
            write!(f, "{m} ")?;
        }
        for seg in &self.segments {
            f.write_str("/")?;
            f.write_str(match seg {
                PatternSegment::Literal(lit) => lit,
                PatternSegment::AnyOne => "*",
                PatternSegment::AnyMany => "**",
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RoutePattern {
        RoutePattern::parse(s).unwrap()
    }

    #[test]
    fn star_matches_exactly_one_segment() {
        let pat = p("PUT /api/fansly/*/tracking-links/*");
        assert!(pat.matches(&Method::PUT, "/api/fansly/acct/tracking-links/1"));
        assert!(!pat.matches(&Method::PUT, "/api/fansly/acct/tracking-links"));
        assert!(!pat.matches(&Method::PUT, "/api/fansly/acct/tracking-links/1/stats"));
        assert!(!pat.matches(&Method::PUT, "/api/fansly/a/b/tracking-links/1"));
    }

    #[test]
    fn double_star_matches_zero_or_more_segments() {
        let pat = p("GET /api/fansly/**");
        assert!(pat.matches(&Method::GET, "/api/fansly"));
        assert!(pat.matches(&Method::GET, "/api/fansly/acct"));
        assert!(pat.matches(&Method::GET, "/api/fansly/acct/tracking-links/1/stats"));
        assert!(!pat.matches(&Method::GET, "/api/acct/fansly"));
        assert!(!pat.matches(&Method::GET, "/api/fanslyx/acct"));
    }

    #[test]
    fn double_star_in_the_middle_backtracks() {
        let pat = p("/api/**/tracking-links/*");
        assert!(pat.matches(&Method::GET, "/api/tracking-links/1"));
        assert!(pat.matches(&Method::GET, "/api/fansly/acct/tracking-links/1"));
        assert!(pat.matches(
            &Method::GET,
            "/api/fansly/tracking-links/acct/tracking-links/1"
        ));
        assert!(!pat.matches(&Method::GET, "/api/fansly/acct/tracking-links"));
        assert!(!pat.matches(&Method::GET, "/api/fansly/acct/tracking-links/1/stats"));
    }

    #[test]
    fn method_restricts_and_no_method_or_star_means_any() {
        let put = p("PUT /api/whoami");
        assert!(put.matches(&Method::PUT, "/api/whoami"));
        assert!(!put.matches(&Method::GET, "/api/whoami"));
        for any in [p("/api/whoami"), p("* /api/whoami")] {
            assert_eq!(any.method, None);
            for m in METHODS {
                assert!(any.matches(&m, "/api/whoami"));
            }
        }
    }

    #[test]
    fn literal_segments_must_match_whole_and_trailing_segments_do_not_match() {
        let pat = p("GET /api/accounts");
        assert!(pat.matches(&Method::GET, "/api/accounts"));
        assert!(!pat.matches(&Method::GET, "/api/accounts/acct_1"));
        assert!(!pat.matches(&Method::GET, "/api/account"));
        assert!(!pat.matches(&Method::GET, "/api"));
        assert!(!pat.matches(&Method::GET, "api/accounts"));
    }

    #[test]
    fn parse_rejects_bad_patterns_with_a_reason() {
        for bad in [
            "",
            "GET",
            "get /api/x",
            "HEAD /api/x",
            "GET /v1/x",
            "/api",
            "/api/",
            "/api//x",
            "/api/x/",
            "/api/x*",
            "/api/../x",
            "/api/x?y=1",
            "GET  /api/x extra",
        ] {
            assert!(RoutePattern::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "PUT /api/fansly/*/tracking-links/*",
            "/api/**",
            "GET /api/whoami",
        ] {
            assert_eq!(p(s).to_string(), s);
            assert_eq!(p(&p(s).to_string()), p(s));
        }
    }
}
