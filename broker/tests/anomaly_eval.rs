//! The CI-sized evaluation scenario (`examples/anomaly/ci.toml`, the shapes
//! of `baseline.toml` at a size debug builds replay in seconds): every
//! attack is detected and contained, and false positives stay at or below
//! 1 % of benign identity-days. `baseline.toml` runs with the release
//! binary (`anomaly_eval`); its report is `examples/anomaly/REPORT.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

use mintguard_broker::anomaly::eval::{Scenario, run};

#[test]
fn the_ci_scenario_detects_every_attack_with_few_false_positives() {
    let path = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/anomaly/ci.toml"
    ));
    let scenario: Scenario = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let report = run(&scenario).unwrap();
    let text = report.markdown();
    assert_eq!(report.attacks.len(), 5, "{text}");
    for attack in &report.attacks {
        assert!(attack.detected, "{} not detected\n{text}", attack.name);
        assert!(
            attack.minutes_to_contain.is_some(),
            "{} never contained\n{text}",
            attack.name
        );
    }
    assert!(report.identity_days > 500, "{text}");
    assert!(report.false_positive_rate <= 0.01, "{text}");
}
