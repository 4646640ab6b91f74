//! Points pagination links at the gateway: a list's `_pagination.next_page` (top level or inside
//! `_meta`) is a full upstream URL, which a client must not follow around the gateway.
//!
//! [`NextPageRewriter`] drives the scanner's tokenizer over the stream, so only a `next_page`
//! string on one of those two paths is touched (a `next_page` inside `data` is not). At the start
//! of such a string it holds back the bytes that could still be the upstream base URL, decoded
//! from either escaping form (`https://…` or Laravel's `https:\/\/…`), and then sends either the
//! public base (in the same form) or the held bytes unchanged. Everything else is sent as it comes,
//! and a chunk without a candidate is returned as the very same `Bytes`.
//!
//! The base must be followed by `/`, `?`, `#` or the end of the string, so
//! `https://app.onlyfansapi.com.example` is left alone.

use bytes::{Bytes, BytesMut};

use super::scan::{Step, Tokenizer};
use crate::upstream::facts::UpstreamFacts;

/// Rewrites `next_page` values that start with the upstream base URL to start with the
/// gateway's public URL; see the module docs.
///
/// If the rewrite may change the body's length ([`Self::may_change_length`]), the caller must
/// remove the response's `Content-Length` header (hyper then sends it chunked on HTTP/1.1).
#[derive(Clone, Debug)]
pub struct NextPageRewriter {
    tokenizer: Tokenizer,
    /// The upstream base, without a trailing slash, as decoded characters.
    upstream: Box<[u8]>,
    /// The public base as JSON string contents, slashes as they are.
    public_plain: Bytes,
    /// The public base as JSON string contents, slashes escaped as `\/`.
    public_escaped: Bytes,
    /// False when the two bases are the same (or the upstream one is empty): nothing to do.
    enabled: bool,
    /// Set while the start of a `next_page` value is being compared with the upstream base.
    matching: bool,
    matcher: Matcher,
}

impl NextPageRewriter {
    /// `upstream_base` and `public_base` are origins such as `https://app.onlyfansapi.com` and
    /// `http://127.0.0.1:8080` (a trailing slash is ignored).
    pub fn new(upstream_base: &str, public_base: &str) -> Self {
        let upstream = upstream_base.trim_end_matches('/');
        let public = public_base.trim_end_matches('/');
        Self {
            tokenizer: Tokenizer::default(),
            upstream: upstream.as_bytes().into(),
            public_plain: json_string_contents(public, false),
            public_escaped: json_string_contents(public, true),
            enabled: !upstream.is_empty() && upstream != public,
            matching: false,
            matcher: Matcher::default(),
        }
    }

    /// True unless the rewriter can never change a byte. When true and the response declares a
    /// `Content-Length`, the caller must remove that header: the length is no longer known.
    pub fn may_change_length(&self) -> bool {
        self.enabled
    }

