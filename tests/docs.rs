//! The configuration reference (`docs/configuration.md`) stays in step with the parser: every key
//! the parser accepts is documented, and every documented key is accepted.
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
