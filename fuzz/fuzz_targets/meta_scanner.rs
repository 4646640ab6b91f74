//! The streaming `_meta` scanner (SPEC §7), fed the body in chunks cut where the fuzzer says.
//!
//! - What it finds, and whether it stopped, does not depend on the chunking.
//! - On a valid JSON document it never stops, and when the objects it follows have no repeated
//!   key it finds exactly what a serde_json parse of the whole document holds: each figure if
//!   present with the right type and range, else `None`.
//! - With repeated keys (which JSON leaves to the reader), every figure it reports is one of the
//!   values the document gives that field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ofapi_gateway::fuzzing::{MetaScanner, UpstreamFacts};
use ofapi_gateway_fuzz::{chunks, followed_objects_are_unique, split_input, Json};

fn scan<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> (UpstreamFacts, bool) {
    let mut scanner = MetaScanner::new();
    for piece in pieces {
        scanner.feed(piece);
    }
    (scanner.found(), scanner.is_stopped())
}

/// Every value `root._meta.<object>.<field>` has in the document.
fn candidates<'a>(root: &'a Json, object: &'a str, field: &'a str) -> Vec<&'a Json> {
    root.all("_meta")
        .flat_map(|meta| meta.all(object))
        .flat_map(|o| o.all(field))
        .collect()
}

fn integer(value: &Json) -> Option<u64> {
    match value {
        Json::Number(n) => *n,
        _ => None,
    }
}

fn small(value: &Json) -> Option<u32> {
    integer(value).and_then(|n| u32::try_from(n).ok())
}

fn boolean(value: &Json) -> Option<bool> {
    match value {
        Json::Bool(b) => Some(*b),
        _ => None,
    }
}

/// `found` must be `None` or one of the candidates' values; with a unique candidate (or none),
/// exactly its value.
fn check<T: PartialEq + std::fmt::Debug>(
    name: &str,
    found: Option<T>,
    values: &[&Json],
    read: impl Fn(&Json) -> Option<T>,
    unique: bool,
) {
    let readable: Vec<T> = values.iter().filter_map(|v| read(v)).collect();
    if unique {
        let expected = values.first().and_then(|v| read(v));
        assert_eq!(found, expected, "{name}");
    } else if let Some(found) = &found {
        assert!(
            readable.contains(found),
            "{name}: {found:?} not in {readable:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let (points, body) = split_input(data);
    let whole = scan([body]);
    let byte_by_byte = scan(body.chunks(1));
    let cut = scan(chunks(body, &points));
    assert_eq!(cut, whole, "cut at {points:?}");
    assert_eq!(byte_by_byte, whole, "byte by byte");

    let Some(root) = Json::parse(body) else {
        return;
    };
    let (found, stopped) = whole;
    assert!(!stopped, "stopped on valid JSON");
    let unique = followed_objects_are_unique(&root);
    let used = candidates(&root, "_credits", "used");
    let balance = candidates(&root, "_credits", "balance");
    let cached = candidates(&root, "_cache", "is_cached");
    let limit = candidates(&root, "_rate_limits", "limit_minute");
    let remaining = candidates(&root, "_rate_limits", "remaining_minute");
    check("credits_used", found.credits_used, &used, integer, unique);
    check("balance", found.balance, &balance, integer, unique);
    check("is_cached", found.cached, &cached, boolean, unique);
    check("limit_minute", found.limit_minute, &limit, small, unique);
    check(
        "remaining_minute",
        found.remaining_minute,
        &remaining,
        small,
        unique,
    );
});
