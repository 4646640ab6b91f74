//! `Authorization` parsing: the gateway key (`Bearer <key>`) and the admin token.
//!
//! - `bearer_token` returns exactly what the rule says (scheme `bearer` in any case, one space,
//!   then a token of visible ASCII, surrounding ASCII whitespace ignored), and the token is a
//!   verbatim slice of the header: no decoding, so no two spellings reach one key hash.
//! - Every token it returns round-trips through `Bearer <token>` in any scheme case.
//! - For a value hyper would accept as a header, the admin listener reads a header the client
//!   listener accepts as the same token, and what it reads is trimmed.
#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use ofapi_gateway::fuzzing::{admin_bearer, bearer_token};

/// The rule restated: `Some(token)` or `None`.
fn reference(value: &[u8]) -> Option<&[u8]> {
    if value.len() < 7 || !value[..6].eq_ignore_ascii_case(b"bearer") || value[6] != b' ' {
        return None;
    }
    let mut token = &value[7..];
    while let [first, rest @ ..] = token {
        if !matches!(first, b' ' | b'\t' | b'\n' | b'\r' | 0x0c) {
            break;
        }
        token = rest;
    }
    while let [rest @ .., last] = token {
        if !matches!(last, b' ' | b'\t' | b'\n' | b'\r' | 0x0c) {
            break;
        }
        token = rest;
    }
    (!token.is_empty() && token.iter().all(|&b| (0x21..=0x7e).contains(&b))).then_some(token)
}

fuzz_target!(|data: &[u8]| {
    let token = bearer_token(data);
    assert_eq!(token.map(str::as_bytes), reference(data), "{data:?}");

    if let Some(token) = token {
        // A slice of the input, not a copy that could have been transformed.
        let start = token.as_ptr() as usize - data.as_ptr() as usize;
        assert_eq!(&data[start..start + token.len()], token.as_bytes());
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            assert_eq!(
                bearer_token(format!("{scheme} {token}").as_bytes()),
                Some(token)
            );
            assert_eq!(
                bearer_token(format!("{scheme}  {token}\t").as_bytes()),
                Some(token)
            );
        }
    }

    if let Ok(value) = HeaderValue::from_bytes(data) {
        assert_eq!(bearer_token(value.as_bytes()), token);
        let admin = admin_bearer(&value);
        if let Some(token) = token {
            assert_eq!(admin, Some(token), "{data:?}");
        }
        if let Some(admin) = admin {
            assert_eq!(admin, admin.trim());
            let text = value.to_str().expect("admin reads text headers only");
            let (scheme, _) = text.split_once(' ').expect("a scheme and a token");
            assert!(scheme.eq_ignore_ascii_case("bearer"), "{text:?}");
        }
    }
});
