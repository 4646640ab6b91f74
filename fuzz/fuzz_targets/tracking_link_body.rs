//! The `PUT /api/fansly/{a}/tracking-links/{id}` body check (SPEC §5), against serde_json.
//!
//! - Forwarded (`Ok`) only if the body is a JSON object whose `label` is a string that is not
//!   blank and whose `description` is absent, null or a string.
//! - Every body serde_json parses and that passes those rules is forwarded (no false 422).
//! - 400 exactly for what serde_json cannot parse; 422 names the same fields as the slow path.
//! - The fast path never accepts a body the full check refuses.
//! - `Content-Type` is JSON exactly when its media type is `application/json`, any case.
#![no_main]
// The oracle lower-cases rather than use the product's own `eq_ignore_ascii_case`.
#![allow(clippy::manual_ignore_case_cmp)]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use ofapi_gateway::error::GatewayError;
use ofapi_gateway::fuzzing::{
    check_update_body, is_json_content_type, is_valid_update_fast, tracking_link_errors,
};
use serde_json::Value;

fn passes_the_rules(value: &Value) -> bool {
    let Some(object) = value.as_object() else {
        return false;
    };
    let label_ok = matches!(object.get("label"), Some(Value::String(l)) if !l.trim().is_empty());
    let description_ok = matches!(
        object.get("description"),
        None | Some(Value::Null) | Some(Value::String(_))
    );
    label_ok && description_ok
}

fuzz_target!(|data: &[u8]| {
    let parsed = serde_json::from_slice::<Value>(data);
    let verdict = check_update_body(data);
    match (&verdict, &parsed) {
        (Ok(()), Ok(value)) => assert!(passes_the_rules(value), "forwarded {value}"),
        (Ok(()), Err(e)) => panic!("forwarded a body serde_json refuses ({e})"),
        (Err(GatewayError::BadRequest(_)), Err(_)) => {}
        (Err(GatewayError::BadRequest(m)), Ok(value)) => panic!("400 ({m}) for JSON {value}"),
        (Err(GatewayError::ValidationFailed(errors)), Ok(value)) => {
            assert!(
                !passes_the_rules(value),
                "422 {errors:?} for a good body {value}"
            );
            assert!(!errors.is_empty());
            assert_eq!(errors, &tracking_link_errors(value));
            for (field, messages) in errors {
                assert!(["body", "label", "description"].contains(&field.as_str()));
                assert!(!messages.is_empty());
            }
        }
        (Err(other), _) => panic!(
            "unexpected {other:?} for {:?}",
            String::from_utf8_lossy(data)
        ),
    }
    if is_valid_update_fast(data) {
        assert!(verdict.is_ok());
    }

    if let Ok(value) = HeaderValue::from_bytes(data) {
        let expected = value.to_str().is_ok_and(|text| {
            let media_type = text.split(';').next().unwrap_or_default();
            media_type.trim().to_ascii_lowercase() == "application/json"
        });
        assert_eq!(is_json_content_type(Some(&value)), expected, "{value:?}");
    }
});
