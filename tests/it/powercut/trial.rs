//! One power-cut run: the simulator, the server on it, the acknowledging
//! proxy and the real client's devices; rounds of steps that each end with
//! a cut, a restart on what survived, and the checks (see `mod.rs`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::device::{Device, Driver};
use super::fs::{Control, PowerFs};
use super::proxy::{AckPlan, AckProxy};
use super::state::{
    self, Notes, device_media, device_notes, read_backup, read_collection, read_media, temp_files,
};
use crate::support::rng::Rng;
use crate::support::{Server, ServerKind, our_binary};

/// Backups the server keeps per user (its default).
const KEEP_BACKUPS: usize = 8;
/// Users a run adds at most (the first one included).
const MAX_USERS: usize = 4;
/// Mutating calls assumed for a kind of step before one has been measured.
const DEFAULT_OPS: u64 = 300;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    /// Edit, add and delete notes, then a normal sync (a full one if asked).
    Notes,
    /// Add and trash media files, then a media sync.
    Media,
    /// A full upload (a download instead after an acknowledged restore).
    FullUpload,
    /// `backup restore` (ours).
    Restore,
    /// The next configured user starts syncing (first sync: a full upload
    /// into a folder the server just made).
    NewUser,
    /// `user add` (ours).
    UserAdd,
    /// `user passwd` (ours).
    Passwd,
}

impl Step {
    /// Whether the step's acknowledgement is a command's exit status.
    fn by_command(self) -> bool {
        matches!(self, Step::Restore | Step::UserAdd | Step::Passwd)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// Not in this step.
    None,
    /// Right before the k-th mutating file-system call of the step.
    AtCall(u64),
    BeforeAck,
    AfterAck,
}

/// What the server must hold for one user: what was acknowledged.
#[derive(Default)]
struct Facts {
    notes: Notes,
    deleted: BTreeSet<i64>,
    /// Name to SHA-1, or `None` for an acknowledged deletion.
    media: BTreeMap<String, Option<String>>,
    /// Collections a full upload replaced: each must be in a backup (ours).
    backups: Vec<Notes>,
    /// An acknowledged restore: the collection (or the staged restore) has this `scm`.
    restored_scm: Option<i64>,
}

struct User {
    name: String,
    device: Device,
    facts: Facts,
    generation: u32,
}

/// An account of ours in `users.txt`, managed with `user add` and `passwd`.
struct Account {
    name: String,
    /// Its acknowledged line (a PHC string: compared as text).
    line: String,
    /// A `passwd` was cut: the line may have changed.
    maybe_changed: bool,
}

/// What a run counted.
#[derive(Default)]
pub struct Stats {
    pub cuts: usize,
    /// Where each cut fell.
    pub plans: BTreeMap<&'static str, usize>,
    pub acked: usize,
    pub lost: usize,
    /// Of those, media files (added or deleted).
    pub acked_media: usize,
    pub lost_media: usize,
    pub corrupt: usize,
    pub temp_left: usize,
    pub client_errors: usize,
    /// Network errors without a cut, retried once.
    pub retries: usize,
    pub repairs: usize,
    /// Repairs the server refused (a download or media sync failed).
    pub failed_repairs: usize,
}

pub struct Trial {
    kind: ServerKind,
    rng: Rng,
    // Dropped in this order (see Drop): server, watcher, simulator.
    server: Option<Server>,
    watcher: Option<JoinHandle<()>>,
    fs: Option<PowerFs>,
    /// Processes using the mount, killed when the power goes: only
    /// unreaped children are listed, so a pid is never someone else's.
    victims: Arc<Mutex<Vec<u32>>>,
    proxy: AckProxy,
    driver: Driver,
    users: Vec<User>,
    accounts: Vec<Account>,
    /// A `user add` that was cut: the account may exist.
    maybe_account: Option<String>,
    /// A `backup restore` that was cut, for this user.
    maybe_restore: Option<String>,
    /// Users configured in the environment that have not synced yet.
    pool: Vec<(String, String)>,
    configured: Vec<(String, String)>,
    next_account: u32,
    version: u64,
    media_batch: u64,
    ops_seen: BTreeMap<Step, u64>,
    pub stats: Stats,
    /// Corruption and losses already counted (they stay until repaired).
    reported: HashSet<String>,
    /// Acknowledged changes already counted.
    acked_seen: HashSet<String>,
    log: File,
    backing: PathBuf,
    mount: PathBuf,
    scratch: PathBuf,
    devices: PathBuf,
    dir: TempDir,
}

impl Drop for Trial {
    fn drop(&mut self) {
        // Calls stuck behind a frozen mount must fail before the server can
        // be reaped.
        if let Some(fs) = &self.fs {
            if let Ok(mut c) = Control::connect(fs.control_path()) {
                let _ = c.send("release");
            }
        }
        self.victims.lock().unwrap().clear();
        drop(self.server.take());
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        drop(self.fs.take());
    }
}

impl Trial {
    pub fn new(kind: ServerKind, seed: u64) -> Trial {
        let dir = TempDir::new().expect("trial folder");
        let backing = dir.path().join("disk");
        let mount = dir.path().join("mnt");
        let scratch = dir.path().join("scratch");
        let devices = dir.path().join("devices");
        for d in [&backing, &mount, &scratch, &devices] {
            std::fs::create_dir(d).expect("trial folder");
        }
        let mut dir = dir;
        if std::env::var_os("POWERCUT_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("powercut: keeping {}", dir.path().display());
        }
        let driver = Driver::start(&dir.path().join("client.log"));
        let log = File::create(dir.path().join("servers.log")).expect("server log");
        // Both servers read these from the environment.
        let configured: Vec<(String, String)> = (1..=MAX_USERS)
            .map(|i| (format!("user{i}"), format!("pass{i}")))
            .collect();
        let mut trial = Trial {
            kind,
            rng: Rng::new(seed),
            server: None,
            watcher: None,
            fs: None,
            victims: Arc::new(Mutex::new(Vec::new())),
            proxy: AckProxy::start(),
            driver,
            users: Vec::new(),
            accounts: Vec::new(),
            maybe_account: None,
            maybe_restore: None,
            pool: configured.iter().rev().cloned().collect(),
            configured,
            next_account: 1,
            version: 0,
            media_batch: 0,
            ops_seen: BTreeMap::new(),
            stats: Stats::default(),
            reported: HashSet::new(),
            acked_seen: HashSet::new(),
            log,
            backing,
            mount,
            scratch,
            devices,
            dir,
        };
        let (name, password) = trial.pool.pop().expect("a configured user");
        trial.add_user(&name, &password);
        trial.power_on();
        trial
    }

