//! The checked-in PPR golden fixtures are what `tests/ppr_golden.py` produces
//! with the networkx `tests/peers.sh` installs: regenerated live and compared.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

use std::path::Path;
use std::process::Command;

use mintguard_tests::peer_env;

#[test]
fn fixtures_match_a_fresh_networkx_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(peer_env("MINTGUARD_PYTHON"))
        .arg(root.join("tests/ppr_golden.py"))
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success(), "tests/ppr_golden.py failed");
    let checked_in = root.join("policy/tests/fixtures/ppr");
    let mut compared = 0;
    for entry in std::fs::read_dir(out.path()).unwrap() {
        let fresh_path = entry.unwrap().path();
        let name = fresh_path.file_name().unwrap();
        let fresh: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&fresh_path).unwrap()).unwrap();
        let stored: serde_json::Value =
            serde_json::from_slice(&std::fs::read(checked_in.join(name)).unwrap()).unwrap();
        assert_eq!(
            fresh["graph"], stored["graph"],
            "{name:?}: the generator changed; regenerate the fixtures"
        );
        let (fresh, stored) = (
            fresh["expected"].as_object().unwrap(),
            stored["expected"].as_object().unwrap(),
        );
        assert_eq!(fresh.len(), stored.len());
        for (id, value) in fresh {
            let diff = (value.as_f64().unwrap() - stored[id].as_f64().unwrap()).abs();
            assert!(
                diff < 1e-12,
                "{name:?} {id}: networkx now says {value}, fixture {}",
                stored[id]
            );
        }
        compared += 1;
    }
    assert_eq!(compared, 5);
}
