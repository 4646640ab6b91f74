//! The route template (metrics label, ledger route, log field) and the account a path names.
//!
//! - No id leaks into the template: no segment of it other than the placeholders holds a digit,
//!   and the account's segment is always `{account}`.
//! - The template has one segment per path segment, after `METHOD `.
//! - The account, the template and the kind do not depend on how the path is spelled: the same
//!   path with bytes percent-encoded, or escapes of unreserved characters decoded, is the same
//!   route to the upstream, so it must be the same route (scope, validation, label) here.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use ofapi_gateway::fuzzing::{check_path, classify, RouteKind};
use ofapi_gateway_fuzz::percent_decode_strict;

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// Spells `path` (which starts `/api/`) differently without changing what it decodes to: bytes
/// chosen by `seed` are percent-encoded (upper or lower case hex), escapes of unreserved
/// characters are decoded.
fn respell(path: &str, mut seed: u64) -> String {
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // The route layer answers 404 unless the raw path starts `/api/`; keep that as it is.
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3);
    out.extend_from_slice(b"/api/");
    let mut i = out.len();
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let escape = &bytes[i..i + 3];
            let decoded = percent_decode_strict(escape).expect("checked path")[0];
            let unreserved = decoded.is_ascii_alphanumeric() || b"-._~".contains(&decoded);
            if unreserved && next() % 2 == 0 {
                out.push(decoded);
            } else {
                out.extend_from_slice(escape);
            }
            i += 3;
            continue;
        }
        match next() % 3 {
            _ if b == b'/' => out.push(b),
            // Every byte of a non-ASCII character alike, so the result stays UTF-8.
            _ if !b.is_ascii() => out.extend_from_slice(format!("%{b:02X}").as_bytes()),
            0 => out.extend_from_slice(format!("%{b:02X}").as_bytes()),
            1 => out.extend_from_slice(format!("%{b:02x}").as_bytes()),
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).expect("ASCII escapes of UTF-8")
}

fuzz_target!(|data: &[u8]| {
    let Some((&[m, s0, s1, s2], rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    if check_path(path).is_err() || !path.starts_with("/api/") {
        return;
    }
    let method = &METHODS[usize::from(m) % METHODS.len()];
    let info = classify(method, path);

    let prefix = format!("{method} ");
    let template = info
        .template
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{:?} lacks {prefix:?}", info.template));
    let template_segments: Vec<&str> = template.split('/').skip(1).collect();
    let path_segments: Vec<&str> = path.split('/').skip(1).collect();
    assert_eq!(template_segments.len(), path_segments.len(), "{info:?}");
    for segment in &template_segments {
        assert!(
            matches!(*segment, "{account}" | "{id}")
                || !segment.bytes().any(|b| b.is_ascii_digit()),
            "an id leaked into {:?}",
            info.template
        );
    }
    let decoded: Vec<String> = path_segments
        .iter()
        .map(|s| {
            String::from_utf8_lossy(&percent_decode_strict(s.as_bytes()).expect("checked"))
                .into_owned()
        })
        .collect();
    let account_at = match decoded
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["api", "fansly", _, ..] => Some(2),
        ["api", second, ..] if second.starts_with("acct_") => Some(1),
        _ => None,
    };
    assert_eq!(
        info.account.as_deref(),
        account_at.map(|i| decoded[i].as_str()),
        "{path:?}"
    );
    if let Some(i) = account_at {
        assert_eq!(template_segments[i], "{account}", "{path:?}");
    }
    let is_update = *method == Method::PUT
        && decoded.len() == 5
        && decoded[1] == "fansly"
        && decoded[3] == "tracking-links";
    assert_eq!(
        info.kind == RouteKind::UpdateTrackingLink,
        is_update,
        "{path:?}"
    );

    let respelled = respell(path, u64::from_le_bytes([s0, s1, s2, 1, 0, 0, 0, 0]));
    assert_eq!(
        check_path(&respelled),
        Ok(()),
        "{respelled:?} from {path:?}"
    );
    assert_eq!(
        classify(method, &respelled),
        info,
        "{respelled:?} vs {path:?}"
    );
});
