//! Replays the inputs under tests/fuzz-regressions/<target>/ through the fuzz targets' own
//! property checks (fuzz/src/properties.rs, docs/fuzzing.md): every crash a fuzzer found, and
//! edge inputs of each parser written by hand, stay fixed under plain `cargo test`.

#[path = "../../fuzz/src/properties.rs"]
mod properties;

use std::{fs, path::Path};

#[test]
fn every_regression_input_keeps_its_parsers_properties() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut failures = Vec::new();
    for (target, property) in properties::TARGETS {
        let dir = root.join(target);
        let mut inputs: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{target} has no regression inputs");
        for path in inputs {
            let data = fs::read(&path).expect("a regression input");
            if std::panic::catch_unwind(|| property(&data)).is_err() {
                failures.push(path.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "properties broken by: {failures:#?}");
}

/// The regression inputs must reach the interesting outcomes, or the replay proves little.
#[test]
fn the_edge_inputs_reach_both_acceptance_and_refusal() {
    let read = |target: &str, name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz-regressions")
            .join(target)
            .join(name);
        fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let text = |target: &str, name: &str| String::from_utf8(read(target, name)).expect("UTF-8");
    assert_eq!(
        shared::email::Email::parse(&text("email", "max_254")).map(|e| e.as_str().len()),
        Ok(254)
    );
    assert!(shared::email::Email::parse(&text("email", "over_254")).is_err());
    let email = shared::email::Email::parse("ann@example.com").expect("valid");
    let password = |name: &str| text("password", name)[1..].to_owned();
    assert!(shared::password::NewPassword::parse(&password("exactly_128"), &email, 12).is_ok());
    assert!(shared::password::NewPassword::parse(&password("over_128"), &email, 12).is_err());
    assert!(
        shared::password::NewPassword::parse(&password("nfkc_expands_over_128"), &email, 12)
            .is_err()
    );
    assert!(shared::db::connection_settings(&text("db_url", "host_param"), None).is_err());
    assert!(shared::db::connection_settings(&text("db_url", "unix"), None).is_ok());
    let keys = &properties::test_keys()[0];
    assert_eq!(
        keys.verify(&text("token_verify", "expired_hs256")),
        Err(shared::token::TokenRejection::Expired),
        "the seed is signed with the test secret and reaches the exp check"
    );
}
