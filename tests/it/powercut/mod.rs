//! Power-cut safety (issue 16). The server's `SYNC_BASE` lives on a FUSE
//! file system that keeps only what was made durable (`tests/powercut/`:
//! file data at fsync of the file, names at fsync of their folder).
//!
//! Work: the real client (anki 26.9.3) edits, adds and deletes notes and
//! syncs, adds and trashes media and syncs them, and uploads whole
//! collections, for users configured in the environment, who start syncing
//! one after another on an empty folder (both servers alike). On our server,
//! accounts are also added to `users.txt` and their passwords changed, and
//! backups restored, with the binary's own commands (those accounts never
//! sync: a `users.txt` login is 600,000 PBKDF2 rounds, seconds in a test
//! build; their check is their line in the file).
//!
//! Cuts: each round runs one to three steps and ends with one cut: right
//! before a random mutating file-system call of its last step, right before
//! the client sees that step's acknowledgement, right after it, or after the
//! step. Half the rounds start after a write-back of everything (the kernel
//! after a pause), the others right after the previous restart.
//!
//! Checks, after restarting the server on what survived: every collection
//! passes the integrity check and opens in the real client; every change the
//! client saw acknowledged is there (`finish` answered, full upload "OK",
//! media `uploadChanges` answered, `user add`/`passwd`/`backup restore`
//! exited 0, and the backup a full upload promises); every file `media.db`
//! lists matches its checksum; `users.txt` parses; start-up left no
//! temporary files; no client fails without a cut.
//!
//! `POWERCUT_CUTS` (default 10) cuts per run, `POWERCUT_SEED` replays a run
//! (closely: the cut points follow the measured length of each kind of step),
//! `POWERCUT_KEEP` keeps its folder (servers' logs, what each cut left),
//! `POWERCUT_SERVER=official` runs the official server through the same
//! trials (it fails them; `scripts/powercut-trials --official` reports its
//! figures).

mod device;
mod fs;
mod proxy;
mod state;
mod trial;

use std::process::Command;
use std::time::Instant;

use crate::support::rng::Rng;
use crate::support::{ServerKind, ensure_powercut_venv};
use trial::Trial;

const DEFAULT_CUTS: usize = 10;

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

#[test]
fn trials() {
    let cuts = std::env::var("POWERCUT_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CUTS);
    let kind = match std::env::var("POWERCUT_SERVER").as_deref() {
        Ok("official") => ServerKind::Official,
        Ok("ours") | Ok("") | Err(_) => ServerKind::Ours,
        Ok(other) => panic!("POWERCUT_SERVER={other}: expected `official` or `ours`"),
    };
    let seed = Rng::seed_from_env("POWERCUT_SEED");
    eprintln!("powercut: {kind:?} server, seed {seed} (POWERCUT_SEED={seed} replays it)");
    let started = Instant::now();
    let mut trial = Trial::new(kind, seed);
    for cut in 1..=cuts {
        trial.round(cut, cuts);
    }
    let s = &trial.stats;
    eprintln!(
        "powercut: {kind:?} server, seed {seed}: {} cuts ({}) in {:.0} s; {} acknowledged changes \
         ({} of them media), {} lost ({} media), {} corrupt, {} temporary files left after start-up, {} client errors, {} retries, \
         {} repairs ({} refused)",
        s.cuts,
        s.plans
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed().as_secs_f64(),
        s.acked,
        s.acked_media,
        s.lost,
        s.lost_media,
        s.corrupt,
        s.temp_left,
        s.client_errors,
        s.retries,
        s.repairs,
        s.failed_repairs,
    );
    println!(
        "powercut: {} cuts, {} acknowledged changes lost, {} corrupt",
        s.cuts, s.lost, s.corrupt
    );
    assert_eq!(
        (s.lost, s.corrupt, s.temp_left, s.client_errors),
        (0, 0, 0, 0),
        "lost, corrupt, temporary files left, client errors (seed {seed})"
    );
}
