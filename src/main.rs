//! The `anki-sync-lite` binary: reads settings, starts the server, and turns
//! every start-up problem into one clear message and exit status 1.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anki_sync_lite::auth::live::LiveUsers;
use anki_sync_lite::auth::manage::{self, AccountCommand};
use anki_sync_lite::auth::throttle::Throttle;
use anki_sync_lite::backup;
use anki_sync_lite::backup_cli;
use anki_sync_lite::budget::{self, MemoryBudget};
use anki_sync_lite::cli::{self, BackupCommand, Command};
use anki_sync_lite::config::Config;
use anki_sync_lite::healthcheck;
use anki_sync_lite::http::{self, Service};
use anki_sync_lite::metrics::Metrics;
use anki_sync_lite::migrate;
use anki_sync_lite::user::UserStore;
use anki_sync_lite::{notify, service_env, version};

fn main() -> ExitCode {
    // Before any command creates a file: user data is private.
    anki_sync_lite::fsutil::private_file_modes();
    let mut env: HashMap<String, String> = std::env::vars().collect();
    let command = match cli::parse(std::env::args().skip(1), &mut env) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    if let Some(as_owner) = works_on_data(&command) {
        if let Err(e) = prepare_data_command(&mut env, as_owner) {
            return fail(&e);
        }
    }
    match command {
        Command::Help(topic) => {
            print!("{}", cli::help(topic));
            ExitCode::SUCCESS
        }
        Command::Version => {
            print!("{}", version::text());
            ExitCode::SUCCESS
        }
        Command::Healthcheck => match Config::from_env(&env) {
            Ok(config) => match healthcheck::check(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&format!("unhealthy: {e}")),
            },
            Err(e) => fail(&e.to_string()),
        },
        Command::Serve => match serve(&env) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Command::ImportAnkisyncd { dir, force } => import_ankisyncd(&env, dir, force),
        Command::Account(command) => {
            match manage::run(&env, &command, &mut std::io::stdout().lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Command::Backup(command) => {
            match backup_cli::run(&env, &command, &mut std::io::stdout().lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
    }
}

/// For commands that read or change the data folder: whether they act as its
/// owner when root runs them (those that only write inside it); `None` for
/// the others. `backup export` writes where root asks, and `import-ankisyncd`
/// reads where root keeps the old server's data: both stay root and give
/// what they write into the folder to its owner afterwards.
fn works_on_data(command: &Command) -> Option<bool> {
    match command {
        Command::Account(AccountCommand::Hash) => None,
        Command::Account(_) => Some(true),
        Command::Backup(BackupCommand::Export { .. }) | Command::ImportAnkisyncd { .. } => {
            Some(false)
        }
        Command::Backup(_) => Some(true),
        Command::Serve | Command::Healthcheck | Command::Help(_) | Command::Version => None,
    }
}

/// Before a data command: find the installed service's settings when no
/// data folder is given (src/service_env.rs), then, if `as_owner` and root
/// runs it on a folder that belongs to another account (the service's),
/// become that account, so that all it writes is the service's to read and
/// it sees the folder as the service does.
fn prepare_data_command(env: &mut HashMap<String, String>, as_owner: bool) -> Result<(), String> {
    service_env::fill_from(env, Path::new(service_env::ENV_FILE))?;
    if !as_owner {
        return Ok(());
    }
    let config = Config::from_env(env).map_err(|e| e.to_string())?;
    match foreign_owner(&config.base)? {
        Some((uid, gid)) => become_account(uid, gid, &config.base),
        None => Ok(()),
    }
}

/// The owner of `base` when we are root and it is another account's; `None`
/// otherwise (also for a folder that does not exist yet).
fn foreign_owner(base: &Path) -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    match std::fs::metadata(base) {
        Ok(meta) if meta.uid() != 0 => Ok(Some((meta.uid(), meta.gid()))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", base.display())),
    }
}

fn become_account(uid: u32, gid: u32, base: &Path) -> Result<(), String> {
    // SAFETY: plain system calls on integers, made before any other thread
    // exists; groups first, then the group, then the user (after which the
    // first two would be refused).
    let failed = unsafe {
        libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
    };
    if failed {
        return Err(format!(
            "becoming uid {uid} (the owner of {}): {}",
            base.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Gives `path` and everything under it to `owner` (symbolic links
/// themselves, never what they point to).
fn give_tree(path: &Path, (uid, gid): (u32, u32)) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            give_tree(&entry?.path(), (uid, gid))?;
        }
    }
    Ok(())
}

/// Exits 1 if any user failed (each is reported on stdout) or nothing ran.
fn import_ankisyncd(env: &HashMap<String, String>, dir: PathBuf, force: bool) -> ExitCode {
    let config = match Config::from_env(env) {
        Ok(config) => config,
        Err(e) => return fail(&e.to_string()),
    };
    // Root imports into a service's folder: what it writes goes to the
    // folder's owner afterwards (the source may be readable by root only).
    let owner = match foreign_owner(&config.base) {
        Ok(owner) => owner,
        Err(e) => return fail(&e),
    };
    let options = migrate::Options {
        source: dir,
        base: config.base.clone(),
        force,
        configured: config.users.into_iter().map(|u| u.name).collect(),
    };
    let result = migrate::run(&options, &mut std::io::stdout().lock());
    if let Some(owner) = owner {
        if let Err(e) = give_tree(&config.base, owner) {
            return fail(&format!(
                "giving {} to uid {}: {e}",
                config.base.display(),
                owner.0
            ));
        }
    }
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("anki-sync-lite: {message}");
    ExitCode::FAILURE
}

/// glibc raises its mmap threshold after the first large free, so later
/// multi-MiB buffers (zstd windows, zip entries) come from per-thread arenas
/// and stay resident after use: peak RSS then grows with the number of
/// workers. A fixed threshold returns such buffers to the system on free,
/// and two arenas are plenty for a handful of workers. Measured on the media
/// workload: 27 MiB peak before, about 11 MiB after.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; it is called once,
    // before any other thread exists, with documented parameter values.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// Returns free heap pages to the system, in every arena (glibc otherwise
/// keeps all but the top of each; see `memory`). Measured on the
/// long-running benchmark: the highest phase peak 17.2 MiB before, 15.2 MiB
/// with this alone, 12.5 MiB with idle collections' caches released too.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim takes a plain integer and is thread-safe: it
    // locks each arena while it hands that arena's free pages back.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

/// Gives the calling thread (a background backup) the lowest CPU priority
/// and the lowest best-effort disk priority; Linux keeps both per thread, so
/// the workers keep theirs. Refusals are ignored: the backup then only runs
/// at the usual priority.
#[cfg(target_os = "linux")]
fn lower_thread_priority() {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const BEST_EFFORT_LOWEST: libc::c_long = (2 << 13) | 7;
    // SAFETY: both calls take plain integers and change only the calling
    // thread's scheduling attributes (`who` 0 is the calling thread).
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS as _, 0, 19);
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0,
            BEST_EFFORT_LOWEST,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_thread_priority() {}

fn serve(env: &HashMap<String, String>) -> Result<(), String> {
    tune_allocator();
    backup::set_give_way(lower_thread_priority);
    anki_sync_lite::memory::set_trim(trim_heap);
    // Users may also come from the users file, or be added later.
    let config = Config::from_env(env).map_err(|e| e.to_string())?;
    anki_sync_lite::logger::init(config.log_level)
        .map_err(|e| format!("starting the logger: {e}"))?;
    let users = LiveUsers::load(config.users.clone(), config.passwords_hashed, &config.base)?;
    backup::set_keep(config.backups);
    let store = UserStore::new(&config.base, users.current().names())
        .map_err(|e| format!("preparing the data folder {}: {e}", config.base.display()))?;
    let addr = SocketAddr::new(config.host, config.port);
    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;

    let shutdown = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&shutdown);
    ctrlc::set_handler(move || {
        flag.store(true, Ordering::SeqCst);
        let _ = notify::send("STOPPING=1");
    })
    .map_err(|e| format!("installing the signal handler: {e}"))?;

    log::info!(
        "anki-sync-lite {} serving {} user(s) from {}",
        env!("CARGO_PKG_VERSION"),
        users.current().len(),
        config.base.display()
    );
    // The port is bound, so connections wait in its backlog from now on.
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{addr}{}", config.base_path);
    if let Err(e) = notify::send("READY=1") {
        log::warn!("telling systemd the service is ready: {e}");
    }
    notify::keep_status(config.users.len(), config.base.clone(), url);
    let service = Service {
        throttle: Throttle::default(),
        config,
        users,
        store,
        budget: MemoryBudget::new(budget::POOL_BYTES, budget::PATIENCE),
        recent: Default::default(),
        metrics: Metrics::default(),
    };
    http::run(service, listener, shutdown).map_err(|e| format!("server stopped: {e}"))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The calling thread's nice value and disk priority.
    fn priorities() -> (libc::c_int, libc::c_long) {
        // SAFETY: both calls only read the calling thread's attributes.
        unsafe {
            let nice = libc::getpriority(libc::PRIO_PROCESS as _, 0);
            let io = libc::syscall(libc::SYS_ioprio_get, 1 as libc::c_long, 0 as libc::c_long);
            (nice, io)
        }
    }

    #[test]
    fn a_thread_that_lowers_its_priority_changes_only_its_own() {
        let before = priorities();
        let inside = std::thread::spawn(|| {
            super::lower_thread_priority();
            priorities()
        })
        .join()
        .unwrap();
        assert_eq!(inside, (19, (2 << 13) | 7));
        assert_eq!(priorities(), before);
    }
}
