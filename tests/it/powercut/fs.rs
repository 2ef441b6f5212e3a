//! The power-cut simulator (`tests/powercut/powercutfs.py`) as the trials
//! drive it: mount it over a backing folder, arm or pull the switch through
//! its control socket, then cut (the backing folder is left holding only
//! what was durable) and mount again.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::ensure_powercut_venv;

const SIMULATOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/powercut/powercutfs.py");
const START_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(120);

/// One connection to the control socket: a command a line, an answer a line.
pub struct Control {
    reader: BufReader<UnixStream>,
}

impl Control {
    pub fn connect(path: &Path) -> io::Result<Control> {
        let stream = UnixStream::connect(path)?;
        Ok(Control {
            reader: BufReader::new(stream),
        })
    }

    pub fn send(&mut self, command: &str) -> io::Result<String> {
        self.reader
            .get_mut()
            .write_all(format!("{command}\n").as_bytes())?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "simulator gone",
            ));
        }
        Ok(answer.trim().to_string())
    }

    fn expect_ok(&mut self, command: &str) {
        let answer = self
            .send(command)
            .unwrap_or_else(|e| panic!("simulator `{command}`: {e}"));
        assert_eq!(answer, "ok", "simulator `{command}`");
    }
}

/// A mounted simulator. Dropping it without `cut` unmounts it cleanly.
pub struct PowerFs {
    child: Option<Child>,
    mount: PathBuf,
    control_path: PathBuf,
    control: Control,
}

impl PowerFs {
    /// Mounts `backing` at `mount` (an empty folder), with its control
    /// socket at `control`.
    pub fn mount(backing: &Path, mount: &Path, control: &Path) -> PowerFs {
        let _ = std::fs::remove_file(control);
        let log = std::fs::File::create(control.with_extension("log")).expect("simulator log");
        let mut child = Command::new(ensure_powercut_venv())
            .arg(SIMULATOR)
            .arg(backing)
            .arg(mount)
            .arg("--control")
            .arg(control)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start the power-cut simulator");
        let deadline = Instant::now() + START_TIMEOUT;
        let control_conn = loop {
            if let Ok(conn) = Control::connect(control) {
                break conn;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the simulator exited ({status}):\n{}",
                    std::fs::read_to_string(control.with_extension("log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "the simulator did not start");
            thread::sleep(Duration::from_millis(20));
        };
        PowerFs {
            child: Some(child),
            mount: mount.to_path_buf(),
            control_path: control.to_path_buf(),
            control: control_conn,
        }
    }

    pub fn control_path(&self) -> &Path {
        &self.control_path
    }

    /// Mutating calls the mount has seen so far.
    pub fn ops(&mut self) -> u64 {
        let answer = self.control.send("ops").expect("simulator ops");
        answer.parse().expect("a count")
    }

    /// The power goes off right before the `k`-th mutating call from now.
    pub fn arm(&mut self, k: u64) {
        self.control.expect_ok(&format!("arm {k}"));
    }

    pub fn disarm(&mut self) {
        self.control.expect_ok("disarm");
    }

    /// Everything becomes durable (the kernel's write-back after a pause).
    pub fn writeback(&mut self) {
        self.control.expect_ok("writeback");
    }

    /// The power goes off now.
    pub fn freeze(&mut self) {
        self.control.expect_ok("freeze");
    }

    pub fn frozen(&mut self) -> bool {
        self.control.send("status").expect("simulator status") == "frozen"
    }

    /// Unmounts and leaves the backing folder with what was durable. Every
    /// process that used the mount must be gone (killed, then `release`d).
    pub fn cut(mut self) {
        self.finish("cut");
    }

    fn finish(&mut self, how: &str) {
        self.control.expect_ok(how);
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the simulator") {
                assert!(
                    status.success(),
                    "the simulator failed at `{how}` ({status}):\n{}",
                    std::fs::read_to_string(self.control_path.with_extension("log"))
                        .unwrap_or_default()
                );
                return;
            }
            assert!(Instant::now() < deadline, "the simulator did not exit");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // A clean shutdown: calls still waiting fail, the mount goes, the
        // backing folder keeps everything.
        let stopped = self.control.send("release").is_ok() && self.control.send("stop").is_ok();
        let deadline = Instant::now() + Duration::from_secs(30);
        while stopped && Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}