    fn fs(&mut self) -> &mut PowerFs {
        self.fs.as_mut().expect("mounted")
    }

    fn frozen(&mut self) -> bool {
        self.fs().frozen()
    }

    // ------------------------------------------------------------ power

    /// Mounts the simulator over what survived, starts the server on it,
    /// and a watcher that kills everything on the mount once the power goes.
    fn power_on(&mut self) {
        let fs = PowerFs::mount(&self.backing, &self.mount, &self.dir.path().join("control"));
        let base = self.mount.to_str().expect("utf-8").to_string();
        let env = [("SYNC_BASE", base.as_str())];
        let users: Vec<(&str, &str)> = self
            .configured
            .iter()
            .map(|(u, p)| (u.as_str(), p.as_str()))
            .collect();
        let server = Server::start_kind(self.kind, &users, &env);
        self.victims.lock().unwrap().push(server.pid());
        self.proxy.target(server.port(), fs.control_path());
        let control = fs.control_path().to_path_buf();
        let victims = Arc::clone(&self.victims);
        let proxy = self.proxy.clone();
        self.watcher = Some(thread::spawn(move || {
            let Ok(mut c) = Control::connect(&control) else {
                return;
            };
            if c.send("wait").ok().as_deref() != Some("frozen") {
                return;
            }
            // Power is off: nothing more reaches a client, every process on
            // the mount dies where it stands, then its stuck calls may fail.
            proxy.trip();
            for pid in victims.lock().unwrap().iter() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            let _ = c.send("release");
        }));
        self.fs = Some(fs);
        self.server = Some(server);
    }

    /// After the power went off: reap the server, cut (the backing folder
    /// keeps what was durable) and power on again.
    fn power_cycle(&mut self) {
        if !self.frozen() {
            self.fs().freeze();
        }
        self.watcher
            .take()
            .expect("watcher")
            .join()
            .expect("watcher");
        let server = self.server.take().expect("server");
        self.victims
            .lock()
            .unwrap()
            .retain(|pid| *pid != server.pid());
        let _ = writeln!(
            self.log,
            "---- server on port {}:\n{}",
            server.port(),
            server.log()
        );
        let _ = writeln!(
            self.log,
            "---- live before the cut:\n{}",
            listing(&self.backing)
        );
        drop(server);
        self.fs.take().expect("mounted").cut();
        let _ = writeln!(
            self.log,
            "---- on disk after the cut:\n{}",
            listing(&self.backing)
        );
        self.power_on();
    }

    // ------------------------------------------------------------ rounds