    /// Takes the next chunk of the body and returns what may be sent now. At most the bytes that
    /// could still be the start of the upstream base inside a `next_page` value are held back
    /// (see [`Self::held_len`]); a chunk without a candidate comes back as the same `Bytes`.
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        if !self.enabled || (self.tokenizer.is_stopped() && !self.matching) {
            self.tokenizer.feed_all(&chunk);
            return chunk;
        }
        let input = &chunk[..];
        let mut out = Out::default();
        // Start of the part of `chunk` neither sent nor held yet.
        let mut from = 0;
        let mut at = 0;
        loop {
            if self.matching {
                let start = at;
                let mut verdict = Verdict::Pending;
                while let Some(&b) = input.get(at) {
                    at += 1;
                    verdict = self.matcher.feed(b, &self.upstream);
                    if verdict != Verdict::Pending {
                        break;
                    }
                }
                // Inside a string: the tokenizer cannot stop at another `next_page` here.
                self.tokenizer
                    .feed_all(input.get(start..at).unwrap_or_default());
                from = at;
                match verdict {
                    Verdict::Pending => break,
                    Verdict::Rewrite => {
                        let public = if self.matcher.slash_escaped {
                            &self.public_escaped
                        } else {
                            &self.public_plain
                        };
                        out.extend(public);
                        out.extend(self.matcher.held_after_base());
                    }
                    Verdict::Keep => out.extend(&self.matcher.held),
                }
                self.matching = false;
                self.matcher.reset();
            }
            match self.tokenizer.advance(input.get(at..).unwrap_or_default()) {
                Step::Done => break,
                Step::NextPageAt(offset) => {
                    at += offset;
                    out.extend_from_chunk(&chunk, from, at);
                    from = at;
                    self.matching = true;
                }
            }
        }
        if from == 0 && out.is_empty() {
            return chunk;
        }
        out.extend_from_chunk(&chunk, from, input.len());
        out.into_bytes()
    }

    /// Ends the body: returns the bytes still held (unchanged, since the value never finished).
    pub fn finish(&mut self) -> Bytes {
        if !self.matching {
            return Bytes::new();
        }
        self.matching = false;
        let held = Bytes::copy_from_slice(&self.matcher.held);
        self.matcher.reset();
        held
    }

    /// Bytes received but not yet returned. Bounded by six bytes (the longest JSON escape) per
    /// character of the upstream base, plus one character.
    pub fn held_len(&self) -> usize {
        if self.matching {
            self.matcher.held.len()
        } else {
            0
        }
    }

    /// The `_meta` figures of the bytes pushed so far, as a `MetaScanner` fed the same bytes
    /// would find them: with a rewriter, one pass does both.
    pub fn found(&self) -> UpstreamFacts {
        self.tokenizer.found
    }
}

/// `s` as the contents of a JSON string, optionally with every `/` written `\/`.
fn json_string_contents(s: &str, escape_slashes: bool) -> Bytes {
    let mut out = BytesMut::with_capacity(s.len() * 2);
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'/' if escape_slashes => out.extend_from_slice(b"\\/"),
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
            }
            _ => out.extend_from_slice(&[b]),
        }
    }
    out.freeze()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Could still be the upstream base: keep holding.
    Pending,
    /// The value starts with the upstream base followed by a boundary.
    Rewrite,
    /// It does not: send the held bytes unchanged.
    Keep,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Escape {
    #[default]
    None,
    Backslash,
    Unicode {
        left: u8,
        code: u16,
    },
}

/// Compares the raw contents of a string value with the upstream base, character by decoded
/// character, keeping the raw bytes it has seen.
#[derive(Clone, Debug, Default)]
struct Matcher {
    held: Vec<u8>,
    /// Characters of the upstream base matched so far.
    matched: usize,
    /// `held.len()` when the whole base had matched: what follows is kept after the public base.
    base_end: usize,
    escape: Escape,
    /// Whether the value writes a slash as an escape: the public base is written the same way.
    slash_escaped: bool,
}

impl Matcher {
    fn reset(&mut self) {
        self.held.clear();
        self.matched = 0;
        self.base_end = 0;
        self.escape = Escape::None;
        self.slash_escaped = false;
    }

    fn held_after_base(&self) -> &[u8] {
        self.held.get(self.base_end..).unwrap_or_default()
    }

