//! Harness shared by the integration tests: it starts a real sync server on a
//! loopback port and drives it with the real Anki client library through
//! `tests/client/anki_client.py`.
//!
//! `Server::start` runs our binary, or the official `python -m anki.syncserver`
//! when `ANKI_SYNC_TEST_SERVER=official`, so every test doubles as a check of
//! the test itself against the reference implementation.

pub mod data;
pub mod dumps;
pub mod http;
pub mod rng;

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// Selects the server `Server::start` runs: `official` or `ours` (default).
pub const SERVER_SWITCH: &str = "ANKI_SYNC_TEST_SERVER";
const HEALTH_TIMEOUT: Duration = Duration::from_secs(20);
const START_ATTEMPTS: usize = 5;
/// Runs this program instead of the binary cargo built, e.g. a wrapper that
/// execs an ARM build under qemu-user (`.ci/arm-check`).
pub const BIN_OVERRIDE: &str = "ANKI_SYNC_LITE_BIN";

/// The server binary `ServerKind::Ours` runs: `ANKI_SYNC_LITE_BIN` if set.
pub fn our_binary() -> PathBuf {
    match std::env::var_os(BIN_OVERRIDE) {
        Some(bin) if !bin.is_empty() => PathBuf::from(bin),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_anki-sync-lite")),
    }
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Creates (once per test binary; `tests/setup-venv.sh` locks against other
/// processes) the venv holding `anki==26.9.3` and returns its python.
pub fn ensure_venv() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| setup_venv("anki26")).clone()
}

/// Like `ensure_venv`, for the legacy client: the `anki2156` venv holding
/// `anki==2.1.56` (sync protocol v10, multipart framing).
pub fn ensure_legacy_venv() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| setup_venv("anki2156")).clone()
}

/// The `powercut` venv (pyfuse3 and trio, for the power-cut simulator in
/// `tests/powercut/`); the set-up also installs FUSE if it is missing.
pub fn ensure_powercut_venv() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| setup_venv("powercut")).clone()
}

/// The python of venv `name` of `tests/setup-venv.sh` (e.g. `anki2126`, an
/// old library for making collections at its schema), created if needed.
pub fn old_library_python(name: &str) -> PathBuf {
    setup_venv(name)
}

/// Runs `tests/setup-venv.sh NAME` and returns the python it printed.
fn setup_venv(name: &str) -> PathBuf {
    let script = repo_root().join("tests/setup-venv.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(name)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} {name} failed ({}):\n{stderr}",
        script.display(),
        out.status
    );
    let python = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(
        python.is_file(),
        "setup-venv.sh {name} printed no python path:\n{stdout}\n{stderr}"
    );
    python
}

/// Which implementation a `Server` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Ours,
    Official,
}

impl ServerKind {
    /// The kind selected by `ANKI_SYNC_TEST_SERVER` (`official` or `ours`).
    pub fn from_env() -> ServerKind {
        match std::env::var(SERVER_SWITCH).as_deref() {
            Ok("official") => ServerKind::Official,
            Ok("ours") | Ok("") | Err(_) => ServerKind::Ours,
            Ok(other) => panic!("{SERVER_SWITCH}={other}: expected `official` or `ours`"),
        }
    }
}

enum StartError {
    /// Someone else bound the port between our probe and the server's bind.
    PortTaken(String),
    Failed(String),
}

/// A running sync server with its own temporary `SYNC_BASE`; killed on drop.
pub struct Server {
    kind: ServerKind,
    child: Child,
    port: u16,
    base: TempDir,
    log_dir: TempDir,
    /// Serving HTTPS (`SYNC_TLS_CERT` given): endpoint and start-up check differ.
    tls: bool,
    /// Environment for the client drivers that talk to this server (e.g.
    /// `SSL_CERT_FILE` naming a test CA), so no test changes the environment
    /// of the whole test process.
    client_env: Vec<(String, String)>,
}