    /// Runs one to three steps, the last with a cut in it (or right after
    /// it), then restarts on what survived and checks.
    pub fn round(&mut self, cut: usize, cuts: usize) {
        let steps = 1 + self.rng.below(3);
        let mut done = Vec::new();
        // Half the rounds start after a pause long enough for the kernel to
        // have written everything back; the others right after the restart.
        if self.rng.below(2) == 0 {
            self.fs().writeback();
            done.push("writeback".to_string());
        }
        for i in 0..steps {
            let Some((step, user)) = self.choose_step() else {
                break;
            };
            let plan = if i + 1 == steps {
                self.choose_cut(step)
            } else {
                Cut::None
            };
            let who = match step {
                Step::NewUser | Step::UserAdd | Step::Passwd => String::new(),
                _ => format!("({})", self.users[user].name),
            };
            let t = Instant::now();
            self.step(step, user, plan);
            done.push(format!(
                "{step:?}{who} cut {plan:?} {:.1}s",
                t.elapsed().as_secs_f64()
            ));
            if self.frozen() {
                break;
            }
        }
        let at = match self.frozen() {
            true => plan_name(done.last().map_or("", String::as_str)),
            false => "after the steps",
        };
        *self.stats.plans.entry(at).or_default() += 1;
        let t = Instant::now();
        self.power_cycle();
        let cycle = t.elapsed().as_secs_f64();
        self.stats.cuts += 1;
        let (lost, corrupt) = (self.stats.lost, self.stats.corrupt);
        let t = Instant::now();
        self.check();
        eprintln!(
            "powercut: cut {cut}/{cuts} after {}: {} lost, {} corrupt (restart {cycle:.1}s, check {:.1}s)",
            done.join(", "),
            self.stats.lost - lost,
            self.stats.corrupt - corrupt,
            t.elapsed().as_secs_f64()
        );
    }

    fn choose_step(&mut self) -> Option<(Step, usize)> {
        if self.users.is_empty() {
            return None;
        }
        let user = self.rng.below(self.users.len() as u64) as usize;
        let ours = self.kind == ServerKind::Ours;
        let has_backup = ours && !backups_in(&self.backing.join(&self.users[user].name)).is_empty();
        let menu = [
            (Step::Notes, 30, true),
            (Step::Media, 30, true),
            (Step::FullUpload, 12, true),
            (Step::Restore, 8, has_backup),
            (Step::NewUser, 8, !self.pool.is_empty()),
            (Step::UserAdd, 5, ours && self.accounts.len() < MAX_USERS),
            (Step::Passwd, 5, ours && !self.accounts.is_empty()),
        ];
        let total: u64 = menu.iter().filter(|m| m.2).map(|m| m.1).sum();
        let mut pick = self.rng.below(total);
        for (step, weight, allowed) in menu {
            if !allowed {
                continue;
            }
            if pick < weight {
                return Some((step, user));
            }
            pick -= weight;
        }
        unreachable!()
    }

    fn choose_cut(&mut self, step: Step) -> Cut {
        let seen = self.ops_seen.get(&step).copied().unwrap_or(DEFAULT_OPS);
        match self.rng.below(4) {
            0 | 1 => Cut::AtCall(1 + self.rng.below(seen)),
            // A command's acknowledgement is its exit: "right before" is one
            // of its last calls.
            2 if step.by_command() => Cut::AtCall(seen.saturating_sub(self.rng.below(3)).max(1)),
            2 => Cut::BeforeAck,
            _ => Cut::AfterAck,
        }
    }

    fn step(&mut self, step: Step, mut user: usize, plan: Cut) {
        let before = self.fs().ops();
        match plan {
            Cut::AtCall(k) => self.fs().arm(k),
            Cut::BeforeAck => self.proxy.plan(AckPlan::CutBefore),
            Cut::AfterAck if !step.by_command() => self.proxy.plan(AckPlan::CutAfter),
            _ => {}
        }
        let after_exit = plan == Cut::AfterAck;
        match step {
            Step::Notes => self.notes(user),
            Step::Media => self.media(user),
            Step::FullUpload => {
                let download = self.users[user].device.must_download;
                self.full_sync(user, download);
            }
            Step::Restore => self.restore(user, after_exit),
            Step::NewUser => user = self.new_user(),
            Step::UserAdd => self.user_add(after_exit),
            Step::Passwd => self.passwd(after_exit),
        }
        self.proxy.plan(AckPlan::Pass);
        self.account(user);
        if !self.frozen() {
            self.fs().disarm();
            let used = self.fs().ops() - before;
            let seen = self.ops_seen.entry(step).or_insert(used);
            *seen = (*seen).max(used);
        }
    }

    // ------------------------------------------------------------ steps

    fn add_user(&mut self, name: &str, password: &str) -> usize {
        let mut device = Device::new(name, password, &self.devices, 0);
        let seed = (self.rng.below(1000) + 1).to_string();
        let path = device.path_str().to_string();
        self.local(&["make", "--path", &path, "--notes", "20", "--seed", &seed]);
        device.must_download = false;
        self.users.push(User {
            name: name.to_string(),
            device,
            facts: Facts::default(),
            generation: 0,
        });
        self.users.len() - 1
    }

