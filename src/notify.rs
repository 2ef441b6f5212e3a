//! Tells systemd how the service is doing (the unit is `Type=notify`):
//! `READY=1` once the port is bound, so `systemctl start` returns when
//! clients can connect, and a `STATUS=` line that `systemctl status` shows:
//! "No users yet: …" with the command that adds one, then how many users
//! are served. Outside systemd (no `NOTIFY_SOCKET`) nothing is sent.
//!
//! The protocol is one datagram per message on the socket systemd names;
//! a few lines of std are all it takes, so no crate is needed.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use crate::auth::users_file::{self, UsersFile};

/// How often the status thread looks at the users file.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Sends `message` (e.g. `READY=1`) to systemd's notification socket, if
/// there is one. Returns whether it was sent.
pub fn send(message: &str) -> io::Result<bool> {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = socket.to_string_lossy().into_owned();
    send_to(&socket, message)?;
    Ok(true)
}

/// Sends one datagram to a socket path, or to an abstract socket (`@name`).
fn send_to(socket: &str, message: &str) -> io::Result<()> {
    let sender = UnixDatagram::unbound()?;
    match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sender.send_to_addr(message.as_bytes(), &addr)?;
        }
        None => {
            sender.send_to(message.as_bytes(), socket)?;
        }
    }
    Ok(())
}

/// The status line for `count` users; `url` is where the server listens.
pub fn users_status(count: usize, url: &str) -> String {
    if count == 0 {
        "No users yet: add one with `sudo anki-sync-lite user add NAME` (no restart needed)"
            .to_string()
    } else {
        format!("Serving {count} user(s) on {url}")
    }
}

/// Keeps the status line in step with the users file (the `SYNC_USERn`
/// accounts, `env_users`, never change while running). Only under systemd:
/// the thread looks at a small file every few seconds, so that
/// `systemctl status` stops saying "No users yet" soon after `user add`,
/// even before anyone connects.
pub fn keep_status(env_users: usize, base: PathBuf, url: String) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let path = users_file::path(&base);
    let spawned = thread::Builder::new().name("status".into()).spawn(move || {
        let mut last = None;
        loop {
            // A file that cannot be read now keeps the last status; the
            // server itself logs why.
            if let Ok(file) = UsersFile::load(&path) {
                let count = env_users + file.users().count();
                if last != Some(count) {
                    let status = users_status(count, &url);
                    if let Err(e) = send(&format!("STATUS={status}")) {
                        log::warn!("telling systemd the status: {e}");
                    }
                    last = Some(count);
                }
            }
            thread::sleep(STATUS_EVERY);
        }
    });
    if let Err(e) = spawned {
        log::warn!("starting the status thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        send_to(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("anki-sync-lite-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(&format!("@{name}"), "STATUS=x").unwrap();
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=x");

        assert!(send_to(dir.path().join("none").to_str().unwrap(), "x").is_err());
    }

    #[test]
    fn status_names_the_next_step_until_there_is_a_user() {
        let none = users_status(0, "http://0.0.0.0:8080/");
        assert!(
            none.contains("No users yet") && none.contains("user add NAME"),
            "{none}"
        );
        assert_eq!(
            users_status(2, "http://0.0.0.0:8080/"),
            "Serving 2 user(s) on http://0.0.0.0:8080/"
        );
    }
}
