//! Media sync with the real Anki client (issue 4): two devices exchange
//! files through the server, byte for byte, including names the client
//! normalises and names with spaces and non-Latin letters; deletions travel
//! both ways; 500 files (~50 MB) go up and come down intact.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use crate::support::data::{noise, sha1_hex};
use crate::support::http::{Conn, HKEY, sync_header, zstd};
use crate::support::{Server, client_ok};
use serde_json::{Value, json};

const USER: &str = "user";
const PASSWORD: &str = "pass";

/// One device: a collection (and its media folder) in a temp dir.
struct Device {
    dir: tempfile::TempDir,
}

impl Device {
    fn new() -> Device {
        Device {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn col(&self) -> String {
        self.dir
            .path()
            .join("col.anki2")
            .to_str()
            .unwrap()
            .to_string()
    }

    /// Adds files through the library; returns {given name: stored name}.
    fn add(&self, files: &[(String, Vec<u8>)]) -> BTreeMap<String, String> {
        let src = self.dir.path().join(format!("src-{}", files.len()));
        let _ = fs::remove_dir_all(&src);
        fs::create_dir(&src).unwrap();
        for (name, data) in files {
            fs::write(src.join(name), data).unwrap();
        }
        let out = client_ok(&[
            "media-add",
            "--path",
            &self.col(),
            "--src",
            src.to_str().unwrap(),
        ]);
        fs::remove_dir_all(&src).unwrap();
        serde_json::from_value(out).unwrap()
    }

    fn remove(&self, names: &[&str]) {
        let col = self.col();
        let mut args = vec!["media-remove", "--path", col.as_str()];
        for name in names {
            args.extend(["--name", name]);
        }
        client_ok(&args);
    }

    /// A media sync run: stand-alone (`begin`), or after a collection sync
    /// (the server's media USN then comes from `/sync/meta`).
    fn sync(&self, server: &Server, with_collection: bool) -> Value {
        let col = self.col();
        let endpoint = server.endpoint();
        let mut args = vec![
            "media-sync",
            "--path",
            col.as_str(),
            "--endpoint",
            endpoint.as_str(),
            "--user",
            USER,
            "--password",
            PASSWORD,
        ];
        if with_collection {
            args.push("--with-collection");
        }
        client_ok(&args)
    }

    /// {name: sha1} of the device's media folder.
    fn listing(&self) -> BTreeMap<String, String> {
        serde_json::from_value(client_ok(&["media-list", "--path", &self.col()])).unwrap()
    }
}

fn expected(files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    files
        .iter()
        .map(|(n, d)| (n.clone(), sha1_hex(d)))
        .collect()
}

fn server_media(server: &Server) -> PathBuf {
    server.base_dir().join(USER).join("media")
}

/// The server's media folder holds exactly these bytes.
fn assert_server_holds(server: &Server, files: &BTreeMap<String, Vec<u8>>) {
    let mut on_disk = BTreeMap::new();
    for entry in fs::read_dir(server_media(server)).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        on_disk.insert(name, fs::read(entry.path()).unwrap());
    }
    assert_eq!(on_disk.len(), files.len());
    for (name, data) in files {
        assert!(
            on_disk.get(name) == Some(data),
            "server copy of {name:?} differs or is missing"
        );
    }
}

/// `mediaSanity` as the client sends it, answered for `local` files.
fn sanity(server: &Server, local: usize) -> Value {
    let header = sync_header(HKEY);
    let r = Conn::open(server).send(
        "POST",
        "/msync/mediaSanity",
        &[("anki-sync", &header)],
        &zstd(json!({ "local": local }).to_string().as_bytes()),
    );
    serde_json::from_slice::<Value>(&r.payload()).unwrap()["data"].clone()
}

fn peak_rss_kib(server: &Server) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{}/status", server.pid())).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn two_devices_exchange_media_byte_for_byte() {
    let server = Server::start(&[(USER, PASSWORD)], &[]);
    let a = Device::new();
    let b = Device::new();