    /// A client command on local files only: it cannot fail.
    fn local(&mut self, args: &[&str]) -> serde_json::Value {
        self.driver
            .call(args)
            .unwrap_or_else(|e| panic!("client {args:?} failed: {e}"))
    }

    fn notes(&mut self, user: usize) {
        self.version += 1;
        let args: Vec<String> = [
            ("add", 1 + self.rng.below(4)),
            ("edit", self.rng.below(4)),
            ("delete", self.rng.below(2)),
            ("seed", self.rng.below(1 << 30)),
            ("version", self.version),
        ]
        .iter()
        .flat_map(|(k, v)| ["--arg".to_string(), format!("{k}={v}")])
        .collect();
        let path = self.users[user].device.path_str().to_string();
        let mut call = vec!["run", "--path", &path, "--script", "powercut_notes"];
        call.extend(args.iter().map(String::as_str));
        self.local(&call);
        self.sync(user);
    }

    /// A normal sync, then the full sync it asks for: a download after an
    /// acknowledged restore (as the README tells users), else an upload.
    fn sync(&mut self, user: usize) {
        let out = self.sync_call(user, "sync");
        match out {
            Ok(v) => {
                let required = v["required"].as_str().unwrap_or_default().to_string();
                if required.starts_with("FULL_") {
                    let download =
                        self.users[user].device.must_download || required == "FULL_DOWNLOAD";
                    self.full_sync(user, download);
                }
            }
            Err(e) => self.client_failed(user, "sync", e),
        }
    }

    fn full_sync(&mut self, user: usize, download: bool) {
        let command = if download {
            "full-download"
        } else {
            "full-upload"
        };
        if !download {
            // Choosing Upload replaces whatever the server holds, a restore
            // too, even if the answer never arrives (the client also stamps
            // a new `scm` on what it uploads).
            self.users[user].facts.restored_scm = None;
        }
        let out = self.sync_call(user, command);
        match out {
            Ok(_) if download => self.users[user].device.must_download = false,
            Ok(_) => {}
            Err(e) => self.client_failed(user, command, e),
        }
    }

    fn media(&mut self, user: usize) {
        self.media_batch += 1;
        let device = &self.users[user].device;
        // One uploadChanges carries at most 25 files; stay well below, so
        // one acknowledgement covers all pending changes.
        let add = if device.media_changes >= 12 {
            0
        } else {
            self.rng.below(4)
        };
        let remove = self.rng.below(3);
        let seed = self.rng.below(1 << 30);
        let path = device.path_str().to_string();
        let out = self.local(&[
            "run",
            "--path",
            &path,
            "--script",
            "powercut_media",
            "--arg",
            &format!("add={add}"),
            "--arg",
            &format!("remove={remove}"),
            "--arg",
            &format!("seed={seed}"),
            "--arg",
            &format!("prefix=pc{}", self.media_batch),
        ]);
        let changed = out["added"].as_object().map_or(0, |a| a.len())
            + out["removed"].as_array().map_or(0, |r| r.len());
        self.users[user].device.media_changes += changed;
        let out = self.sync_call(user, "media-sync");
        if let Err(e) = out {
            self.client_failed(user, "media-sync", e);
        }
    }

    fn restore(&mut self, user: usize, cut_after: bool) {
        let name = self.users[user].name.clone();
        match self.command(&["backup", "restore", &name], "", &self.mount.clone()) {
            Some(true) => {
                // What was staged, read from the live files (the mount may
                // be frozen already).
                let pending = self
                    .backing
                    .join(&name)
                    .join("backups/restore-pending.anki2");
                let staged = read_collection(&pending, &self.scratch, "staged.anki2")
                    .unwrap_or_else(|e| panic!("the staged restore: {e}"));
                let u = &mut self.users[user];
                u.facts.notes = staged.notes;
                u.facts.deleted.clear();
                u.facts.restored_scm = Some(staged.scm);
                u.device.must_download = true;
                self.stats.acked += 1;
                if cut_after {
                    self.fs().freeze();
                }
            }
            Some(false) => self.command_failed(&name, "backup restore"),
            None => self.maybe_restore = Some(name),
        }
    }

    fn passwd(&mut self, cut_after: bool) {
        let account = self.rng.below(self.accounts.len() as u64) as usize;
        let name = self.accounts[account].name.clone();
        let input = format!("pw{}\n", self.rng.below(1_000_000));
        match self.command(&["user", "passwd", &name], &input, &self.mount.clone()) {
            Some(true) => {
                // Read live: the mount may be frozen.
                let line = users_line(&self.backing, &name).expect("the changed line");
                self.accounts[account].line = line;
                self.stats.acked += 1;
                if cut_after {
                    self.fs().freeze();
                }
            }
            Some(false) => self.command_failed(&name, "user passwd"),
            None => self.accounts[account].maybe_changed = true,
        }
    }