    fn feed(&mut self, b: u8, base: &[u8]) -> Verdict {
        self.held.push(b);
        let c = match self.escape {
            Escape::None => match b {
                b'\\' => {
                    self.escape = Escape::Backslash;
                    return Verdict::Pending;
                }
                // The closing quote: the value is exactly the base.
                b'"' if self.matched == base.len() => return Verdict::Rewrite,
                b'"' => return Verdict::Keep,
                _ => b,
            },
            Escape::Backslash => {
                self.escape = Escape::None;
                match b {
                    b'/' => {
                        self.slash_escaped = true;
                        b'/'
                    }
                    b'"' | b'\\' => b,
                    b'u' => {
                        self.escape = Escape::Unicode { left: 4, code: 0 };
                        return Verdict::Pending;
                    }
                    // Other escapes decode to control characters, which no URL base holds.
                    _ => return Verdict::Keep,
                }
            }
            Escape::Unicode { left, code } => {
                let Some(digit) = hex_digit(b) else {
                    return Verdict::Keep;
                };
                let code = code << 4 | digit;
                if left > 1 {
                    self.escape = Escape::Unicode {
                        left: left - 1,
                        code,
                    };
                    return Verdict::Pending;
                }
                self.escape = Escape::None;
                match u8::try_from(code) {
                    Ok(c) if c.is_ascii() => {
                        if c == b'/' {
                            self.slash_escaped = true;
                        }
                        c
                    }
                    _ => return Verdict::Keep,
                }
            }
        };
        match base.get(self.matched) {
            Some(&expected) if c == expected => {
                self.matched += 1;
                if self.matched == base.len() {
                    self.base_end = self.held.len();
                }
                Verdict::Pending
            }
            Some(_) => Verdict::Keep,
            None if matches!(c, b'/' | b'?' | b'#') => Verdict::Rewrite,
            None => Verdict::Keep,
        }
    }
}

fn hex_digit(b: u8) -> Option<u16> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u16::try_from(d).ok())
}

/// The bytes `push` returns: nothing, one slice of the input chunk (zero-copy), or a copy when
/// pieces had to be joined.
#[derive(Debug, Default)]
enum Out {
    #[default]
    Empty,
    Slice(Bytes),
    Owned(BytesMut),
}

impl Out {
    fn is_empty(&self) -> bool {
        match self {
            Out::Empty => true,
            Out::Slice(b) => b.is_empty(),
            Out::Owned(b) => b.is_empty(),
        }
    }

    fn extend_from_chunk(&mut self, chunk: &Bytes, from: usize, to: usize) {
        if from >= to {
            return;
        }
        match self {
            Out::Empty => *self = Out::Slice(chunk.slice(from..to)),
            _ => self.extend(chunk.get(from..to).unwrap_or_default()),
        }
    }