impl Server {
    /// Starts the server chosen by `ANKI_SYNC_TEST_SERVER` (default: ours).
    /// `users` become `SYNC_USER1..n`; `extra_env` is applied last.
    pub fn start(users: &[(&str, &str)], extra_env: &[(&str, &str)]) -> Server {
        Server::start_kind(ServerKind::from_env(), users, extra_env)
    }

    /// Starts our binary, whatever `ANKI_SYNC_TEST_SERVER` says.
    pub fn start_ours(users: &[(&str, &str)], extra_env: &[(&str, &str)]) -> Server {
        Server::start_kind(ServerKind::Ours, users, extra_env)
    }

    /// Starts our binary under the file-mode creation mask `umask` (e.g.
    /// `0o000`, the most permissive), through `sh -c 'umask ...; exec ...'`.
    pub fn start_ours_with_umask(
        users: &[(&str, &str)],
        extra_env: &[(&str, &str)],
        umask: u32,
    ) -> Server {
        let setup = format!("umask {umask:03o}");
        Server::start_with(ServerKind::Ours, users, extra_env, Some(&setup))
    }

    /// Starts our binary with its address space capped at `bytes` (the
    /// shell's `ulimit -v`, i.e. `RLIMIT_AS`), as `prlimit --as` would.
    pub fn start_ours_with_address_space(
        users: &[(&str, &str)],
        extra_env: &[(&str, &str)],
        bytes: u64,
    ) -> Server {
        let setup = format!("ulimit -v {}", bytes / 1024);
        Server::start_with(ServerKind::Ours, users, extra_env, Some(&setup))
    }

    /// Starts the given kind of server, retrying when another test took the port.
    pub fn start_kind(
        kind: ServerKind,
        users: &[(&str, &str)],
        extra_env: &[(&str, &str)],
    ) -> Server {
        Server::start_with(kind, users, extra_env, None)
    }

    /// `setup` is a shell command run before our binary is exec'd.
    fn start_with(
        kind: ServerKind,
        users: &[(&str, &str)],
        extra_env: &[(&str, &str)],
        setup: Option<&str>,
    ) -> Server {
        let mut clashes = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Server::try_start(kind, users, extra_env, setup) {
                Ok(server) => return server,
                Err(StartError::PortTaken(log)) => clashes.push(log),
                Err(StartError::Failed(why)) => panic!("{kind:?} server did not start: {why}"),
            }
        }
        panic!(
            "{kind:?} server lost the race for a free port {START_ATTEMPTS} times:\n{}",
            clashes.join("\n---\n")
        );
    }

    fn try_start(
        kind: ServerKind,
        users: &[(&str, &str)],
        extra_env: &[(&str, &str)],
        setup: Option<&str>,
    ) -> Result<Server, StartError> {
        let port = free_port();
        let base = TempDir::new().expect("temp SYNC_BASE");
        let log_dir = TempDir::new().expect("temp log dir");
        let log = File::create(log_dir.path().join("server.log")).expect("server log");
        let mut cmd = match (kind, setup) {
            (ServerKind::Ours, None) => Command::new(our_binary()),
            (ServerKind::Ours, Some(setup)) => {
                // `exec` keeps the process id: the server is still our child.
                let mut cmd = Command::new("sh");
                cmd.args(["-c", &format!("{setup} && exec \"$0\"")])
                    .arg(our_binary());
                cmd
            }
            (ServerKind::Official, _) => {
                let mut cmd = Command::new(ensure_venv());
                cmd.args(["-m", "anki.syncserver"]);
                cmd
            }
        };
        // Nothing from the developer's shell may leak into the server's config.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("SYNC_")
                || key == "MAX_SYNC_PAYLOAD_MEGS"
                || key == "PASSWORDS_HASHED"
            {
                cmd.env_remove(&*key);
            }
        }
        for (i, (name, password)) in users.iter().enumerate() {
            cmd.env(format!("SYNC_USER{}", i + 1), format!("{name}:{password}"));
        }
        cmd.env("SYNC_HOST", "127.0.0.1")
            .env("SYNC_PORT", port.to_string())
            .env("SYNC_BASE", base.path())
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| StartError::Failed(format!("cannot spawn: {e}")))?;
        let mut server = Server {
            kind,
            child,
            port,
            base,
            log_dir,
            tls: extra_env.iter().any(|(k, _)| *k == "SYNC_TLS_CERT"),
            client_env: Vec::new(),
        };
        server.wait_healthy()?;
        Ok(server)
    }

    fn wait_healthy(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        loop {
            let healthy = match self.tls {
                // (the plain-HTTP probe cannot talk to a TLS listener)
                true => self.log().contains("listening on https://"),
                false => health_status(self.port) == Some(200),
            };
            // Checked after the probe: a 200 from a process that took our
            // port while our server failed to bind must not count.
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = format!(
                    "exited with {status} before /health answered:\n{}",
                    self.log()
                );
                let port_taken = TcpListener::bind((Ipv4Addr::LOCALHOST, self.port)).is_err();
                return Err(if port_taken {
                    StartError::PortTaken(log)
                } else {
                    StartError::Failed(log)
                });
            }
            if healthy {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(StartError::Failed(format!(
                    "no 200 from /health within {HEALTH_TIMEOUT:?}:\n{}",
                    self.log()
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// Makes the clients of this server trust the certificate authority in
    /// `ca` (a PEM file), through `SSL_CERT_FILE`.
    pub fn trust_ca(&mut self, ca: &Path) {
        let ca = ca.to_str().expect("utf-8 path").to_string();
        self.client_env.push(("SSL_CERT_FILE".into(), ca));
    }

    /// Sends SIGTERM and waits (at most 20 s) for the server to exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    /// Process id, for reading the server's memory use from `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The sync endpoint as clients are configured with it (trailing `/`).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// The server's `SYNC_BASE`.
    pub fn base_dir(&self) -> &Path {
        self.base.path()
    }

    /// Everything the server wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "--- {:?} server log (port {}) ---\n{}",
                self.kind,
                self.port,
                self.log()
            );
        }
    }
}

/// A loopback port nobody listens on, never handed out twice in this process
/// (parallel tests would otherwise race for a port the kernel just freed).
fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
        let port = listener.local_addr().expect("local addr").port();
        if given.insert(port) {
            return port;
        }
    }
}

