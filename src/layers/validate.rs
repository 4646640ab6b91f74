//! Validation of the routes the gateway knows, before anything is forwarded, so that nothing
//! invalid costs a credit. Today: `PUT /api/fansly/{account}/tracking-links/{id}` takes a JSON
//! object with `label` a non-empty string and `description` a string, null or absent (415 / 400 /
//! 422). Unknown fields pass through. The small body is read whole, checked, and forwarded as the
//! very bytes the client sent; every other route streams untouched.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::{ready, Either, FutureExt};
use http::{header, Request, Response};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::{Layer, Service};

use super::route::{RouteInfo, RouteKind};
use crate::body::{full, Body, BoxError};
use crate::error::GatewayError;

#[derive(Clone, Copy, Debug, Default)]
pub struct ValidateLayer;

impl<S> Layer<S> for ValidateLayer {
    type Service = Validate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Validate { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Validate<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for Validate<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Either<S::Future, BoxFuture<Result<Response<Body>, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let validated = req
            .extensions()
            .get::<RouteInfo>()
            .is_some_and(|r| r.kind == RouteKind::UpdateTrackingLink);
        if !validated {
            return Either::Left(self.inner.call(req));
        }
        let mut inner = super::take_ready(&mut self.inner);
        // Combinators rather than an `async` block: rustc cannot yet prove the latter `Send`
        // for a generic inner future.
        Either::Right(Box::pin(check_tracking_link_update(req).then(
            move |checked| match checked {
                Ok(req) => Either::Left(inner.call(req)),
                Err(error) => Either::Right(ready(Err(error))),
            },
        )))
    }
}

async fn check_tracking_link_update(req: Request<Body>) -> Result<Request<Body>, BoxError> {
    if !is_json(req.headers().get(header::CONTENT_TYPE)) {
        return Err(GatewayError::UnsupportedMediaType.into());
    }
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await?.to_bytes();
    check_update_body(&bytes)?;
    Ok(Request::from_parts(parts, full(bytes)))
}

/// The verdict on a whole update body: `Ok` to forward it as it is, else 400 (not JSON) or 422
/// (the fields named).
pub(crate) fn check_update_body(bytes: &[u8]) -> Result<(), GatewayError> {
    if is_valid_update(bytes) {
        return Ok(());
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| GatewayError::BadRequest(format!("invalid JSON body ({e})")))?;
    let errors = tracking_link_errors(&value);
    if !errors.is_empty() {
        return Err(GatewayError::ValidationFailed(errors));
    }
    Ok(())
}

/// The happy path without building a JSON tree: an object whose `label` is a non-empty string
/// and whose `description` is a string or null. One pass: the two fields are read (strings
/// borrowed unless escaped) and every other value is checked as strictly as a parse into a
/// `Value` would ([`WellFormed`]: serde's own way of skipping unknown fields checks neither UTF-8
/// nor `\u` surrogates inside their strings). Anything else, a repeated field included, goes the
/// slow way, which names the problem.
pub(crate) fn is_valid_update(bytes: &[u8]) -> bool {
    serde_json::from_slice::<ValidUpdate>(bytes).is_ok()
}

/// Deserializes only from an update body [`is_valid_update`] accepts.
struct ValidUpdate;

impl<'de> serde::Deserialize<'de> for ValidUpdate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // An object, not an array or anything else.
        deserializer.deserialize_map(ValidUpdate)
    }
}

impl<'de> serde::de::Visitor<'de> for ValidUpdate {
    type Value = ValidUpdate;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a tracking-link update")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        use serde::de::Error;
        use std::borrow::Cow;
        let (mut label_ok, mut seen_label, mut seen_description) = (false, false, false);
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let seen = match &*key {
                "label" => {
                    let label = map.next_value::<Cow<'de, str>>()?;
                    label_ok = !label.trim().is_empty();
                    &mut seen_label
                }
                "description" => {
                    map.next_value::<Option<Cow<'de, str>>>()?;
                    &mut seen_description
                }
                _ => {
                    map.next_value::<WellFormed>()?;
                    continue;
                }
            };
            if std::mem::replace(seen, true) {
                return Err(A::Error::custom("repeated field"));
            }
        }
        if label_ok {
            Ok(self)
        } else {
            Err(A::Error::custom("no usable label"))
        }
    }
}

/// Any JSON value, read as strictly as `serde_json::Value` reads it (strings decoded, so
/// invalid UTF-8 and lone surrogates are errors) and kept nowhere.
struct WellFormed;

impl<'de> serde::Deserialize<'de> for WellFormed {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(WellFormed)
    }
}

impl<'de> serde::de::Visitor<'de> for WellFormed {
    type Value = WellFormed;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<WellFormed>()?.is_some() {}
        Ok(self)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<WellFormed, WellFormed>()?.is_some() {}
        Ok(self)
    }
}