    fn user_add(&mut self, cut_after: bool) {
        let name = format!("account{}", self.next_account);
        self.next_account += 1;
        let input = format!("pw{}\n", self.rng.below(1_000_000));
        match self.command(&["user", "add", &name], &input, &self.mount.clone()) {
            Some(true) => {
                let line = users_line(&self.backing, &name).expect("the new line");
                self.accounts.push(Account {
                    name,
                    line,
                    maybe_changed: false,
                });
                self.stats.acked += 1;
                if cut_after {
                    self.fs().freeze();
                }
            }
            Some(false) => self.command_failed(&name, "user add"),
            None => self.maybe_account = Some(name),
        }
    }

    /// The next configured user's device starts syncing; returns its index.
    fn new_user(&mut self) -> usize {
        let (name, password) = self.pool.pop().expect("a configured user left");
        let user = self.add_user(&name, &password);
        self.sync(user);
        user
    }

    /// Runs our binary with `args` and `--base base`: `Some(exit 0)`, or
    /// `None` if the power cut killed it.
    fn command(&mut self, args: &[&str], stdin: &str, base: &Path) -> Option<bool> {
        let mut cmd = Command::new(our_binary());
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("SYNC_") || key == "PASSWORDS_HASHED" {
                cmd.env_remove(&*key);
            }
        }
        let err = File::create(self.scratch.join("command.err")).expect("stderr file");
        let mut child = cmd
            .args(args)
            .arg("--base")
            .arg(base)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("run our binary");
        let pid = child.id();
        self.victims.lock().unwrap().push(pid);
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(stdin.as_bytes());
        }
        let status = loop {
            // Reaped only under the lock, so the watcher never kills a
            // reused pid.
            let mut victims = self.victims.lock().unwrap();
            if let Some(status) = child.try_wait().expect("wait for our binary") {
                victims.retain(|p| *p != pid);
                break status;
            }
            drop(victims);
            thread::sleep(Duration::from_millis(5));
        };
        if status.success() {
            return Some(true);
        }
        if self.fs.is_some() && self.frozen() {
            return None;
        }
        Some(false)
    }

    fn command_failed(&mut self, user: &str, what: &str) {
        self.stats.client_errors += 1;
        let err = std::fs::read_to_string(self.scratch.join("command.err")).unwrap_or_default();
        eprintln!("powercut: `{what}` for {user} failed without a cut:\n{err}");
    }

    fn client_failed(&mut self, user: usize, what: &str, error: serde_json::Value) {
        if self.frozen() {
            return; // the power cut did it
        }
        self.stats.client_errors += 1;
        eprintln!(
            "powercut: {what} for {} failed without a cut: {error}",
            self.users[user].name
        );
        self.repair(user);
    }

    /// Runs a sync command on `user`'s device. A network error while the
    /// power is on is retried once after a pause, as a user taps Sync again
    /// (a keep-alive connection can close just as a request goes out);
    /// retries are counted and reported.
    fn sync_call(
        &mut self,
        user: usize,
        command: &str,
    ) -> Result<serde_json::Value, serde_json::Value> {
        let endpoint = self.proxy.endpoint();
        let out = self.users[user]
            .device
            .sync_call(&mut self.driver, command, &endpoint);
        match out {
            Err(e) if e["error"] == "NetworkError" && !self.frozen() => {
                self.stats.retries += 1;
                eprintln!(
                    "powercut:   {command} for {}: network error without a cut, retried: {e}",
                    self.users[user].name
                );
                thread::sleep(Duration::from_secs(2));
                self.users[user]
                    .device
                    .sync_call(&mut self.driver, command, &endpoint)
            }
            out => out,
        }
    }

    /// A device that can no longer sync is replaced by a fresh one that
    /// downloads everything; what the server holds becomes the baseline.
    /// A server that cannot even be downloaded from (the official one
    /// after losing media) keeps the old device; that is counted.
    fn repair(&mut self, user: usize) {
        self.stats.repairs += 1;
        let endpoint = self.proxy.endpoint();
        let u = &mut self.users[user];
        let mut device = Device::new(&u.name, &u.device.password, &self.devices, u.generation + 1);
        device.must_download = false;
        let down = device.sync_call(&mut self.driver, "full-download", &endpoint);
        if let Err(e) = down {
            self.stats.failed_repairs += 1;
            eprintln!(
                "powercut:   {}: cannot download to a new device: {e}",
                u.name
            );
            return;
        }
        u.generation += 1;
        u.device = device;
        let media = u
            .device
            .sync_call(&mut self.driver, "media-sync", &endpoint);
        if let Err(e) = media {
            self.stats.failed_repairs += 1;
            eprintln!(
                "powercut:   {}: a new device's media sync fails: {e}",
                u.name
            );
        }
        u.facts.notes = device_notes(&u.device.path);
        u.facts.deleted.clear();
        u.facts.media.clear();
        u.facts.restored_scm = None;
    }

    /// Records what the acknowledgements the client saw in this step promise.
    fn account(&mut self, user: usize) {
        for ack in self.proxy.take_acks() {
            match ack.path.as_str() {
                "/sync/finish" if ack.status == 200 => self.notes_acked(user, false),
                "/sync/upload" if ack.says(b"OK") => self.notes_acked(user, true),
                "/msync/uploadChanges" if ack.status == 200 => self.media_acked(user),
                _ => {}
            }
        }
    }

    /// The server now holds what the device's media database calls synced
    /// (the client marks what each answered upload carried, and what it
    /// took from the server).
    fn media_acked(&mut self, user: usize) {
        let u = &mut self.users[user];
        let synced: BTreeMap<String, Option<String>> = device_media(&u.device.path)
            .into_iter()
            .filter(|(_, (_, dirty))| !dirty)
            .map(|(name, (sha1, _))| (name, sha1))
            .collect();
        let keys: Vec<String> = synced
            .iter()
            .filter(|(name, sha1)| u.facts.media.get(*name) != Some(sha1))
            .map(|(name, sha1)| format!("{}: media {name} {sha1:?}", u.name))
            .collect();
        u.facts.media = synced;
        u.device.media_changes = 0;
        for key in keys {
            self.acked(key);
        }
    }

    /// The server now holds the device's notes: after `finish`, and after a
    /// full upload, which (ours) first backs up the collection it replaces.
    fn notes_acked(&mut self, user: usize, upload: bool) {
        let ours = self.kind == ServerKind::Ours;
        let u = &mut self.users[user];
        let now = device_notes(&u.device.path);
        let f = &mut u.facts;
        if upload {
            if ours && !f.notes.is_empty() {
                // Less what the device deleted since: a sync whose answer a
                // cut withheld may have deleted it on the server before the
                // upload replaced the collection (as in `check_collection`).
                let kept = f
                    .notes
                    .iter()
                    .filter(|(id, _)| now.contains_key(id))
                    .map(|(id, v)| (*id, *v))
                    .collect();
                f.backups.push(kept);
                self.stats.acked += 1;
            }
            f.restored_scm = None;
        }
        let mut keys = Vec::new();
        for id in f.notes.keys().filter(|id| !now.contains_key(id)) {
            f.deleted.insert(*id);
            keys.push(format!("{}: deleted note {id}", u.name));
        }
        keys.extend(
            now.iter()
                .filter(|(id, v)| f.notes.get(id) != Some(v))
                .map(|(id, v)| format!("{}: note {id} version {v}", u.name)),
        );
        f.deleted.retain(|id| !now.contains_key(id));
        f.notes = now;
        for key in keys {
            self.acked(key);
        }
    }

    // ------------------------------------------------------------ checks

    /// Counts a lost change once: a device that still has it goes on
    /// counting it as synced, and the next acknowledgement would promise it
    /// again.
    fn lost(&mut self, what: String) {
        if self.reported.insert(format!("lost {what}")) {
            self.stats.lost += 1;
            if what.contains(" media file ") {
                self.stats.lost_media += 1;
            }
            eprintln!("powercut:   LOST {what}");
        }
    }

    /// Counts a loss that cannot come back (a backup, a restore, an
    /// account line: each is promised once).
    fn lost_again(&mut self, what: String) {
        self.stats.lost += 1;
        eprintln!("powercut:   LOST {what}");
    }

    /// Counts an acknowledged change once (see `lost`).
    fn acked(&mut self, what: String) {
        if what.contains(": media ") {
            if self.acked_seen.contains(&what) {
                return;
            }
            self.stats.acked_media += 1;
        }
        if self.acked_seen.insert(what) {
            self.stats.acked += 1;
        }
    }

    fn corrupt(&mut self, what: String) {
        if self.reported.insert(what.clone()) {
            self.stats.corrupt += 1;
            eprintln!("powercut:   CORRUPT {what}");
        }
    }

    /// The server has restarted on what survived the cut.
    fn check(&mut self) {
        for temp in temp_files(&self.mount) {
            // Counted once, like corruption: it stays until removed.
            if self.reported.insert(format!("temp {}", temp.display())) {
                self.stats.temp_left += 1;
                eprintln!(
                    "powercut:   temporary file after start-up: {}",
                    temp.display()
                );
            }
        }
        if self.kind == ServerKind::Ours {
            let listed = self.command(&["user", "list"], "", &self.mount.clone());
            if listed != Some(true) {
                let err =
                    std::fs::read_to_string(self.scratch.join("command.err")).unwrap_or_default();
                self.corrupt(format!("users.txt does not parse: {err}"));
            }
        }
        self.check_accounts();
        if let Some(name) = self.maybe_restore.take() {
            let pending = self.mount.join(&name).join("backups/restore-pending.anki2");
            if pending.exists() {
                if let Ok(staged) = read_collection(&pending, &self.scratch, "staged.anki2") {
                    let u = self
                        .users
                        .iter_mut()
                        .find(|u| u.name == name)
                        .expect("user");
                    u.facts.notes = staged.notes;
                    u.facts.deleted.clear();
                    u.facts.restored_scm = Some(staged.scm);
                    u.device.must_download = true;
                }
            }
        }
        for i in 0..self.users.len() {
            self.check_collection(i);
            self.check_media(i);
            if self.kind == ServerKind::Ours {
                self.check_backups(i);
            }
        }
    }

    /// Ours: `users.txt` parses and holds every acknowledged line (after a
    /// `passwd` that was cut, the old line or a new one).
    fn check_accounts(&mut self) {
        if self.kind != ServerKind::Ours {
            return;
        }
        if self.command(&["user", "list"], "", &self.mount.clone()) != Some(true) {
            let err = std::fs::read_to_string(self.scratch.join("command.err")).unwrap_or_default();
            self.corrupt(format!("users.txt does not parse: {err}"));
        }
        if let Some(name) = self.maybe_account.take() {
            if let Some(line) = users_line(&self.mount, &name) {
                self.accounts.push(Account {
                    name,
                    line,
                    maybe_changed: false,
                });
            }
        }
        let mut lost = Vec::new();
        for (i, account) in self.accounts.iter_mut().enumerate() {
            let have = users_line(&self.mount, &account.name);
            match have {
                Some(line) if line == account.line => {}
                Some(line) if account.maybe_changed => account.line = line,
                _ => lost.push(i),
            }
            account.maybe_changed = false;
        }
        for i in lost.into_iter().rev() {
            let account = self.accounts.remove(i);
            self.lost_again(format!("{}: the acknowledged users.txt line", account.name));
        }
    }

    fn check_collection(&mut self, i: usize) {
        let name = self.users[i].name.clone();
        let dir = self.mount.join(&name);
        let path = dir.join("collection.anki2");
        let read = if path.exists() {
            match read_collection(&path, &self.scratch, "check.anki2") {
                Ok(col) => Some(col),
                Err(e) => {
                    self.corrupt(format!("{name}: collection: {e}"));
                    return;
                }
            }
        } else {
            None
        };
        if let Some(col) = read.as_ref().filter(|c| !c.empty) {
            let copy = col.copy.to_str().expect("utf-8").to_string();
            if let Err(e) = self.driver.call(&["count", "--path", &copy]) {
                self.corrupt(format!(
                    "{name}: the real client cannot open the collection: {e}"
                ));
            }
        }
        // An acknowledged restore not applied yet: its staged file is what
        // the server will hold from the next request on.
        let staged = match self.users[i].facts.restored_scm {
            Some(scm) => staged_collection(&dir, &self.scratch).filter(|c| c.scm == scm),
            None => None,
        };
        let empty = Notes::new();
        let held = staged
            .as_ref()
            .or(read.as_ref())
            .map_or(&empty, |c| &c.notes);
        // A note the device deleted since may be gone: a sync whose answer
        // the cut withheld can still have reached the disk.
        let local = device_notes(&self.users[i].device.path);
        let f = &self.users[i].facts;
        let lost_notes: Vec<i64> = f
            .notes
            .iter()
            .filter(|(id, _)| local.contains_key(id))
            .filter(|(id, v)| held.get(id).is_none_or(|have| have < v))
            .map(|(id, _)| *id)
            .collect();
        let back: Vec<i64> = f
            .deleted
            .iter()
            .filter(|id| held.contains_key(id))
            .copied()
            .collect();
        let restore_lost = f
            .restored_scm
            .is_some_and(|scm| staged.is_none() && read.as_ref().is_none_or(|c| c.scm != scm));
        for id in &lost_notes {
            self.lost(format!(
                "{name}: note {id} (version {})",
                self.users[i].facts.notes[id]
            ));
        }
        for id in &back {
            self.lost(format!("{name}: deleted note {id} is back"));
        }
        if restore_lost {
            self.lost_again(format!("{name}: the acknowledged restore"));
        }
        let f = &mut self.users[i].facts;
        for id in lost_notes {
            f.notes.remove(&id);
        }
        for id in back {
            f.deleted.remove(&id);
        }
        if restore_lost {
            f.restored_scm = None;
        }
    }

    fn check_media(&mut self, i: usize) {
        let name = self.users[i].name.clone();
        let media = match read_media(&self.mount.join(&name), &self.scratch) {
            Ok(media) => media,
            Err(e) => return self.corrupt(format!("{name}: media: {e}")),
        };
        for (file, row) in media.rows.iter().filter(|(_, r)| r.size > 0) {
            if media.files.get(file) != Some(&row.sha1) {
                let have = media.files.get(file).map_or("missing", String::as_str);
                self.corrupt(format!(
                    "{name}: media/{file} is {have}, media.db says {}",
                    row.sha1
                ));
            }
        }
        let mut lost = Vec::new();
        let local = device_media(&self.users[i].device.path);
        let device_folder = self.users[i].device.path.with_extension("media");
        for (file, want) in &self.users[i].facts.media {
            let row = media.rows.get(file).filter(|r| r.size > 0);
            // Deleted on the device since: gone is fine too (as for notes),
            // whether the device's media database has the deletion yet or
            // not (a sync the cut broke off may roll its scan back), or has
            // already seen it on the server (an upload whose answer a cut
            // withheld, listed by the next sync's mediaChanges).
            let deleting = local.get(file).is_some_and(|(sha1, _)| sha1.is_none())
                || !device_folder.join(file).exists();
            let ok = deleting && row.is_none()
                || match want {
                    Some(sha1) => {
                        row.is_some_and(|r| &r.sha1 == sha1) && media.files.get(file) == Some(sha1)
                    }
                    None => row.is_none() && !media.files.contains_key(file),
                };
            if !ok {
                lost.push(file.clone());
            }
        }
        for file in lost {
            let what = match &self.users[i].facts.media[&file] {
                Some(sha1) => format!("added media file {file} ({})", &sha1[..8]),
                None => format!("deleted media file {file}"),
            };
            self.lost(format!("{name}: {what}"));
            self.users[i].facts.media.remove(&file);
        }
    }

    fn check_backups(&mut self, i: usize) {
        let name = self.users[i].name.clone();
        let dir = self.mount.join(&name);
        let mut held = Vec::new();
        for path in backups_in(&dir) {
            match read_backup(&path, &self.scratch) {
                Ok(notes) => held.push(notes),
                Err(e) => self.corrupt(format!("{name}: backup {e}")),
            }
        }
        let pending = dir.join("backups/restore-pending.anki2");
        if pending.exists() {
            if let Err(e) = read_collection(&pending, &self.scratch, "staged.anki2") {
                self.corrupt(format!("{name}: staged restore: {e}"));
            }
        }
        let expected = std::mem::take(&mut self.users[i].facts.backups);
        for notes in expected {
            let kept = held.iter().any(|b| {
                notes
                    .iter()
                    .all(|(id, v)| b.get(id).is_some_and(|have| have >= v))
            });
            // Found after a cut, it is durable; only rotation removes it later.
            if !kept && held.len() < KEEP_BACKUPS {
                self.lost_again(format!(
                    "{name}: the backup of the collection a full upload replaced"
                ));
            }
        }
    }
}