    // 20 files: 18 binary ones of a few hundred KB, one whose name NFC
    // normalisation changes, one with spaces and non-Latin letters.
    let mut given: Vec<(String, Vec<u8>)> = (0..18)
        .map(|i| {
            (
                format!("clip{i:02}.bin"),
                noise(i, 200_000 + 23_456 * i as usize),
            )
        })
        .collect();
    let nfd = "cafe\u{301} menu.jpg";
    given.push((nfd.to_string(), noise(100, 300_000)));
    given.push(("résumé 日本語 файл.png".to_string(), noise(101, 150_000)));
    let stored = a.add(&given);
    assert_eq!(
        stored[nfd], "café menu.jpg",
        "the client stores the NFC name"
    );
    let mut files: BTreeMap<String, Vec<u8>> = given
        .iter()
        .map(|(n, d)| (stored[n].clone(), d.clone()))
        .collect();
    assert_eq!(files.len(), 20);

    a.sync(&server, false);
    assert_server_holds(&server, &files);
    let out = b.sync(&server, true);
    assert_eq!(
        out["server_media_usn"], 20,
        "/sync/meta reports the media USN"
    );
    assert_eq!(b.listing(), expected(&files));
    assert_eq!(a.listing(), expected(&files));

    // A deletes two; B loses them.
    a.remove(&["clip03.bin", "café menu.jpg"]);
    files.remove("clip03.bin");
    files.remove("café menu.jpg");
    a.sync(&server, false);
    b.sync(&server, false);
    assert_eq!(b.listing(), expected(&files));
    assert_server_holds(&server, &files);

    // B adds three; A receives them.
    let more: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("from b {i}.ogg"), noise(200 + i, 120_000)))
        .collect();
    b.add(&more);
    files.extend(more);
    b.sync(&server, false);
    let out = a.sync(&server, true);
    assert_eq!(out["server_media_usn"], 25);
    assert_eq!(a.listing(), expected(&files));
    assert_eq!(b.listing(), expected(&files));
    assert_server_holds(&server, &files);
    assert_eq!(sanity(&server, files.len()), "OK");
    assert_eq!(sanity(&server, files.len() + 1), "mediaSanity");

    // Nothing left to do: a further run changes nothing.
    a.sync(&server, false);
    assert_eq!(a.listing(), expected(&files));
}

#[test]
fn five_hundred_files_go_up_and_come_down_intact() {
    let server = Server::start(&[(USER, PASSWORD)], &[]);
    let a = Device::new();
    let b = Device::new();
    let given: Vec<(String, Vec<u8>)> = (0..500u64)
        .map(|i| {
            let len = 60_000 + (i as usize * 7919) % 80_000;
            (format!("file {i:03}.dat"), noise(1000 + i, len))
        })
        .collect();
    let total: usize = given.iter().map(|(_, d)| d.len()).sum();
    assert!((45_000_000..55_000_000).contains(&total), "{total}");
    a.add(&given);
    let files: BTreeMap<String, Vec<u8>> = given.into_iter().collect();

    let started = Instant::now();
    a.sync(&server, false);
    let up = started.elapsed();
    assert_server_holds(&server, &files);
    let started = Instant::now();
    b.sync(&server, false);
    let down = started.elapsed();
    assert_eq!(b.listing(), expected(&files));
    assert_eq!(sanity(&server, 500), "OK");
    eprintln!(
        "{:?} server: 500 files, {total} bytes: up {up:?}, down {down:?}, peak RSS {:?} KiB",
        server.kind(),
        peak_rss_kib(&server)
    );
}

/// Issue 13, conformance 1: as on the official server, only what a media
/// upload decompresses to is limited (3 × `MAX_SYNC_PAYLOAD_MEGS`), not its
/// size on the wire. A file that does not compress, between 1 and 3 times
/// the setting, goes up and comes down (we used to answer 400 to every
/// media sync that carried it).
#[test]
fn media_that_compresses_badly_is_taken_up_to_three_times_the_limit() {
    let server = Server::start(&[(USER, PASSWORD)], &[("MAX_SYNC_PAYLOAD_MEGS", "1")]);
    let a = Device::new();
    let b = Device::new();
    let given = vec![
        ("video.mp4".to_string(), noise(7, 2_200_000)),
        ("small.txt".to_string(), b"a small file beside it".to_vec()),
    ];
    a.add(&given);
    let files: BTreeMap<String, Vec<u8>> = given.into_iter().collect();
    a.sync(&server, false);
    assert_server_holds(&server, &files);
    b.sync(&server, true);
    assert_eq!(b.listing(), expected(&files));
}