/// `application/json`, with or without parameters such as `charset`.
pub(crate) fn is_json(value: Option<&http::HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// The field errors of an update body, in the upstream's (Laravel's) wording.
pub fn tracking_link_errors(value: &Value) -> Vec<(String, Vec<String>)> {
    let Some(object) = value.as_object() else {
        return vec![(
            "body".into(),
            vec!["The body must be a JSON object.".into()],
        )];
    };
    let mut errors = Vec::new();
    match object.get("label") {
        None | Some(Value::Null) => {
            errors.push(("label".into(), vec!["The label field is required.".into()]))
        }
        Some(Value::String(label)) if label.trim().is_empty() => {
            errors.push(("label".into(), vec!["The label field is required.".into()]))
        }
        Some(Value::String(_)) => {}
        Some(_) => errors.push((
            "label".into(),
            vec!["The label field must be a string.".into()],
        )),
    }
    match object.get("description") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => errors.push((
            "description".into(),
            vec!["The description field must be a string.".into()],
        )),
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_fast_path_never_accepts_what_the_full_check_refuses() {
        for body in [
            r#"{"label":"x"}"#,
            r#"{"label":"x","description":null}"#,
            r#"{"label":"x","description":"d","extra":[1,{"a":2}]}"#,
            r#"{"label":"caf\u00e9 \"bio\""}"#,
            r#"{}"#,
            r#"{"label":""}"#,
            r#"{"label":"  "}"#,
            r#"{"label":5}"#,
            r#"{"label":"x","description":5}"#,
            r#"{"label":"x","label":"y"}"#,
            r#"[1]"#,
            // Serde reads a struct from an array too, fields in order (found by fuzzing).
            r#"["x"]"#,
            r#"["x",null]"#,
            r#" ["x","d"]"#,
            r#""label""#,
            r#"{"x":"\udc00","label":"y"}"#,
        ] {
            let full = serde_json::from_slice::<Value>(body.as_bytes())
                .map(|v| tracking_link_errors(&v).is_empty())
                .unwrap_or(false);
            let fast = is_valid_update(body.as_bytes());
            assert!(!fast || full, "fast path accepted {body}");
        }
        // ...and it does take the ordinary valid bodies.
        assert!(is_valid_update(
            br#"{"label":"Twitter bio","description":"d"}"#
        ));
        assert!(is_valid_update(
            br#"{"description":null,"label":"x","extra":{}}"#
        ));
    }

    #[test]
    fn invalid_json_inside_an_unknown_field_is_400_not_forwarded() {
        // serde skips unknown fields without decoding their strings, so the fast path alone took
        // these (found by fuzzing): invalid UTF-8, and lone surrogates, inside skipped strings.
        for body in [
            &b"{\"x\":\"\xa9\",\"label\":\"y\"}"[..],
            b"{\"label\":\"y\",\"x\":{\"k\":[\"\xff\xfe\"]}}",
            br#"{"x":"\udc00","label":"y"}"#,
            br#"{"x":["\ud800"],"label":"y"}"#,
            br#"{"x":{"\ud800":1},"label":"y"}"#,
        ] {
            assert!(!is_valid_update(body), "{}", String::from_utf8_lossy(body));
            assert!(
                matches!(check_update_body(body), Err(GatewayError::BadRequest(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // A valid surrogate pair and escaped non-ASCII in an unknown field are fine.
        assert!(is_valid_update(
            br#"{"x":"\ud83d\ude00 caf\u00e9","label":"y"}"#
        ));
    }

    #[test]
    fn good_bodies_pass() {
        assert!(tracking_link_errors(&json!({"label": "x"})).is_empty());
        assert!(tracking_link_errors(&json!({"label": "x", "description": null})).is_empty());
        assert!(
            tracking_link_errors(&json!({"label": "x", "description": "d", "extra": 1})).is_empty()
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let fields = |v: Value| -> Vec<String> {
            tracking_link_errors(&v)
                .into_iter()
                .map(|(f, _)| f)
                .collect()
        };
        assert_eq!(fields(json!({})), ["label"]);
        assert_eq!(fields(json!({"label": ""})), ["label"]);
        assert_eq!(fields(json!({"label": "  "})), ["label"]);
        assert_eq!(fields(json!({"label": 5})), ["label"]);
        assert_eq!(
            fields(json!({"label": "x", "description": 5})),
            ["description"]
        );
        assert_eq!(fields(json!({"description": []})), ["label", "description"]);
        assert_eq!(fields(json!([1])), ["body"]);
    }

    #[test]
    fn json_content_types_are_recognised() {
        let hv = |s: &'static str| http::HeaderValue::from_static(s);
        assert!(is_json(Some(&hv("application/json"))));
        assert!(is_json(Some(&hv("Application/JSON; charset=utf-8"))));
        assert!(!is_json(Some(&hv("text/plain"))));
        assert!(!is_json(None));
    }
}