/// The status code of `GET /health`, or `None` if nothing sensible answered.
/// Reads until the server closes the connection: the server counts it as
/// open until then, and a test that opens connections right after the start
/// (the per-address cap) must not find this probe among them.
fn health_status(port: u16) -> Option<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request =
        format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let head = std::str::from_utf8(answer.get(..12)?).ok()?;
    let code = head
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))?;
    code.parse().ok()
}

/// A failed run of `anki_client.py` (or `legacy_client.py`).
#[derive(Debug)]
pub struct ClientError {
    /// The driver's file name.
    pub driver: &'static str,
    pub args: Vec<String>,
    pub status: std::process::ExitStatus,
    pub stderr: String,
    /// The JSON object the driver prints as its last stderr line, if any:
    /// `{"error": "SyncError", "kind": "AUTH", "message": "..."}`.
    pub report: Option<Value>,
}

impl ClientError {
    /// The error class the driver reported (`SyncError`, `DBError`, ...).
    pub fn error(&self) -> Option<&str> {
        self.report.as_ref()?.get("error")?.as_str()
    }

    /// The `SyncError` kind (`AUTH`, `OTHER`), if this was a sync error.
    pub fn kind(&self) -> Option<&str> {
        self.report.as_ref()?.get("kind")?.as_str()
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} failed ({}):\n{}",
            self.driver, self.args, self.status, self.stderr
        )
    }
}

/// Runs `tests/client/anki_client.py ARGS` with the venv python and returns
/// the JSON it printed.
pub fn client(args: &[&str]) -> Result<Value, ClientError> {
    run_driver(ensure_venv(), "anki_client.py", args, &[])
}

