//! Oracles shared by the fuzz targets: independent, deliberately simple re-statements of what the
//! gateway's parsers must do, so that a target can assert a property rather than "no panic".
//!
//! Nothing here is fast or clever on purpose: a reference that shares the product's tricks would
//! share its bugs.

use std::collections::HashSet;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// The upstream origin the rewriter target uses, as in production.
pub const UPSTREAM: &str = "https://app.onlyfansapi.com";

/// Splits a fuzz input into chunk boundaries and a body.
///
/// Layout: byte 0 is the number of cuts (mod 32), then two little-endian bytes per cut (taken
/// modulo the body length + 1), then the body. A seed file is `\0` followed by a whole body.
pub fn split_input(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&count, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let count = usize::from(count % 32);
    let header = (count * 2).min(rest.len());
    let (cuts, body) = rest.split_at(header);
    let mut points: Vec<usize> = cuts
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (body.len() + 1))
        .collect();
    points.sort_unstable();
    (points, body)
}

/// `body` cut at `points` (sorted, each ≤ `body.len()`); repeated points give empty chunks.
pub fn chunks<'a>(body: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(points.len() + 1);
    let mut from = 0;
    for &p in points {
        out.push(&body[from..p]);
        from = p;
    }
    out.push(&body[from..]);
    out
}

/// Strict percent-decoding of one path segment: `None` if a `%` is not followed by two hex
/// digits.
pub fn percent_decode_strict(segment: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = segment;
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = tail.get(..2)?;
            let text = std::str::from_utf8(hex).ok()?;
            if !text.bytes().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(text, 16).ok()?);
            rest = &tail[2..];
        } else {
            out.push(b);
            rest = tail;
        }
    }
    Some(out)
}

/// SPEC §5 restated: whether the gateway must accept `path`. It must start with `/`, and each
/// segment after it (if there is anything after it) must be non-empty, be ASCII as written
/// (anything else percent-encoded), decode strictly, and decode to UTF-8 that is not made of dots
/// only and holds no `/`, `\` or control character.
pub fn path_is_safe(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    rest.split('/').all(|segment| {
        if !segment.is_ascii() {
            return false;
        }
        let Some(decoded) = percent_decode_strict(segment.as_bytes()) else {
            return false;
        };
        std::str::from_utf8(&decoded).is_ok()
            && !decoded.is_empty()
            && !decoded.iter().all(|&b| b == b'.')
            && !decoded
                .iter()
                .any(|&b| b == b'/' || b == b'\\' || b < 0x20 || b == 0x7f)
    })
}

/// RFC 3986 §5.2.4 `remove_dot_segments` on a decoded path: what a server that normalizes
/// would route on.
pub fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut normalized = String::new();
    for s in &out {
        normalized.push('/');
        normalized.push_str(s);
    }
    if trailing_slash || normalized.is_empty() {
        normalized.push('/');
    }
    normalized
}

/// A JSON document as written: object members in order, duplicates kept. Numbers keep only
/// what the scanner may report: a non-negative integer that fits `u64`.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    /// `Some` for a non-negative integer written without fraction or exponent that fits `u64`.
    Number(Option<u64>),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
                Ok(Json::Bool(b))
            }
            // serde_json calls this for integers without sign, fraction or exponent only.
            fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
                Ok(Json::Number(Some(n)))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Json, E> {
                Ok(Json::Number(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Json, E> {
                Ok(Json::Number(None))
            }
            fn visit_str<E>(self, s: &str) -> Result<Json, E> {
                Ok(Json::String(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Json, E> {
                Ok(Json::String(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Json::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut members = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Json>()? {
                    members.push((k, v));
                }
                Ok(Json::Object(members))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl Json {
    /// A whole document, if serde_json takes it as valid JSON.
    pub fn parse(bytes: &[u8]) -> Option<Json> {
        serde_json::from_slice(bytes).ok()
    }

    /// The members of an object, `None` for any other value.
    pub fn members(&self) -> Option<&[(String, Json)]> {
        match self {
            Json::Object(m) => Some(m),
            _ => None,
        }
    }

    /// Every value of `key` in an object, in order (more than one if the key is repeated).
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Json> + 'a {
        self.members()
            .unwrap_or_default()
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// True if this object repeats a key.
    pub fn has_duplicate_keys(&self) -> bool {
        let mut seen = HashSet::new();
        self.members()
            .unwrap_or_default()
            .iter()
            .any(|(k, _)| !seen.insert(k.as_str()))
    }
}

/// The objects whose keys the scanner and the rewriter follow: the root, `_meta`, its
/// `_credits`, `_cache`, `_rate_limits`, `_pagination`, and the root's `_pagination`.
/// False when one of them repeats a key, so "the value of `x`" has no single answer.
pub fn followed_objects_are_unique(root: &Json) -> bool {
    let mut objects = vec![root];
    for key in ["_meta", "_pagination"] {
        objects.extend(root.all(key));
    }
    for meta in root.all("_meta") {
        for key in ["_credits", "_cache", "_rate_limits", "_pagination"] {
            objects.extend(meta.all(key));
        }
    }
    !objects.iter().any(|o| o.has_duplicate_keys())
}

/// Decodes one character of JSON string contents (raw bytes after the opening quote):
/// `(byte, raw length, written as an escape)`, `None` at the closing quote, at the end of the
/// input or when the character is not a single ASCII byte.
pub fn decode_json_char(raw: &[u8]) -> Option<(u8, usize, bool)> {
    match raw {
        [b'"', ..] | [] => None,
        [b'\\', b'u', a, b, c, d, ..] => {
            let hex = std::str::from_utf8(&[*a, *b, *c, *d]).ok()?.to_owned();
            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                return None;
            }
            let code = u16::from_str_radix(&hex, 16).ok()?;
            let byte = u8::try_from(code).ok().filter(u8::is_ascii)?;
            Some((byte, 6, true))
        }
        [b'\\', e, ..] => {
            let byte = match e {
                b'"' => b'"',
                b'\\' => b'\\',
                b'/' => b'/',
                b'b' => 0x08,
                b'f' => 0x0c,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                _ => return None,
            };
            Some((byte, 2, true))
        }
        [b, ..] => Some((*b, 1, false)),
    }
}

/// If the string contents `raw` start with `base` (decoded) followed by `/`, `?`, `#` or the
/// closing quote: the raw length of the base, and whether a slash in the base or in the
/// character after it was written as an escape.
pub fn starts_with_base(raw: &[u8], base: &[u8]) -> Option<(usize, bool)> {
    let mut at = 0;
    let mut slash_escaped = false;
    for &want in base {
        let (c, len, escaped) = decode_json_char(&raw[at..])?;
        if c != want {
            return None;
        }
        slash_escaped |= escaped && c == b'/';
        at += len;
    }
    match raw.get(at) {
        Some(b'"') => Some((at, slash_escaped)),
        _ => {
            let (c, _, escaped) = decode_json_char(&raw[at..])?;
            matches!(c, b'/' | b'?' | b'#').then_some((at, slash_escaped || (escaped && c == b'/')))
        }
    }
}
