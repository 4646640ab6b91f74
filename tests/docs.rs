//! The configuration reference (`docs/configuration.md`) stays in step with the parser: every key
//! the parser accepts is documented, and every documented key is accepted. The reliability and
//! security pages name only tests that exist, so a promise never points at a renamed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

use ofapi_gateway::config;

/// The keys the parser accepts in a section, read from its own "unknown field" error, which
/// lists them all (`deny_unknown_fields`).
fn accepted(section: &str, array: bool) -> BTreeSet<String> {
    let header = if array {
        format!("[[{section}]]")
    } else {
        format!("[{section}]")
    };
    let text = format!("{header}\nno_such_key_here = 1\n");
    let error = config::parse_str(Path::new("t.toml"), &text, &|_| Some("k".into()))
        .expect_err("an unknown key is refused")
        .to_string();
    let list = error
        .split_once("expected one of")
        .or_else(|| error.split_once("expected"))
        .unwrap_or_else(|| panic!("no key list in: {error}"))
        .1;
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(|key| format!("{section}.{key}"))
        .collect()
}

/// The keys documented as `` `section.key` `` in the first column of the reference's tables.
fn documented() -> BTreeSet<String> {
    let doc = std::fs::read_to_string("docs/configuration.md").unwrap();
    doc.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(key, _)| key.to_owned())
        .filter(|key| key.contains('.'))
        .collect()
}

#[test]
fn the_configuration_reference_documents_exactly_the_keys_the_parser_accepts() {
    let mut accepted_keys = BTreeSet::new();
    for section in [
        "server",
        "admin",
        "upstream",
        "rate_limit",
        "ledger",
        "credits",
        "sandbox",
    ] {
        accepted_keys.extend(accepted(section, false));
    }
    accepted_keys.extend(accepted("clients", true));
    let documented = documented();
    let undocumented: Vec<_> = accepted_keys.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&accepted_keys).collect();
    assert!(
        undocumented.is_empty(),
        "keys missing from docs/configuration.md: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "documented keys the parser refuses: {unknown:?}"
    );
}

#[test]
fn the_top_level_sections_are_all_documented() {
    let error = config::parse_str(Path::new("t.toml"), "no_such_section = 1\n", &|_| {
        Some("k".into())
    })
    .err()
    .unwrap()
    .to_string();
    let doc = std::fs::read_to_string("docs/configuration.md").unwrap();
    for section in error
        .split_once("expected one of")
        .unwrap()
        .1
        .split('`')
        .skip(1)
        .step_by(2)
    {
        assert!(
            doc.contains(&format!("`[{section}]`")) || doc.contains(&format!("`[[{section}]]`")),
            "section {section} is not documented"
        );
    }
}

/// Every test a doc names exists as a function in the file named with it: `` `file::test` ``
/// (a test in `tests/file.rs`), `` `src/path.rs::test` ``, `` `::test` `` after one of those, or
/// a bare `` `test_name` `` after a `` `tests/file.rs` `` / `` `src/path.rs` `` in the same
/// paragraph.
fn assert_named_tests_exist(doc_path: &str) {
    let is_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let doc = std::fs::read_to_string(doc_path).unwrap();
    let mut missing = Vec::new();
    let mut checked = 0;
    let mut file: Option<String> = None;
    // Bare names count only after a `tests/file.rs` span (not after a metric name, say).
    let mut bare_file: Option<String> = None;
    for line in doc.lines() {
        if line.trim().is_empty() {
            file = None;
            bare_file = None;
        }
        for span in line.split('`').skip(1).step_by(2) {
            let (path, test) = match span.split_once("::") {
                Some((path, test)) => (path, test),
                None if span.ends_with(".rs")
                    && (span.starts_with("src/") || span.starts_with("tests/")) =>
                {
                    bare_file = Some(span.to_owned());
                    continue;
                }
                // A bare test name: long snake case, after a file.
                None if bare_file.is_some() && is_name(span) && span.matches('_').count() >= 3 => {
                    file.clone_from(&bare_file);
                    ("", span)
                }
                None => continue,
            };
            if !is_name(test) {
                continue;
            }
            let path = match path {
                "" => match &file {
                    Some(file) => file.clone(),
                    None => continue,
                },
                p if p.starts_with("src/") && p.ends_with(".rs") => p.to_owned(),
                // `crate::item` paths (`subtle::ct_eq`) are not tests.
                p if is_name(p) && Path::new(&format!("tests/{p}.rs")).exists() => {
                    format!("tests/{p}.rs")
                }
                _ => continue,
            };
            file = Some(path.clone());
            let source = std::fs::read_to_string(&path).unwrap_or_default();
            checked += 1;
            if !source.contains(&format!("fn {test}(")) {
                missing.push(format!("{path}::{test}"));
            }
        }
    }
    assert!(checked > 5, "{doc_path} names only {checked} tests");
    assert!(
        missing.is_empty(),
        "{doc_path} names tests that do not exist: {missing:?}"
    );
}

#[test]
fn the_reliability_and_security_pages_name_only_tests_that_exist() {
    assert_named_tests_exist("docs/reliability.md");
    assert_named_tests_exist("docs/security.md");
}