/// Every file under `root` with its size, one a line (for the log).
fn listing(root: &Path) -> String {
    let mut lines = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            let shown = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            match entry.metadata() {
                Ok(m) if m.is_dir() => {
                    lines.push(format!("{shown}/"));
                    folders.push(path);
                }
                Ok(m) => lines.push(format!("{shown} {}", m.len())),
                Err(e) => lines.push(format!("{shown} {e}")),
            }
        }
    }
    lines.sort();
    lines.join("\n")
}

/// `name`'s line in `base/users.txt`, if there is one.
fn users_line(base: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(base.join("users.txt")).ok()?;
    let prefix = format!("{name}:");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .map(str::to_string)
}

/// A staged restore (`backups/restore-pending.anki2`), if one is there and reads.
fn staged_collection(user_dir: &Path, scratch: &Path) -> Option<state::Collection> {
    let pending = user_dir.join("backups/restore-pending.anki2");
    if !pending.exists() {
        return None;
    }
    read_collection(&pending, scratch, "staged.anki2").ok()
}

/// The backups (`*.anki2.zst`) in a user's folder.
fn backups_in(user_dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(user_dir.join("backups"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".anki2.zst"))
        .collect();
    found.sort();
    found
}

fn plan_name(step: &str) -> &'static str {
    if step.contains("AtCall") {
        "at a random call"
    } else if step.contains("BeforeAck") {
        "right before an acknowledgement"
    } else if step.contains("AfterAck") {
        "right after an acknowledgement"
    } else {
        "after the steps"
    }
}
