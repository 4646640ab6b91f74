//! The path check (SPEC §5): exactly the paths the spec allows get through, and no accepted path
//! can mean another path to a server that decodes and normalizes it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ofapi_gateway::fuzzing::check_path;
use ofapi_gateway_fuzz::{path_is_safe, percent_decode_strict, remove_dot_segments};

fn check(path: &str) {
    let verdict = check_path(path);
    // The refusals are exactly the spec's, restated independently.
    assert_eq!(verdict.is_ok(), path_is_safe(path), "{path:?}: {verdict:?}");
    if verdict.is_err() {
        return;
    }
    // Decoded segment by segment, the path holds no dot segment, no slash or backslash that was
    // not a separator, no control character, and normalizing it (RFC 3986 remove_dot_segments)
    // changes nothing: the upstream routes on the path the gateway's scopes were checked on.
    let decoded: Vec<Vec<u8>> = path
        .split('/')
        .skip(1)
        .map(|s| percent_decode_strict(s.as_bytes()).expect("accepted paths decode"))
        .collect();
    for segment in &decoded {
        if path != "/" {
            assert!(!segment.is_empty(), "{path:?}");
        }
        assert!(segment != b"." && segment != b"..", "{path:?}");
        assert!(
            !segment
                .iter()
                .any(|&b| matches!(b, b'/' | b'\\') || b.is_ascii_control()),
            "{path:?}"
        );
    }
    let joined = decoded
        .iter()
        .map(|s| format!("/{}", String::from_utf8_lossy(s)))
        .collect::<String>();
    let joined = if joined.is_empty() {
        "/".to_owned()
    } else {
        joined
    };
    assert_eq!(remove_dot_segments(&joined), joined, "{path:?}");
}

fuzz_target!(|data: &[u8]| {
    // As a string handed straight to the check...
    if let Ok(path) = std::str::from_utf8(data) {
        check(path);
    }
    // ...and as the path hyper hands the layer after parsing a request target.
    if let Ok(uri) = http::Uri::try_from(data) {
        check(uri.path());
    }
});
