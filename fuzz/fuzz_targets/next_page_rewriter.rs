//! The streaming `_pagination.next_page` rewriter, fed the body in chunks cut where the fuzzer
//! says.
//!
//! - The output does not depend on the chunking, nor does the `_meta` it finds on the way (the
//!   same as a `MetaScanner`'s); it never holds back more than its bound, and nothing after
//!   `finish`.
//! - The output is the input with zero or more string contents that start with the upstream base
//!   (decoded, then `/`, `?`, `#` or the end of the string) having that base replaced by the
//!   public one, written with `\/` exactly when the original wrote a slash escaped. Not one other
//!   byte differs.
//! - On valid JSON whose followed objects repeat no key, the output is valid JSON, and exactly
//!   the `next_page` strings of `_pagination` and `_meta._pagination` that start with the base
//!   are rewritten.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ofapi_gateway::fuzzing::{MetaScanner, NextPageRewriter};
use ofapi_gateway_fuzz::{
    chunks, followed_objects_are_unique, split_input, starts_with_base, Json, UPSTREAM,
};

/// Public bases to rewrite to; none holds a `"` (the byte-level check below relies on it).
const PUBLIC: [&str; 4] = [
    "http://127.0.0.1:8080",
    "https://gw.example/base",
    "https://app.onlyfansapi.co",
    "http://[::1]:9",
];

fn run(public: &str, pieces: &[&[u8]]) -> (Vec<u8>, ofapi_gateway::fuzzing::UpstreamFacts) {
    let mut rewriter = NextPageRewriter::new(UPSTREAM, public);
    let bound = 6 * (UPSTREAM.len() + 1);
    let mut out = Vec::new();
    for piece in pieces {
        out.extend_from_slice(&rewriter.push(Bytes::copy_from_slice(piece)));
        assert!(rewriter.held_len() <= bound, "{} held", rewriter.held_len());
    }
    out.extend_from_slice(&rewriter.finish());
    assert_eq!(rewriter.held_len(), 0);
    (out, rewriter.found())
}

/// JSON string contents of `s`, slashes optionally escaped (what the rewriter writes).
fn contents(s: &str, escape_slashes: bool) -> Vec<u8> {
    if escape_slashes {
        s.replace('/', "\\/").into_bytes()
    } else {
        s.as_bytes().to_vec()
    }
}

/// Walks input and output together; returns how many bases were replaced, or panics at the
/// first difference that is not a replacement.
fn replacements(input: &[u8], output: &[u8], public: &str) -> usize {
    let (mut i, mut o, mut count) = (0, 0, 0);
    loop {
        let same = input[i..]
            .iter()
            .zip(&output[o..])
            .take_while(|(a, b)| a == b)
            .count();
        i += same;
        o += same;
        if i == input.len() && o == output.len() {
            return count;
        }
        // A replacement starts at the first byte of a string's contents: the common prefix may
        // reach into it (both bases start `http`), never across a quote.
        let start = input[..i].iter().rposition(|&b| b == b'"').map(|q| q + 1);
        let Some(start) = start.filter(|&s| i - s <= public.len() * 2) else {
            panic!(
                "byte {i} differs outside a string: {:?}",
                String::from_utf8_lossy(&input[i.saturating_sub(20)..])
            );
        };
        let back = i - start;
        let (i0, o0) = (start, o - back);
        let Some((raw_len, escaped)) = starts_with_base(&input[i0..], UPSTREAM.as_bytes()) else {
            panic!(
                "rewrote a value that does not start with the base at {i0}: {:?}",
                String::from_utf8_lossy(&input[i0..])
            );
        };
        let want = contents(public, escaped);
        assert!(
            output[o0..].starts_with(&want),
            "at {o0}: {:?}",
            String::from_utf8_lossy(&output[o0..])
        );
        i = i0 + raw_len;
        o = o0 + want.len();
        count += 1;
    }
}

/// The `next_page` strings the rewriter must rewrite in a document.
fn expected_rewrites(root: &Json) -> usize {
    let paginations = root
        .all("_pagination")
        .chain(root.all("_meta").flat_map(|m| m.all("_pagination")));
    paginations
        .flat_map(|p| p.all("next_page"))
        .filter(|v| match v {
            Json::String(s) => s
                .strip_prefix(UPSTREAM)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?', '#'])),
            _ => false,
        })
        .count()
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, data)) = data.split_first() else {
        return;
    };
    let public = PUBLIC[usize::from(which) % PUBLIC.len()];
    let (points, body) = split_input(data);
    let (whole, found) = run(public, &[body]);
    let (cut, cut_found) = run(public, &chunks(body, &points));
    assert_eq!(cut, whole, "cut at {points:?}");
    assert_eq!(cut_found, found);
    let mut scanner = MetaScanner::new();
    scanner.feed(body);
    assert_eq!(found, scanner.found());

    let count = replacements(body, &whole, public);

    let Some(root) = Json::parse(body) else {
        return;
    };
    if !followed_objects_are_unique(&root) {
        return;
    }
    assert_eq!(
        count,
        expected_rewrites(&root),
        "{:?}",
        String::from_utf8_lossy(body)
    );
    let rewritten = Json::parse(&whole).expect("a rewritten valid document stays valid");
    assert_eq!(rewritten, expected_document(&root, public));
});

/// `root` with its qualifying `next_page` strings rewritten.
fn expected_document(root: &Json, public: &str) -> Json {
    fn fix_pagination(pagination: &mut Json, public: &str) {
        let Json::Object(members) = pagination else {
            return;
        };
        for (key, value) in members {
            if let (true, Json::String(s)) = (key == "next_page", &mut *value) {
                if let Some(rest) = s.strip_prefix(UPSTREAM) {
                    if rest.is_empty() || rest.starts_with(['/', '?', '#']) {
                        *s = format!("{public}{rest}");
                    }
                }
            }
        }
    }
    let mut root = root.clone();
    if let Json::Object(members) = &mut root {
        for (key, value) in members {
            match (key.as_str(), value) {
                ("_pagination", pagination) => fix_pagination(pagination, public),
                ("_meta", Json::Object(meta)) => {
                    for (key, value) in meta {
                        if key == "_pagination" {
                            fix_pagination(value, public);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    root
}
