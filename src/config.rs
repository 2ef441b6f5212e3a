//! Server settings, read from the same environment variables as the official
//! Anki sync server (so one environment file works for both), then
//! overridden by command-line flags. Every value is checked here, at start-up,
//! so that a typo is a clear error instead of a failure at the first login.

use crate::layout::user_name_problem;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

/// One configured account, as written in `SYNC_USERn` (`name:secret`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserEntry {
    /// Which variable it came from, for error messages.
    pub var: String,
    pub name: String,
    /// Plain password, or a PHC string when `PASSWORDS_HASHED` is set.
    pub secret: String,
}

/// Where the client address written to the logs comes from (`SYNC_IP_HEADER`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpSource {
    ConnectInfo,
    RightmostXForwardedFor,
    XRealIp,
    TrueClientIp,
    CfConnectingIp,
    FlyClientIp,
    CloudFrontViewerAddress,
}

impl IpSource {
    const NAMES: [(&'static str, IpSource); 7] = [
        ("ConnectInfo", IpSource::ConnectInfo),
        ("RightmostXForwardedFor", IpSource::RightmostXForwardedFor),
        ("XRealIp", IpSource::XRealIp),
        ("TrueClientIp", IpSource::TrueClientIp),
        ("CfConnectingIp", IpSource::CfConnectingIp),
        ("FlyClientIp", IpSource::FlyClientIp),
        ("CloudFrontViewerAddress", IpSource::CloudFrontViewerAddress),
    ];

    fn parse(value: &str) -> Option<IpSource> {
        Self::NAMES
            .iter()
            .find(|(name, _)| *name == value)
            .map(|(_, source)| *source)
    }

    /// The request header to read, or `None` for the TCP peer address.
    pub fn header(self) -> Option<&'static str> {
        match self {
            IpSource::ConnectInfo => None,
            IpSource::RightmostXForwardedFor => Some("X-Forwarded-For"),
            IpSource::XRealIp => Some("X-Real-IP"),
            IpSource::TrueClientIp => Some("True-Client-IP"),
            IpSource::CfConnectingIp => Some("CF-Connecting-IP"),
            IpSource::FlyClientIp => Some("Fly-Client-IP"),
            IpSource::CloudFrontViewerAddress => Some("CloudFront-Viewer-Address"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub users: Vec<UserEntry>,
    pub passwords_hashed: bool,
    pub base: PathBuf,
    pub host: IpAddr,
    pub port: u16,
    /// `MAX_SYNC_PAYLOAD_MEGS`: request bodies may decompress to three times
    /// this many MiB; a legacy (multipart) body may be this many MiB as sent.
    pub max_payload_megs: u64,
    pub ip_source: IpSource,
    /// Path prefix the server answers under (always starts and ends with `/`).
    pub base_path: String,
    /// Requests handled at once, and worker threads for those that find
    /// every place taken.
    pub workers: usize,
    /// Limits against slow and hostile clients (`SYNC_READ_TIMEOUT_SECS`,
    /// `SYNC_HEADER_TIMEOUT_SECS`, `SYNC_MAX_CONNECTIONS`,
    /// `SYNC_MAX_CONNECTIONS_PER_IP`).
    pub read_timeout_secs: u64,
    pub header_timeout_secs: u64,
    pub max_connections: usize,
    /// Open connections per client address (the TCP peer's).
    pub max_connections_per_ip: usize,
    /// Built-in HTTPS, when `SYNC_TLS_CERT` and `SYNC_TLS_KEY` are set.
    pub tls: Option<TlsConfig>,
    /// Seconds an unused collection stays open before it is closed.
    pub idle_close_secs: u64,
    /// Seconds a response may make no progress (the client stopped reading)
    /// before the connection is dropped.
    pub timeout_secs: u64,
    /// `SYNC_BACKUPS`: backups kept per user; 0 makes none.
    pub backups: usize,
    /// `SYNC_METRICS`: serve `GET /metrics` (off unless switched on).
    pub metrics: bool,
    pub log_level: log::LevelFilter,
}

/// PEM files and protocol versions for built-in HTTPS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `SYNC_TLS_VERSIONS`: TLS 1.2 and/or 1.3 (both by default; iOS needs 1.2).
    pub tls1_2: bool,
    pub tls1_3: bool,
}

/// Default worker count: enough for a household's devices (each keeps a
/// couple of connections) without paying for idle threads on a small box.
pub const DEFAULT_WORKERS: usize = 8;

/// Default connections per client address: a device syncs over one or two
/// at a time, so this leaves room for a few devices behind one NAT while one
/// address trickling request heads cannot take every connection.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 8;

#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

impl Config {
    /// Reads the settings from an environment (normally `std::env::vars()`).
    /// No user is required here: users may also come from the users file,
    /// and `auth::live::LiveUsers` says so when there are none at all.
    pub fn from_env(env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let users = read_users(env)?;
        let base = match env.get("SYNC_BASE") {
            Some(b) if !b.is_empty() => PathBuf::from(b),
            _ => default_base(env)?,
        };
        let host = match env.get("SYNC_HOST") {
            Some(h) => h
                .parse()
                .map_err(|_| err(format!("SYNC_HOST must be an IP address, not {h:?}")))?,
            None => IpAddr::from([0, 0, 0, 0]),
        };
        let port = parse_num(env, "SYNC_PORT", 8080u16)?;
        let max_payload_megs = parse_num(env, "MAX_SYNC_PAYLOAD_MEGS", 100u64)?;
        if max_payload_megs == 0 || max_payload_megs > 1 << 20 {
            return Err(err("MAX_SYNC_PAYLOAD_MEGS must be between 1 and 1048576"));
        }
        let ip_source = match env.get("SYNC_IP_HEADER") {
            None => IpSource::ConnectInfo,
            Some(v) => IpSource::parse(v).ok_or_else(|| {
                let names: Vec<_> = IpSource::NAMES.iter().map(|(n, _)| *n).collect();
                err(format!(
                    "SYNC_IP_HEADER {v:?} is not one of: {}",
                    names.join(", ")
                ))
            })?,
        };
        let base_path =
            normalize_base_path(env.get("SYNC_BASE_PATH").map(String::as_str).unwrap_or("/"));
        let workers = parse_num(env, "SYNC_WORKERS", DEFAULT_WORKERS)?;
        if workers == 0 || workers > 256 {
            return Err(err("SYNC_WORKERS must be between 1 and 256"));
        }
        let read_timeout_secs = parse_num(env, "SYNC_READ_TIMEOUT_SECS", 120u64)?;
        let header_timeout_secs = parse_num(env, "SYNC_HEADER_TIMEOUT_SECS", 30u64)?;
        if read_timeout_secs == 0 || header_timeout_secs == 0 {
            return Err(err(
                "SYNC_READ_TIMEOUT_SECS and SYNC_HEADER_TIMEOUT_SECS must be at least 1",
            ));
        }
        let max_connections = parse_num(env, "SYNC_MAX_CONNECTIONS", 64usize)?;
        if max_connections == 0 || max_connections > 10_000 {
            return Err(err("SYNC_MAX_CONNECTIONS must be between 1 and 10000"));
        }
        // Behind a reverse proxy (SYNC_IP_HEADER) every connection comes from
        // the proxy: a cap per TCP peer would be one cap on every client, so
        // there it applies only if set.
        let per_ip_default = match ip_source {
            IpSource::ConnectInfo => DEFAULT_MAX_CONNECTIONS_PER_IP,
            _ => max_connections,
        };
        let max_connections_per_ip = parse_num(env, "SYNC_MAX_CONNECTIONS_PER_IP", per_ip_default)?;
        if max_connections_per_ip == 0 || max_connections_per_ip > 10_000 {
            return Err(err(
                "SYNC_MAX_CONNECTIONS_PER_IP must be between 1 and 10000",
            ));
        }
        let tls = read_tls(env)?;
        let idle_close_secs = parse_num(env, "SYNC_IDLE_CLOSE_SECS", 300u64)?;
        let timeout_secs = parse_num(env, "SYNC_TIMEOUT_SECS", 120u64)?;
        if timeout_secs == 0 {
            return Err(err("SYNC_TIMEOUT_SECS must be at least 1"));
        }
        let backups = parse_num(env, "SYNC_BACKUPS", crate::backup::DEFAULT_KEEP)?;
        if backups > 1000 {
            return Err(err("SYNC_BACKUPS must be between 0 and 1000"));
        }
        let metrics = parse_switch(env, "SYNC_METRICS")?;
        let log_level = match env.get("RUST_LOG") {
            Some(v) => parse_level(v)?,
            None => log::LevelFilter::Info,
        };
        Ok(Config {
            users,
            passwords_hashed: env.contains_key("PASSWORDS_HASHED"),
            base,
            host,
            port,
            max_payload_megs,
            ip_source,
            base_path,
            workers,
            read_timeout_secs,
            header_timeout_secs,
            max_connections,
            max_connections_per_ip,
            tls,
            idle_close_secs,
            timeout_secs,
            backups,
            metrics,
            log_level,
        })
    }

    /// Largest accepted legacy (multipart) request body, in bytes, as sent.
    pub fn max_body_bytes(&self) -> u64 {
        self.max_payload_megs * 1024 * 1024
    }

    /// Largest accepted decompressed payload, in bytes (3× the setting, as
    /// the official server); v11 bodies have no other limit.
    pub fn max_payload_bytes(&self) -> u64 {
        self.max_body_bytes() * 3
    }
}

fn read_users(env: &HashMap<String, String>) -> Result<Vec<UserEntry>, ConfigError> {
    let mut users: Vec<UserEntry> = Vec::new();
    for n in 1.. {
        let Some((var, value)) = user_value(env, n)? else {
            break;
        };
        let Some((name, secret)) = value.split_once(':') else {
            return Err(err(format!(
                "{var} should be in 'username:password' format."
            )));
        };
        if let Some(problem) = user_name_problem(name) {
            return Err(err(format!(
                "{var}: the user name {name:?} cannot be used: {problem}"
            )));
        }
        if users.iter().any(|u| u.name == name) {
            return Err(err(format!("{var}: user {name:?} is defined twice")));
        }
        users.push(UserEntry {
            var,
            name: name.to_string(),
            secret: secret.to_string(),
        });
    }
    Ok(users)
}

/// The value of `SYNC_USERn`, or the content of the file `SYNC_USERn_FILE`
/// names (Docker-style secrets; one trailing newline is dropped), with the
/// name of the variable it came from. `None` when neither is set.
fn user_value(
    env: &HashMap<String, String>,
    n: usize,
) -> Result<Option<(String, String)>, ConfigError> {
    let var = format!("SYNC_USER{n}");
    let file_var = format!("{var}_FILE");
    match (env.get(&var), env.get(&file_var)) {
        (Some(_), Some(_)) => Err(err(format!("set {var} or {file_var}, not both"))),
        (Some(value), None) => Ok(Some((var, value.clone()))),
        (None, Some(path)) => {
            let mut value = std::fs::read_to_string(path)
                .map_err(|e| err(format!("{file_var}: cannot read {path:?}: {e}")))?;
            if value.ends_with('\n') {
                value.pop();
                if value.ends_with('\r') {
                    value.pop();
                }
            }
            Ok(Some((file_var, value)))
        }
        (None, None) => Ok(None),
    }
}

/// `SYNC_TLS_CERT` and `SYNC_TLS_KEY` (both or neither), `SYNC_TLS_VERSIONS`.
fn read_tls(env: &HashMap<String, String>) -> Result<Option<TlsConfig>, ConfigError> {
    let get = |var: &str| env.get(var).filter(|v| !v.is_empty());
    let (cert, key) = match (get("SYNC_TLS_CERT"), get("SYNC_TLS_KEY")) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (PathBuf::from(cert), PathBuf::from(key)),
        (Some(_), None) => return Err(err("SYNC_TLS_CERT is set but SYNC_TLS_KEY is not")),
        (None, Some(_)) => return Err(err("SYNC_TLS_KEY is set but SYNC_TLS_CERT is not")),
    };
    let (mut tls1_2, mut tls1_3) = (false, false);
    let versions = get("SYNC_TLS_VERSIONS").map_or("1.2,1.3", String::as_str);
    for version in versions.split(',').map(str::trim) {
        match version {
            "1.2" => tls1_2 = true,
            "1.3" => tls1_3 = true,
            _ => {
                return Err(err(format!(
                    "SYNC_TLS_VERSIONS must list 1.2 and/or 1.3 (e.g. \"1.2,1.3\"), not {versions:?}"
                )));
            }
        }
    }
    if !cfg!(feature = "tls") {
        return Err(err(
            "SYNC_TLS_CERT is set, but this build has no TLS support (cargo feature \"tls\"): \
             build with `cargo build --release --features tls`, or use a reverse proxy",
        ));
    }
    Ok(Some(TlsConfig {
        cert,
        key,
        tls1_2,
        tls1_3,
    }))
}

fn default_base(env: &HashMap<String, String>) -> Result<PathBuf, ConfigError> {
    match env.get("HOME") {
        Some(home) if !home.is_empty() => Ok(PathBuf::from(home).join(".syncserver")),
        _ => Err(err(
            "SYNC_BASE is not set and there is no home folder to default to",
        )),
    }
}

fn parse_num<T: std::str::FromStr>(
    env: &HashMap<String, String>,
    var: &str,
    default: T,
) -> Result<T, ConfigError> {
    match env.get(var) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| err(format!("{var} must be a whole number, not {v:?}"))),
    }
}

