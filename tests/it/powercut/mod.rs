//! Power-cut safety (issue 16): the power-cut simulator
//! (`tests/powercut/powercutfs.py`, a FUSE file system that keeps only what
//! was made durable) and its unit tests.

use std::process::Command;

use crate::support::ensure_powercut_venv;

#[test]
fn simulator_model() {
    let tests = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/powercut/test_powercutfs.py"
    );
    let out = Command::new(ensure_powercut_venv())
        .args(["-m", "unittest", "-v", tests])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run the simulator's unit tests");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("\nOK"), "{log}");
}
