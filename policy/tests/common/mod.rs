//! Shared by the policy integration tests.

#![allow(dead_code)] // each test file uses part of it

use std::path::Path;

use mintguard_policy::rules::{PolicySource, RuleSet};
use mintguard_policy::trust::TrustConfig;

/// The rule set of the Cedar corpus (`tests/corpus/policies/*.cedar`).
pub fn corpus_rules() -> RuleSet {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/policies");
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        sources.push(PolicySource {
            name: path.file_name().unwrap().to_string_lossy().into_owned(),
            text: std::fs::read_to_string(&path).unwrap(),
        });
    }
    RuleSet::new(sources, TrustConfig::default()).unwrap()
}