/// Runs `tests/client/legacy_client.py ARGS` (Anki 2.1.56) with the legacy
/// venv's python and returns the JSON it printed.
pub fn legacy_client(args: &[&str]) -> Result<Value, ClientError> {
    run_driver(ensure_legacy_venv(), "legacy_client.py", args, &[])
}

/// Like `legacy_client`, but panics with the driver's stderr on failure.
pub fn legacy_client_ok(args: &[&str]) -> Value {
    legacy_client(args).unwrap_or_else(|e| panic!("{e}"))
}

fn run_driver(
    python: PathBuf,
    driver: &'static str,
    args: &[&str],
    env: &[(String, String)],
) -> Result<Value, ClientError> {
    let script = repo_root().join("tests/client").join(driver);
    let out = Command::new(python)
        .arg(&script)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        // Keep __pycache__ out of the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        let report = stderr
            .lines()
            .last()
            .and_then(|line| serde_json::from_str(line).ok());
        let args = args.iter().map(|a| a.to_string()).collect();
        return Err(ClientError {
            driver,
            args,
            status: out.status,
            stderr,
            report,
        });
    }
    let value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{driver} {args:?} printed no JSON ({e}):\n{stderr}"));
    Ok(value)
}

/// Like `client`, but panics with the driver's stderr on failure.
pub fn client_ok(args: &[&str]) -> Value {
    client(args).unwrap_or_else(|e| panic!("{e}"))
}

/// One user's login on one server, for the subcommands that talk to it.
pub struct Account<'a> {
    pub server: &'a Server,
    pub user: &'a str,
    pub password: &'a str,
}

impl Account<'_> {
    /// Runs `COMMAND --path PATH --endpoint .. --user .. --password ..`
    /// (`login` takes no path: pass `None`).
    pub fn run(&self, command: &str, path: Option<&Path>) -> Result<Value, ClientError> {
        self.run_with(ensure_venv(), "anki_client.py", command, path)
    }

    /// `run`, with the legacy client (`legacy_client.py`, Anki 2.1.56).
    pub fn run_legacy(&self, command: &str, path: Option<&Path>) -> Result<Value, ClientError> {
        self.run_with(ensure_legacy_venv(), "legacy_client.py", command, path)
    }

    /// `sync` with the legacy client.
    pub fn sync_legacy(&self, path: &Path) -> String {
        let out = self
            .run_legacy("sync", Some(path))
            .unwrap_or_else(|e| panic!("{e}"));
        out["required"].as_str().expect("required").to_string()
    }

    fn run_with(
        &self,
        python: PathBuf,
        driver: &'static str,
        command: &str,
        path: Option<&Path>,
    ) -> Result<Value, ClientError> {
        let endpoint = self.server.endpoint();
        let path = path.map(|p| p.to_str().expect("utf-8 path"));
        let mut args = vec![command];
        if let Some(path) = path {
            args.extend(["--path", path]);
        }
        args.extend([
            "--endpoint",
            &endpoint,
            "--user",
            self.user,
            "--password",
            self.password,
        ]);
        run_driver(python, driver, &args, &self.server.client_env)
    }

    /// `sync`, returning the `required` outcome (`NO_CHANGES`, `FULL_UPLOAD`, ...).
    pub fn sync(&self, path: &Path) -> String {
        let out = self
            .run("sync", Some(path))
            .unwrap_or_else(|e| panic!("{e}"));
        out["required"].as_str().expect("required").to_string()
    }
}

/// Runs our binary once with `args` (a command such as
/// `user add NAME --base DIR`), `stdin` as its input and `env` on top of an
/// environment cleared of the server's variables, like `Server::start`.
pub fn run_ours(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(our_binary());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("SYNC_") || key == "MAX_SYNC_PAYLOAD_MEGS" || key == "PASSWORDS_HASHED" {
            cmd.env_remove(&*key);
        }
    }
    let mut child = cmd
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", our_binary().display()));
    if let Some(mut input) = child.stdin.take() {
        // A command that fails early never reads it: ignore a broken pipe.
        let _ = input.write_all(stdin.as_bytes());
    }
    child.wait_with_output().expect("wait for our binary")
}