    fn extend(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        match self {
            Out::Owned(owned) => owned.extend_from_slice(bytes),
            Out::Empty => *self = Out::Owned(BytesMut::from(bytes)),
            Out::Slice(slice) => {
                let mut owned = BytesMut::with_capacity(slice.len() + bytes.len() + 64);
                owned.extend_from_slice(slice);
                owned.extend_from_slice(bytes);
                *self = Out::Owned(owned);
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Out::Empty => Bytes::new(),
            Out::Slice(slice) => slice,
            Out::Owned(owned) => owned.freeze(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::meter::scan::tests::{
        big_body, fixture_found, random_split, sample_bodies, Rng, FIXTURE,
    };
    use crate::layers::meter::scan::MetaScanner;

    const UPSTREAM: &str = "https://app.onlyfansapi.com";
    const PUBLIC: &str = "http://127.0.0.1:8080";

    fn rewriter() -> NextPageRewriter {
        NextPageRewriter::new(UPSTREAM, PUBLIC)
    }

    /// Pushes `pieces` through a fresh rewriter, checking the hold-back bound after each.
    fn rewrite(pieces: &[&[u8]]) -> Vec<u8> {
        let mut rewriter = rewriter();
        let bound = 6 * (UPSTREAM.len() + 1);
        let mut out = Vec::new();
        for piece in pieces {
            out.extend_from_slice(&rewriter.push(Bytes::copy_from_slice(piece)));
            assert!(rewriter.held_len() <= bound, "{} held", rewriter.held_len());
        }
        out.extend_from_slice(&rewriter.finish());
        assert_eq!(rewriter.held_len(), 0);
        out
    }

    /// Checks `input` → `expected` fed whole, byte by byte and split at every point.
    fn check(input: &str, expected: &str) {
        let input = input.as_bytes();
        assert_eq!(String::from_utf8_lossy(&rewrite(&[input])), expected);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(String::from_utf8_lossy(&rewrite(&bytes)), expected);
        for at in 0..=input.len() {
            let (a, b) = input.split_at(at);
            assert_eq!(
                String::from_utf8_lossy(&rewrite(&[a, b])),
                expected,
                "split at {at}"
            );
        }
    }

    #[test]
    fn top_level_next_page_is_rewritten_in_plain_form() {
        check(
            r#"{"data":[1,2],"_pagination":{"next_page":"https://app.onlyfansapi.com/api/acct_1/fans?limit=10&offset=10"}}"#,
            r#"{"data":[1,2],"_pagination":{"next_page":"http://127.0.0.1:8080/api/acct_1/fans?limit=10&offset=10"}}"#,
        );
    }

    #[test]
    fn top_level_next_page_is_rewritten_in_escaped_form() {
        check(
            r#"{"data":[],"_pagination":{"next_page":"https:\/\/app.onlyfansapi.com\/api\/acct_1\/fans?offset=10"}}"#,
            r#"{"data":[],"_pagination":{"next_page":"http:\/\/127.0.0.1:8080\/api\/acct_1\/fans?offset=10"}}"#,
        );
    }

    #[test]
    fn next_page_inside_meta_is_rewritten_in_both_forms() {
        check(
            r#"{"data":[],"_meta":{"_credits":{"used":1},"_pagination":{"next_page":"https://app.onlyfansapi.com/api/x?offset=10"}}}"#,
            r#"{"data":[],"_meta":{"_credits":{"used":1},"_pagination":{"next_page":"http://127.0.0.1:8080/api/x?offset=10"}}}"#,
        );
        check(
            r#"{"data":[],"_meta":{"_pagination":{"next_page":"https:\/\/app.onlyfansapi.com\/api\/x?offset=10"}}}"#,
            r#"{"data":[],"_meta":{"_pagination":{"next_page":"http:\/\/127.0.0.1:8080\/api\/x?offset=10"}}}"#,
        );
    }

    #[test]
    fn unicode_escaped_slashes_and_a_bare_base_are_rewritten() {
        check(
            r#"{"_pagination":{"next_page":"https:\u002f\u002Fapp.onlyfansapi.com\u002fapi"}}"#,
            r#"{"_pagination":{"next_page":"http:\/\/127.0.0.1:8080\u002fapi"}}"#,
        );
        check(
            r#"{"_pagination":{"next_page":"https://app.onlyfansapi.com"}}"#,
            r#"{"_pagination":{"next_page":"http://127.0.0.1:8080"}}"#,
        );
    }

    #[test]
    fn other_values_are_left_alone() {
        for body in [
            r#"{"_pagination":{"next_page":null,"prev_page":"https://app.onlyfansapi.com/api/x"}}"#,
            r#"{"_pagination":{"next_page":"https://example.com/api/x?offset=10"}}"#,
            r#"{"_pagination":{"next_page":"https:\/\/example.com\/api"}}"#,
            r#"{"_pagination":{"next_page":"https://app.onlyfansapi.com.evil.example/api"}}"#,
            r#"{"_pagination":{"next_page":"https://app.onlyfansapi.co"}}"#,
            r#"{"_pagination":{"next_page":"https:\/\/app.onlyfansapi.com\"x"}}"#,
            r#"{"_pagination":{"next_page":"https:\/\/app.onlyfansapi.com\n"}}"#,
            r#"{"_pagination":{"next_page":"HTTPS://app.onlyfansapi.com/api"}}"#,
            r#"{"_pagination":{"next_page":""}}"#,
            r#"{"_pagination":{"next_page":42}}"#,
            r#"{"data":{"_pagination":{"next_page":"https://app.onlyfansapi.com/api/x"}},"_meta":{"_credits":{"next_page":"https://app.onlyfansapi.com/api"}}}"#,
            r#"{"data":[{"next_page":"https://app.onlyfansapi.com/api/x"}],"next_page":"https://app.onlyfansapi.com/api/y"}"#,
            r#"<html>https://app.onlyfansapi.com/</html>"#,
        ] {
            check(body, body);
        }
    }

    #[test]
    fn a_truncated_candidate_is_sent_unchanged_by_finish() {
        check(
            r#"{"_pagination":{"next_page":"https:\/\/app.only"#,
            r#"{"_pagination":{"next_page":"https:\/\/app.only"#,
        );
    }

    #[test]
    fn a_chunk_without_a_candidate_comes_back_as_the_same_bytes() {
        let mut rewriter = rewriter();
        for chunk in FIXTURE.chunks(100) {
            let chunk = Bytes::copy_from_slice(chunk);
            let out = rewriter.push(chunk.clone());
            assert_eq!(out.as_ptr(), chunk.as_ptr());
            assert_eq!(out.len(), chunk.len());
        }
        assert!(rewriter.finish().is_empty());
    }

    #[test]
    fn only_a_possible_match_is_held_back() {
        let body = br#"{"data":[],"_pagination":{"next_page":"https://app.onlyfansapi.com/api/x","limit":10}}"#;
        let value_start = body
            .windows(8)
            .position(|w| w == b"https://")
            .unwrap_or_default();
        let base_end = value_start + UPSTREAM.len();
        let mut rewriter = rewriter();
        let mut sent = 0;
        for (at, b) in body.iter().enumerate() {
            sent += rewriter.push(Bytes::copy_from_slice(&[*b])).len();
            if at < value_start || at >= base_end {
                assert_eq!(rewriter.held_len(), 0, "byte {at}");
            } else {
                assert_eq!(rewriter.held_len(), at + 1 - value_start, "byte {at}");
            }
        }
        assert!(rewriter.finish().is_empty());
        assert_eq!(sent, body.len() - UPSTREAM.len() + PUBLIC.len());
    }

    #[test]
    fn a_rewriter_finds_the_same_meta_as_a_scanner_at_random_splits() {
        let mut rng = Rng::new(42);
        for body in sample_bodies() {
            let mut scanner = MetaScanner::new();
            scanner.feed(&body);
            for _ in 0..300 {
                let mut rewriter = rewriter();
                for piece in random_split(&body, &mut rng) {
                    rewriter.push(Bytes::copy_from_slice(piece));
                }
                rewriter.finish();
                assert_eq!(rewriter.found(), scanner.found());
            }
        }
    }

    #[test]
    fn random_splits_rewrite_the_same_as_the_whole_body() {
        let mut rng = Rng::new(99);
        for body in sample_bodies() {
            let whole = rewrite(&[&body]);
            for _ in 0..300 {
                assert_eq!(rewrite(&random_split(&body, &mut rng)), whole);
            }
        }
    }

    #[test]
    fn equal_bases_never_change_the_length() {
        assert!(rewriter().may_change_length());
        assert!(
            !NextPageRewriter::new(UPSTREAM, "https://app.onlyfansapi.com/").may_change_length()
        );
        assert!(!NextPageRewriter::new("", PUBLIC).may_change_length());
    }

    #[test]
    fn a_public_base_with_json_specials_stays_valid_json() {
        let mut rewriter = NextPageRewriter::new(UPSTREAM, "http://h/\"q\\");
        let out = rewriter.push(Bytes::from_static(
            br#"{"_pagination":{"next_page":"https://app.onlyfansapi.com/api"}}"#,
        ));
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["_pagination"]["next_page"], "http://h/\"q\\/api");
    }

    #[test]
    fn a_fifty_megabyte_body_in_64k_chunks_is_rewritten_with_bounded_hold_back() {
        let mut body = big_body(50 * 1024 * 1024);
        // Close `_meta` early to add a `_pagination` after it, in the escaped form.
        let end = body.iter().rposition(|&b| b == b'}').unwrap();
        body.truncate(end);
        let tail = br#","_pagination":{"next_page":"https:\/\/app.onlyfansapi.com\/api\/acct_1\/fans?offset=10"}}"#;
        body.extend_from_slice(tail);
        let body = Bytes::from(body);
        let mut rewriter = rewriter();
        let bound = 6 * (UPSTREAM.len() + 1);
        let mut out = BytesMut::with_capacity(body.len());
        let mut copied = 0;
        let mut elapsed = std::time::Duration::ZERO;
        let mut at = 0;
        while at < body.len() {
            let chunk = body.slice(at..(at + 64 * 1024).min(body.len()));
            at += chunk.len();
            let started = std::time::Instant::now();
            let sent = rewriter.push(chunk.clone());
            elapsed += started.elapsed();
            if sent.as_ptr() != chunk.as_ptr() || sent.len() != chunk.len() {
                copied += 1;
            }
            assert!(rewriter.held_len() <= bound);
            out.extend_from_slice(&sent);
        }
        out.extend_from_slice(&rewriter.finish());
        let expected_tail = br#","_pagination":{"next_page":"http:\/\/127.0.0.1:8080\/api\/acct_1\/fans?offset=10"}}"#;
        assert!(out.ends_with(expected_tail));
        assert_eq!(out.len(), body.len() - UPSTREAM.len() + PUBLIC.len());
        assert!(copied <= 2, "{copied} chunks copied");
        assert_eq!(rewriter.found(), fixture_found());
        let mb = body.len() as f64 / 1e6;
        eprintln!(
            "meter rewrite+scan: {mb:.1} MB in {elapsed:?} = {:.0} MB/s",
            mb / elapsed.as_secs_f64()
        );
    }

    /// Property tests: generated list responses, cut anywhere (the `next_page_rewriter` fuzz
    /// target in `fuzz/` explores arbitrary bytes; these run in every `cargo test`).
    mod properties {
        use super::*;
        use crate::layers::meter::scan::tests::properties::{cut, json_noise};
        use proptest::prelude::*;
        use serde_json::{json, Value};

        proptest! {
            #[test]
            fn only_the_next_page_base_changes_however_the_body_is_cut(
                rest in "(/[a-z0-9_]{1,8}){0,3}(\\?offset=[0-9]{1,3})?(#x)?",
                other in "https://[a-z.]{1,12}(/x)?",
                ours in any::<bool>(),
                in_meta in any::<bool>(),
                escaped in any::<bool>(),
                data in json_noise(),
                at in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
            ) {
                let next_page = if ours { format!("{UPSTREAM}{rest}") } else { other };
                let pagination = json!({"next_page": next_page, "prev_page": null});
                let document = if in_meta {
                    json!({"data": data, "_meta": {"_credits": {"used": 1}, "_pagination": pagination}})
                } else {
                    json!({"data": data, "_pagination": pagination, "_meta": {"_credits": {"used": 1}}})
                };
                let mut body = document.to_string();
                if escaped {
                    // Laravel's form: every slash escaped (valid JSON, same document).
                    body = body.replace('/', "\\/");
                }
                let out = rewrite(&cut(body.as_bytes(), &at));
                prop_assert_eq!(&out, &rewrite(&[body.as_bytes()]));
                let mut expected = document;
                if ours {
                    let path = if in_meta { "/_meta/_pagination/next_page" } else { "/_pagination/next_page" };
                    if let Some(value) = expected.pointer_mut(path) {
                        *value = Value::from(format!("{PUBLIC}{rest}"));
                    }
                }
                let got: Value = serde_json::from_slice(&out).expect("still JSON");
                prop_assert_eq!(got, expected);
                // The public base is written the way the upstream wrote its slashes.
                if ours {
                    let public = if escaped { PUBLIC.replace('/', "\\/") } else { PUBLIC.to_owned() };
                    prop_assert!(String::from_utf8_lossy(&out).contains(&public));
                }
            }
        }
    }
}