/// An on/off setting: unset or empty is off; anything but the usual
/// spellings is an error rather than a guess.
fn parse_switch(env: &HashMap<String, String>, var: &str) -> Result<bool, ConfigError> {
    let value = env.get(var).map(|v| v.trim().to_ascii_lowercase());
    match value.as_deref() {
        None | Some("" | "0" | "false" | "no" | "off") => Ok(false),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some(_) => Err(err(format!(
            "{var} must be 1, true, yes or on (or 0, false, no, off), not {:?}",
            env[var]
        ))),
    }
}

pub fn parse_level(v: &str) -> Result<log::LevelFilter, ConfigError> {
    // Accept plain levels and the official launcher's `anki=info` style.
    let level = v.rsplit('=').next().unwrap_or(v).trim();
    level.parse().map_err(|_| {
        err(format!(
            "log level {v:?} is not one of off, error, warn, info, debug, trace"
        ))
    })
}

/// `anki`, `/anki`, `/anki/` and `//anki//` all become `/anki/`; empty is `/`.
pub fn normalize_base_path(raw: &str) -> String {
    let parts: Vec<&str> = raw.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        "/".to_string()
    } else {
        format!("/{}/", parts.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn users_stop_at_first_gap_and_split_at_first_colon() {
        let c = Config::from_env(&env(&[
            ("SYNC_USER1", "a:p:w"),
            ("SYNC_USER2", "b:x"),
            ("SYNC_USER4", "d:y"),
            ("HOME", "/h"),
        ]))
        .unwrap();
        let names: Vec<_> = c
            .users
            .iter()
            .map(|u| (u.name.as_str(), u.secret.as_str()))
            .collect();
        assert_eq!(names, [("a", "p:w"), ("b", "x")]);
        assert_eq!(c.base, PathBuf::from("/h/.syncserver"));
        assert_eq!(c.port, 8080);
        assert_eq!(c.max_payload_bytes(), 300 * 1024 * 1024);
    }

    #[test]
    fn missing_or_malformed_users_are_errors() {
        // A gap before the first user: no users from the environment (the
        // users file may still have some; `LiveUsers` checks).
        let c = Config::from_env(&env(&[("SYNC_USER2", "b:x"), ("HOME", "/h")])).unwrap();
        assert!(c.users.is_empty());
        let e = Config::from_env(&env(&[("SYNC_USER1", "nocolon"), ("HOME", "/h")])).unwrap_err();
        assert!(e.0.contains("SYNC_USER1 should be"), "{e}");
        let e = Config::from_env(&env(&[("SYNC_USER1", "../x:p"), ("HOME", "/h")])).unwrap_err();
        assert!(e.0.contains("folder"), "{e}");
    }

    /// Issue 14, item 9: one rule for every user name, and a start-up
    /// error that names the variable.
    #[test]
    fn sync_user_names_follow_the_user_add_rule() {
        for name in [
            ".spill",
            ".",
            "..",
            "..x",
            "users.txt",
            "Users.TXT",
            "users.txt.lock",
            "a\nb",
            "a\rb",
            "tab\there",
            "#alice",
            " alice",
            "alice ",
            "a/b",
            "a\\b",
            "a\0b",
        ] {
            assert!(user_name_problem(name).is_some(), "{name:?} accepted");
            let value = format!("{name}:secret");
            let e = Config::from_env(&env(&[
                ("SYNC_USER1", "ok:x"),
                ("SYNC_USER2", &value),
                ("HOME", "/h"),
            ]))
            .unwrap_err();
            assert!(e.0.starts_with("SYNC_USER2: the user name"), "{e}");
        }
        let long = "x".repeat(256);
        assert!(user_name_problem(&long).is_some());
        for name in ["alice", "Bob Smith", "émile", "a.b", "x#", &"x".repeat(255)] {
            assert_eq!(user_name_problem(name), None, "{name:?} refused");
        }
    }

    #[test]
    fn a_user_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("alice");
        std::fs::write(&secret, "alice:p:w\n").unwrap();
        let path = secret.to_str().unwrap();
        let c = Config::from_env(&env(&[
            ("SYNC_USER1", "a:x"),
            ("SYNC_USER2_FILE", path),
            ("HOME", "/h"),
        ]))
        .unwrap();
        assert_eq!(c.users[1].var, "SYNC_USER2_FILE");
        assert_eq!(
            (c.users[1].name.as_str(), c.users[1].secret.as_str()),
            ("alice", "p:w")
        );
        let both = env(&[
            ("SYNC_USER1", "a:x"),
            ("SYNC_USER1_FILE", path),
            ("HOME", "/h"),
        ]);
        let e = Config::from_env(&both).unwrap_err();
        assert!(e.0.contains("not both"), "{e}");
        let missing = env(&[("SYNC_USER1_FILE", "/nonexistent/x"), ("HOME", "/h")]);
        let e = Config::from_env(&missing).unwrap_err();
        assert!(e.0.starts_with("SYNC_USER1_FILE: cannot read"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let base = [("SYNC_USER1", "a:b"), ("HOME", "/h")];
        for (var, val, needle) in [
            ("SYNC_HOST", "localhost", "SYNC_HOST"),
            ("SYNC_PORT", "99999", "SYNC_PORT"),
            ("MAX_SYNC_PAYLOAD_MEGS", "x", "MAX_SYNC_PAYLOAD_MEGS"),
            ("SYNC_IP_HEADER", "xrealip", "XRealIp"),
        ] {
            let mut e = env(&base);
            e.insert(var.into(), val.into());
            let msg = Config::from_env(&e).unwrap_err().0;
            assert!(msg.contains(needle), "{msg}");
        }
    }

    #[test]
    fn the_per_address_cap_is_off_behind_a_proxy_unless_set() {
        let with = |pairs: &[(&str, &str)]| {
            let mut e = env(&[("SYNC_USER1", "a:b"), ("HOME", "/h")]);
            e.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            Config::from_env(&e)
        };
        assert_eq!(with(&[]).unwrap().max_connections_per_ip, 8);
        let proxied = with(&[
            ("SYNC_IP_HEADER", "XRealIp"),
            ("SYNC_MAX_CONNECTIONS", "40"),
        ]);
        assert_eq!(proxied.unwrap().max_connections_per_ip, 40);
        let set = with(&[
            ("SYNC_IP_HEADER", "XRealIp"),
            ("SYNC_MAX_CONNECTIONS_PER_IP", "3"),
        ]);
        assert_eq!(set.unwrap().max_connections_per_ip, 3);
        let e = with(&[("SYNC_MAX_CONNECTIONS_PER_IP", "0")]).unwrap_err();
        assert!(e.0.contains("SYNC_MAX_CONNECTIONS_PER_IP"), "{e}");
    }

    #[test]
    fn metrics_are_off_unless_switched_on() {
        let base = [("SYNC_USER1", "a:b"), ("HOME", "/h")];
        let with = |value: Option<&str>| {
            let mut e = env(&base);
            if let Some(value) = value {
                e.insert("SYNC_METRICS".into(), value.into());
            }
            Config::from_env(&e).map(|c| c.metrics)
        };
        assert_eq!(with(None), Ok(false));
        for off in ["", "0", "false", "No", "off"] {
            assert_eq!(with(Some(off)), Ok(false), "{off:?}");
        }
        for on in ["1", "true", "YES", " on "] {
            assert_eq!(with(Some(on)), Ok(true), "{on:?}");
        }
        let e = with(Some("enabled")).unwrap_err();
        assert!(e.0.starts_with("SYNC_METRICS must be"), "{e}");
    }

    #[test]
    fn tls_needs_both_files_and_known_versions() {
        let base = [("SYNC_USER1", "a:b"), ("HOME", "/h")];
        let with = |pairs: &[(&str, &str)]| {
            let mut e = env(&base);
            e.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            Config::from_env(&e)
        };
        assert_eq!(with(&[]).unwrap().tls, None);
        let e = with(&[("SYNC_TLS_CERT", "c.pem")]).unwrap_err();
        assert!(e.0.contains("SYNC_TLS_KEY"), "{e}");
        let e = with(&[("SYNC_TLS_KEY", "k.pem")]).unwrap_err();
        assert!(e.0.contains("SYNC_TLS_CERT"), "{e}");
        let both = [("SYNC_TLS_CERT", "c.pem"), ("SYNC_TLS_KEY", "k.pem")];
        if cfg!(feature = "tls") {
            let tls = with(&both).unwrap().tls.unwrap();
            assert!(tls.tls1_2 && tls.tls1_3);
            let only12 = with(&[both[0], both[1], ("SYNC_TLS_VERSIONS", "1.2")]);
            let tls = only12.unwrap().tls.unwrap();
            assert!(tls.tls1_2 && !tls.tls1_3);
            let e = with(&[both[0], both[1], ("SYNC_TLS_VERSIONS", "1.1")]).unwrap_err();
            assert!(e.0.contains("SYNC_TLS_VERSIONS"), "{e}");
        } else {
            assert!(with(&both).unwrap_err().0.contains("feature"));
        }
    }

    #[test]
    fn base_path_is_normalized() {
        assert_eq!(normalize_base_path(""), "/");
        assert_eq!(normalize_base_path("/"), "/");
        assert_eq!(normalize_base_path("anki"), "/anki/");
        assert_eq!(normalize_base_path("//a//b/"), "/a/b/");
    }

    #[test]
    fn log_level_accepts_official_style() {
        assert_eq!(parse_level("anki=debug").unwrap(), log::LevelFilter::Debug);
        assert_eq!(parse_level("warn").unwrap(), log::LevelFilter::Warn);
        assert!(parse_level("loud").is_err());
    }
}
