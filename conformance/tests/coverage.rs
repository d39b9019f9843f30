//! The BEP 29 coverage matrix is complete: every item of `conformance/bep29-items.toml`
//! has a test that declares it (`/// Covers: ...`), every declared id is an item, the
//! items match the checklist (when `../shared/BEP29-CHECKLIST.md` is there), and where
//! deployed stacks depart from the BEP text the choice is a configuration field or
//! stated as fixed. `cargo run -p utp-conformance --bin bep29-coverage` prints the
//! matrix with pass/fail.

use std::collections::BTreeSet;

use utp::Config;
use utp_conformance::coverage::{
    checklist_ids, debug_field, items_path, load_items, matrix, scan_workspace, unknown_ids,
    workspace_root, Item, Status,
};

fn items() -> Vec<Item> {
    load_items(&items_path()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_item_has_a_test() {
    let items = items();
    let scan = scan_workspace(&workspace_root()).unwrap_or_else(|e| panic!("{e}"));
    let rows = matrix(&items, &scan.tests, None);
    let untested: Vec<String> = rows
        .iter()
        .filter(|r| r.status == Status::Untested)
        .map(|r| format!("{} ({})", r.item.id, r.item.title))
        .collect();
    assert!(
        untested.is_empty(),
        "{} checklist items have no test with a `/// Covers:` line naming them:\n  {}",
        untested.len(),
        untested.join("\n  ")
    );
    // An exemption is for what cannot be tested; a covered item needs none.
    for r in &rows {
        if let Some(why) = &r.item.untestable {
            assert!(
                why.len() >= 20,
                "{}: say why it cannot be tested",
                r.item.id
            );
        }
    }
    let exempt = items.iter().filter(|i| i.untestable.is_some()).count();
    assert!(exempt <= 3, "keep the exemption list short ({exempt})");
}

#[test]
fn covers_lines_name_known_items_and_sit_on_tests() {
    let items = items();
    let scan = scan_workspace(&workspace_root()).unwrap_or_else(|e| panic!("{e}"));
    let unknown: Vec<String> = unknown_ids(&items, &scan.tests)
        .into_iter()
        .map(|(id, t)| format!("{id} in {}", t.location()))
        .collect();
    assert!(
        unknown.is_empty(),
        "`Covers:` names items that are not in bep29-items.toml:\n  {}",
        unknown.join("\n  ")
    );
    assert!(
        scan.problems.is_empty(),
        "misplaced or malformed `Covers:` lines:\n  {}",
        scan.problems.join("\n  ")
    );
    // The scanner sees the suite: hundreds of tests, this one among them.
    assert!(scan.tests.len() > 100, "{} tests found", scan.tests.len());
    assert!(scan.tests.iter().any(|t| t.target.krate == "coverage"
        && t.target.root == "tests/coverage.rs"
        && t.path == "covers_lines_name_known_items_and_sit_on_tests"));
    assert!(scan
        .tests
        .iter()
        .any(|t| t.target.krate == "utp" && t.path == "proto::connection::tests::karn_rule"));
}

/// The items file lists exactly the numbered items of the checklist (A-I, X, L), when
/// the checklist is beside the project (it is not part of the repository).
#[test]
fn items_match_the_checklist() {
    let path = workspace_root().join("../shared/BEP29-CHECKLIST.md");
    let Ok(md) = std::fs::read_to_string(&path) else {
        eprintln!(
            "notice: {} is not here: items not compared with the checklist",
            path.display()
        );
        return;
    };
    let from_checklist: Vec<String> = checklist_ids(&md);
    let ours: Vec<String> = items().into_iter().map(|i| i.id).collect();
    assert_eq!(ours, from_checklist, "bep29-items.toml vs the checklist");
}

/// Items are well formed: kinds known, X items say how the choice is made, and the
/// configuration fields they name exist and differ in the profiles they name.
#[test]
fn deployed_practice_is_a_configuration_choice_or_fixed() {
    let items = items();
    let mut ids = BTreeSet::new();
    let default = format!("{:?}", Config::default());
    let profile = |name: &str| match name {
        "libutp" => format!("{:?}", Config::libutp()),
        "libtorrent" => format!("{:?}", Config::libtorrent()),
        "bep29_text" => format!("{:?}", Config::bep29_text()),
        other => panic!("unknown profile {other:?}"),
    };
    for i in &items {
        assert!(ids.insert(i.id.clone()));
        assert!(
            ["T", "S", "N", "X", "L"].contains(&i.kind.as_str()),
            "{}: kind {:?}",
            i.id,
            i.kind
        );
        assert!(
            !i.title.is_empty() && i.title.len() <= 100,
            "{}: title",
            i.id
        );
        if i.kind != "X" {
            assert!(
                i.config.is_empty() && i.fixed.is_none() && i.profiles.is_empty(),
                "{}: only X items choose",
                i.id
            );
            continue;
        }
        assert!(
            i.config.is_empty() != i.fixed.is_none(),
            "{}: an X item names its `config` fields or says why it is `fixed`",
            i.id
        );
        for field in &i.config {
            assert!(
                debug_field(&default, field).is_some(),
                "{}: Config has no field {field}",
                i.id
            );
        }
        for p in &i.profiles {
            let other = profile(p);
            assert!(
                i.config
                    .iter()
                    .any(|f| debug_field(&default, f) != debug_field(&other, f)),
                "{}: profile {p} sets none of {:?} differently from the default",
                i.id,
                i.config
            );
        }
    }
}
