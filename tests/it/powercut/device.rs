//! The real client for the power-cut trials: one long-lived
//! `anki_client.py batch` process (the library's start-up costs a second or
//! more, paid once), and one device (a local collection and media folder)
//! per user.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::support::ensure_venv;

const DRIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/client/anki_client.py");
/// Longest a single client command may take (a stuck one fails the run).
const CALL_TIMEOUT: Duration = Duration::from_secs(300);
const MARK: &str = "@@ ";

pub struct Driver {
    child: Child,
    stdin: ChildStdin,
    answers: Receiver<String>,
}

impl Driver {
    /// Starts the batch driver; its stderr (the library's log) goes to `log`.
    pub fn start(log: &Path) -> Driver {
        let log = std::fs::File::create(log).expect("driver log");
        let mut child = Command::new(ensure_venv())
            .arg(DRIVER)
            .arg("batch")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start anki_client.py batch");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, answers) = channel();
        thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Some(answer) = line.strip_prefix(MARK) {
                    if tx.send(answer.to_string()).is_err() {
                        return;
                    }
                }
            }
        });
        Driver {
            child,
            stdin,
            answers,
        }
    }

    /// Runs one driver command; `Err` holds the error object it reported.
    pub fn call(&mut self, args: &[&str]) -> Result<Value, Value> {
        let line = serde_json::to_string(args).expect("json");
        writeln!(self.stdin, "{line}").expect("write to the driver");
        self.stdin.flush().expect("flush the driver");
        let answer = match self.answers.recv_timeout(CALL_TIMEOUT) {
            Ok(answer) => answer,
            Err(RecvTimeoutError::Timeout) => panic!("client {args:?} took over {CALL_TIMEOUT:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("the client driver died at {args:?}"),
        };
        let mut answer: Value = serde_json::from_str(&answer).expect("driver answer");
        match answer.get_mut("ok") {
            Some(ok) => Ok(ok.take()),
            None => Err(answer["error"].take()),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A user's one device: a collection on local disk (never on the simulator)
/// and what the server should hold of it.
pub struct Device {
    pub user: String,
    pub password: String,
    pub path: PathBuf,
    /// Media files added or trashed since the last acknowledged upload
    /// (what was acknowledged is read from the device's media database).
    pub media_changes: usize,
    /// An acknowledged restore replaced the server's collection: the next
    /// full sync must be a download.
    pub must_download: bool,
}

impl Device {
    pub fn new(user: &str, password: &str, dir: &Path, generation: u32) -> Device {
        Device {
            user: user.to_string(),
            password: password.to_string(),
            path: dir.join(format!("{user}-{generation}.anki2")),
            media_changes: 0,
            must_download: false,
        }
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }

    /// `COMMAND --path P --endpoint E --user U --password PW`.
    pub fn sync_call(
        &self,
        driver: &mut Driver,
        command: &str,
        endpoint: &str,
    ) -> Result<Value, Value> {
        driver.call(&[
            command,
            "--path",
            self.path_str(),
            "--endpoint",
            endpoint,
            "--user",
            &self.user,
            "--password",
            &self.password,
        ])
    }
}
