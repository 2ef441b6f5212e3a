//! Just enough PKZIP for media sync, streaming in both directions.
//!
//! Reading: upload zips are spooled to disk first, so the reader works from
//! the central directory (the one reliable source of sizes and CRCs, also for
//! entries written with data descriptors) and hands out one bounded entry
//! stream at a time. Each stream fails unless it yields exactly the declared
//! size with the declared CRC, so a lying header or a deflate bomb is caught
//! after at most one byte too many. Stored and Deflate are supported, as the
//! official client and server; no zip64, no encryption.
//!
//! Writing: Stored entries, never held in memory. Collection packages
//! (`crate::colpkg`) are written to a file by [`ZipWriter`], which patches
//! each entry's CRC and sizes into its local header after the data. Media
//! downloads are made while they are sent by [`ZipStream`], which reads each
//! file twice (first for the CRC) instead of writing the zip anywhere; both
//! produce the same bytes. An archive past 4 GiB or 65 535 entries (a
//! package with a big media folder) gets zip64 offsets and end records; a
//! single entry must stay under 4 GiB (media files are at most 100 MiB).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};

use flate2::Crc;
use flate2::read::DeflateDecoder;

const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const END_SIG: u32 = 0x0605_4b50;
const LOCAL_LEN: u64 = 30;
const CENTRAL_LEN: usize = 46;
const END_LEN: usize = 22;
const STORED: u16 = 0;
const DEFLATE: u16 = 8;
/// Bigger central directories are refused: a media zip holds at most 26
/// entries, so this leaves ample room while bounding memory.
const MAX_CENTRAL_BYTES: u64 = 1024 * 1024;
/// A fixed DOS date (1980-01-01): clients ignore entry times.
const DOS_DATE: u16 = 0x0021;

/// Why a zip could not be read.
#[derive(Debug)]
pub enum ZipError {
    /// Not a zip we accept (truncated, corrupt, zip64, encrypted, ...): 400.
    Malformed(String),
    /// Reading our own spool file failed: 500.
    Io(io::Error),
}

impl fmt::Display for ZipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZipError::Malformed(m) => write!(f, "malformed zip: {m}"),
            ZipError::Io(e) => write!(f, "reading zip: {e}"),
        }
    }
}

impl ZipError {
    /// Sorts an error met while streaming an entry: data errors mean a bad
    /// zip, anything else is our disk.
    pub fn from_entry_read(err: io::Error) -> ZipError {
        match err.kind() {
            io::ErrorKind::InvalidData
            | io::ErrorKind::InvalidInput
            | io::ErrorKind::UnexpectedEof => ZipError::Malformed(err.to_string()),
            _ => ZipError::Io(err),
        }
    }
}

fn malformed(what: &str) -> ZipError {
    ZipError::Malformed(what.to_string())
}

/// One entry as the central directory describes it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    method: u16,
    crc: u32,
    compressed: u64,
    /// Declared uncompressed size.
    pub size: u64,
    header_offset: u64,
}

/// A zip read from a seekable source (the spooled upload).
pub struct ZipReader<R> {
    inner: R,
    entries: HashMap<String, Entry>,
    central_offset: u64,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl<R: Read + Seek> ZipReader<R> {
    /// Reads the central directory. Entry names must be unique.
    pub fn open(mut inner: R) -> Result<Self, ZipError> {
        let len = inner.seek(SeekFrom::End(0)).map_err(ZipError::Io)?;
        if len < END_LEN as u64 {
            return Err(malformed("too short for a zip"));
        }
        // The end record is followed only by its comment (at most 64 KiB).
        let tail_len = len.min(END_LEN as u64 + 0xFFFF);
        let mut tail = vec![0u8; tail_len as usize];
        inner
            .seek(SeekFrom::Start(len - tail_len))
            .map_err(ZipError::Io)?;
        inner.read_exact(&mut tail).map_err(ZipError::Io)?;
        let end = (0..=tail.len() - END_LEN)
            .rev()
            .find(|&i| {
                u32_at(&tail, i) == END_SIG
                    && i + END_LEN + usize::from(u16_at(&tail, i + 20)) == tail.len()
            })
            .ok_or_else(|| malformed("no end of central directory record"))?;
        let record = &tail[end..end + END_LEN];
        let (disk, central_disk) = (u16_at(record, 4), u16_at(record, 6));
        let (on_disk, total) = (u16_at(record, 8), u16_at(record, 10));
        let central_len = u64::from(u32_at(record, 12));
        let central_offset = u64::from(u32_at(record, 16));
        if total == 0xFFFF || central_len == 0xFFFF_FFFF || central_offset == 0xFFFF_FFFF {
            return Err(malformed("zip64 is not supported"));
        }
        if disk != 0 || central_disk != 0 || on_disk != total {
            return Err(malformed("multi-disk zip"));
        }
        let end_offset = len - tail_len + end as u64;
        if central_offset + central_len > end_offset {
            return Err(malformed("central directory outside the file"));
        }
        if central_len > MAX_CENTRAL_BYTES {
            return Err(malformed("central directory too large"));
        }
        let mut central = vec![0u8; central_len as usize];
        inner
            .seek(SeekFrom::Start(central_offset))
            .map_err(ZipError::Io)?;
        inner.read_exact(&mut central).map_err(ZipError::Io)?;

        let mut entries = HashMap::new();
        let mut at = 0usize;
        for _ in 0..total {
            let fixed = central
                .get(at..at + CENTRAL_LEN)
                .ok_or_else(|| malformed("central directory cut short"))?;
            if u32_at(fixed, 0) != CENTRAL_SIG {
                return Err(malformed("bad central directory entry"));
            }
            let flags = u16_at(fixed, 8);
            let method = u16_at(fixed, 10);
            let crc = u32_at(fixed, 16);
            let compressed = u64::from(u32_at(fixed, 20));
            let size = u64::from(u32_at(fixed, 24));
            let name_len = usize::from(u16_at(fixed, 28));
            let skip = usize::from(u16_at(fixed, 30)) + usize::from(u16_at(fixed, 32));
            let header_offset = u64::from(u32_at(fixed, 42));
            let name = central
                .get(at + CENTRAL_LEN..at + CENTRAL_LEN + name_len)
                .ok_or_else(|| malformed("central directory cut short"))?;
            let name = String::from_utf8_lossy(name).into_owned();
            at += CENTRAL_LEN + name_len + skip;
            if flags & 1 != 0 {
                return Err(malformed("encrypted entry"));
            }
            if compressed == 0xFFFF_FFFF || size == 0xFFFF_FFFF || header_offset == 0xFFFF_FFFF {
                return Err(malformed("zip64 is not supported"));
            }
            if method != STORED && method != DEFLATE {
                return Err(ZipError::Malformed(format!(
                    "entry {name:?}: compression method {method}"
                )));
            }
            if method == STORED && compressed != size {
                return Err(ZipError::Malformed(format!(
                    "entry {name:?}: stored sizes differ"
                )));
            }
            let entry = Entry {
                name: name.clone(),
                method,
                crc,
                compressed,
                size,
                header_offset,
            };
            if entries.insert(name.clone(), entry).is_some() {
                return Err(ZipError::Malformed(format!("entry {name:?} appears twice")));
            }
        }
        Ok(ZipReader {
            inner,
            entries,
            central_offset,
        })
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// The names of all entries, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// A stream of the entry's content that errors (kind `InvalidData`)
    /// unless it is exactly the declared size with the declared CRC.
    pub fn read_entry(&mut self, entry: &Entry) -> Result<EntryReader<'_>, ZipError> {
        let mut local = [0u8; LOCAL_LEN as usize];
        self.inner
            .seek(SeekFrom::Start(entry.header_offset))
            .map_err(ZipError::Io)?;
        self.inner
            .read_exact(&mut local)
            .map_err(ZipError::from_entry_read)?;
        if u32_at(&local, 0) != LOCAL_SIG {
            return Err(ZipError::Malformed(format!(
                "entry {:?}: bad local header",
                entry.name
            )));
        }
        let data_start = entry.header_offset
            + LOCAL_LEN
            + u64::from(u16_at(&local, 26))
            + u64::from(u16_at(&local, 28));
        if data_start + entry.compressed > self.central_offset {
            return Err(ZipError::Malformed(format!(
                "entry {:?}: data runs into the central directory",
                entry.name
            )));
        }
        self.inner
            .seek(SeekFrom::Start(data_start))
            .map_err(ZipError::Io)?;
        let raw = Read::take(&mut self.inner, entry.compressed);
        let source: Box<dyn Read + '_> = match entry.method {
            DEFLATE => Box::new(DeflateDecoder::new(raw)),
            _ => Box::new(raw),
        };
        Ok(EntryReader {
            source,
            expected_size: entry.size,
            expected_crc: entry.crc,
            count: 0,
            crc: Crc::new(),
        })
    }
}

/// See [`ZipReader::read_entry`].
pub struct EntryReader<'a> {
    source: Box<dyn Read + 'a>,
    expected_size: u64,
    expected_crc: u32,
    count: u64,
    crc: Crc,
}

impl Read for EntryReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Never ask for more than one byte past the declared size.
        let room = (self.expected_size - self.count.min(self.expected_size)) + 1;
        let max = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.source.read(&mut buf[..max])?;
        if n == 0 {
            if self.count != self.expected_size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "entry shorter than declared",
                ));
            }
            if self.crc.sum() != self.expected_crc {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "CRC mismatch"));
            }
            return Ok(0);
        }
        self.count += n as u64;
        if self.count > self.expected_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "entry longer than declared",
            ));
        }
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

/// Writes a zip of Stored entries to a seekable sink, one entry at a time.
pub struct ZipWriter<W> {
    out: W,
    dir: Directory,
}

/// What both writers keep as entries go out: the central directory so far,
/// where the next entry starts, and from which offset and count on zip64
/// is needed (lowered by tests, so they can reach it without 4 GiB).
struct Directory {
    central: Vec<u8>,
    offset: u64,
    count: u64,
    zip64_offset: u64,
    zip64_count: u64,
}

impl Directory {
    fn new(zip64_offset: u64, zip64_count: u64) -> Self {
        Directory {
            central: Vec::new(),
            offset: 0,
            count: 0,
            zip64_offset,
            zip64_count,
        }
    }

    /// Records the entry that starts at `offset`: its local header of
    /// `header_len` bytes, then `size` bytes of data.
    fn record(&mut self, name: &str, crc: u32, size: u32, header_len: usize) {
        let far = self.offset >= self.zip64_offset;
        central_record(&mut self.central, name, crc, size, self.offset, far);
        self.offset += header_len as u64 + u64::from(size);
        self.count += 1;
    }

    /// Whether an archive of `count` entries, its central directory of
    /// `central_len` bytes at `central_offset`, needs zip64 end records.
    fn needs_zip64(&self, count: u64, central_offset: u64, central_len: u64) -> bool {
        count >= self.zip64_count
            || central_offset >= self.zip64_offset
            || central_len >= u64::from(u32::MAX)
    }

    /// The central directory and the end records, which end the archive.
    fn tail(&mut self) -> Vec<u8> {
        let central_offset = self.offset;
        let central_len = self.central.len() as u64;
        let zip64 = self.needs_zip64(self.count, central_offset, central_len);
        let mut tail = std::mem::take(&mut self.central);
        tail.extend_from_slice(&end_records(self.count, central_offset, central_len, zip64));
        tail
    }
}

/// Reads `source` to its end through `buf`, handing each piece to `sink`;
/// returns the CRC and length of what was read.
fn read_with_crc(
    source: &mut dyn Read,
    buf: &mut [u8],
    mut sink: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<(u32, u64)> {
    let mut crc = Crc::new();
    let mut size = 0u64;
    loop {
        let n = match source.read(buf) {
            Ok(0) => return Ok((crc.sum(), size)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        crc.update(&buf[..n]);
        sink(&buf[..n])?;
        size += n as u64;
    }
}

const ZIP64_EXTRA: u16 = 0x0001;
const ZIP64_END_SIG: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
/// "Version needed" for a zip64 record: 4.5.
const ZIP64_VERSION: u16 = 45;

/// An entry's size: below 4 GiB (0xFFFFFFFF would mean "see zip64").
fn small(value: u64, what: &str) -> io::Result<u32> {
    u32::try_from(value)
        .ok()
        .filter(|&v| v != u32::MAX)
        .ok_or_else(|| io::Error::other(format!("{what} of 4 GiB or more")))
}

impl<W: Write + Seek> ZipWriter<W> {
    /// `out` must be positioned at its start.
    pub fn new(out: W) -> Self {
        ZipWriter {
            out,
            dir: Directory::new(u64::from(u32::MAX), u64::from(u16::MAX)),
        }
    }

    /// Entries in the archive so far.
    pub fn count(&self) -> u64 {
        self.dir.count
    }

    /// Uses zip64 from these lower offsets and counts, so tests can reach
    /// it without writing 4 GiB.
    #[cfg(test)]
    fn zip64_from(mut self, offset: u64, count: u64) -> Self {
        self.dir = Directory::new(offset, count);
        self
    }

    /// Copies `data` into a new Stored entry; returns its size.
    pub fn add(&mut self, name: &str, data: &mut dyn Read) -> io::Result<u64> {
        let header_offset = self.dir.offset;
        // CRC and sizes are patched in below, once the data has passed.
        let local = local_header(name, 0, 0)?;
        self.out.write_all(&local)?;
        let mut buf = vec![0u8; 64 * 1024];
        let out = &mut self.out;
        let (crc, size) = read_with_crc(data, &mut buf, |piece| out.write_all(piece))?;
        let size32 = small(size, "entry")?;
        self.out.seek(SeekFrom::Start(header_offset + 14))?;
        self.out.write_all(&crc_and_sizes(crc, size32))?;
        self.dir.record(name, crc, size32, local.len());
        self.out.seek(SeekFrom::Start(self.dir.offset))?;
        Ok(size)
    }

    /// Writes the central directory and end records; returns the sink and
    /// the archive's length.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        let tail = self.dir.tail();
        self.out.write_all(&tail)?;
        self.out.flush()?;
        let len = self.dir.offset + tail.len() as u64;
        Ok((self.out, len))
    }
}

/// A Stored entry's local header.
fn local_header(name: &str, crc: u32, size: u32) -> io::Result<Vec<u8>> {
    let name_len = u16::try_from(name.len()).map_err(io::Error::other)?;
    let mut local = Vec::with_capacity(LOCAL_LEN as usize + name.len());
    local.extend_from_slice(&LOCAL_SIG.to_le_bytes());
    local.extend_from_slice(&10u16.to_le_bytes()); // version needed: 1.0
    local.extend_from_slice(&0u16.to_le_bytes()); // flags
    local.extend_from_slice(&STORED.to_le_bytes());
    local.extend_from_slice(&0u16.to_le_bytes()); // time
    local.extend_from_slice(&DOS_DATE.to_le_bytes());
    local.extend_from_slice(&crc_and_sizes(crc, size));
    local.extend_from_slice(&name_len.to_le_bytes());
    local.extend_from_slice(&0u16.to_le_bytes()); // extra
    local.extend_from_slice(name.as_bytes());
    Ok(local)
}

/// CRC, compressed and uncompressed size (the same: Stored).
fn crc_and_sizes(crc: u32, size: u32) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out[4..8].copy_from_slice(&size.to_le_bytes());
    out[8..].copy_from_slice(&size.to_le_bytes());
    out
}

/// A Stored entry's central directory record, appended to `c`. Past the
/// zip64 line (`far`), its offset moves into a zip64 extra field. The name's
/// length was checked by [`local_header`].
fn central_record(c: &mut Vec<u8>, name: &str, crc: u32, size: u32, header_offset: u64, far: bool) {
    let (version, extra_len, offset32) = match far {
        true => (ZIP64_VERSION, 12u16, u32::MAX),
        false => (10, 0, header_offset as u32),
    };
    c.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
    c.extend_from_slice(&0x031Eu16.to_le_bytes()); // made by: Unix, 3.0
    c.extend_from_slice(&version.to_le_bytes());
    c.extend_from_slice(&0u16.to_le_bytes());
    c.extend_from_slice(&STORED.to_le_bytes());
    c.extend_from_slice(&0u16.to_le_bytes());
    c.extend_from_slice(&DOS_DATE.to_le_bytes());
    c.extend_from_slice(&crc_and_sizes(crc, size));
    c.extend_from_slice(&(name.len() as u16).to_le_bytes());
    c.extend_from_slice(&extra_len.to_le_bytes());
    c.extend_from_slice(&[0u8; 6]); // comment, disk, internal attributes
    c.extend_from_slice(&(0o100644u32 << 16).to_le_bytes());
    c.extend_from_slice(&offset32.to_le_bytes());
    c.extend_from_slice(name.as_bytes());
    if far {
        c.extend_from_slice(&ZIP64_EXTRA.to_le_bytes());
        c.extend_from_slice(&8u16.to_le_bytes());
        c.extend_from_slice(&header_offset.to_le_bytes());
    }
}

/// The length of [`central_record`]'s record.
fn central_record_len(name: &str, far: bool) -> u64 {
    (CENTRAL_LEN + name.len()) as u64 + if far { 12 } else { 0 }
}

/// The end records: zip64's record and locator when `zip64`, then the
/// classic record, its fields saturated when zip64 holds them.
fn end_records(count: u64, central_offset: u64, central_len: u64, zip64: bool) -> Vec<u8> {
    let mut end = Vec::with_capacity(end_records_len(zip64));
    if zip64 {
        let record_offset = central_offset + central_len;
        end.extend_from_slice(&ZIP64_END_SIG.to_le_bytes());
        end.extend_from_slice(&44u64.to_le_bytes()); // size of the rest
        end.extend_from_slice(&0x031Eu16.to_le_bytes());
        end.extend_from_slice(&ZIP64_VERSION.to_le_bytes());
        end.extend_from_slice(&[0u8; 8]); // disk numbers
        end.extend_from_slice(&count.to_le_bytes());
        end.extend_from_slice(&count.to_le_bytes());
        end.extend_from_slice(&central_len.to_le_bytes());
        end.extend_from_slice(&central_offset.to_le_bytes());
        end.extend_from_slice(&ZIP64_LOCATOR_SIG.to_le_bytes());
        end.extend_from_slice(&0u32.to_le_bytes()); // disk
        end.extend_from_slice(&record_offset.to_le_bytes());
        end.extend_from_slice(&1u32.to_le_bytes()); // disks
    }
    let count16 = u16::try_from(count)
        .ok()
        .filter(|_| !zip64)
        .unwrap_or(u16::MAX);
    let saturate = |v: u64| match zip64 {
        true => u32::MAX,
        false => v as u32,
    };
    end.extend_from_slice(&END_SIG.to_le_bytes());
    end.extend_from_slice(&[0u8; 4]); // disk numbers
    end.extend_from_slice(&count16.to_le_bytes());
    end.extend_from_slice(&count16.to_le_bytes());
    end.extend_from_slice(&saturate(central_len).to_le_bytes());
    end.extend_from_slice(&saturate(central_offset).to_le_bytes());
    end.extend_from_slice(&0u16.to_le_bytes()); // comment
    end
}

fn end_records_len(zip64: bool) -> usize {
    END_LEN + if zip64 { 56 + 20 } else { 0 }
}

/// A zip of Stored entries made as it is read, for media downloads: the
/// same bytes [`ZipWriter`] would write, without writing them anywhere
/// first. Each entry's source is read twice: once for its CRC, which the
/// local header needs before the data, then again as the data goes out
/// (from the page cache, just read). That costs less than writing the zip
/// to a temporary file and reading it back, and needs no disk space.
///
/// The length is known from the start (the sources' sizes), so a legacy
/// client gets a Content-Length. A source whose length or content changes
/// while it is sent fails the read, and the client sees a broken answer,
/// never a wrong file.
pub struct ZipStream<'a> {
    entries: std::vec::IntoIter<(String, Box<dyn ReadSeek + 'a>, u64)>,
    /// The entry being sent: its source, bytes still to send, the CRC so far
    /// and the CRC its header promised.
    current: Option<(Box<dyn ReadSeek + 'a>, u64, Crc, u32)>,
    /// Header or tail bytes waiting to be read, from `pending_at` on.
    pending: Vec<u8>,
    pending_at: usize,
    dir: Directory,
    finished: bool,
    len: u64,
    buf: Vec<u8>,
}

/// An entry's source.
pub trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

impl<'a> ZipStream<'a> {
    /// `entries`: each entry's name, its source (at its start) and its
    /// length.
    pub fn new(entries: Vec<(String, Box<dyn ReadSeek + 'a>, u64)>) -> io::Result<Self> {
        Self::with_zip64_from(entries, u64::from(u32::MAX), u64::from(u16::MAX))
    }

    fn with_zip64_from(
        entries: Vec<(String, Box<dyn ReadSeek + 'a>, u64)>,
        zip64_offset: u64,
        zip64_count: u64,
    ) -> io::Result<Self> {
        let mut offset = 0u64;
        let mut central_len = 0u64;
        for (name, _, size) in &entries {
            u16::try_from(name.len()).map_err(io::Error::other)?;
            small(*size, "entry")?;
            central_len += central_record_len(name, offset >= zip64_offset);
            offset += LOCAL_LEN + name.len() as u64 + size;
        }
        let dir = Directory::new(zip64_offset, zip64_count);
        let zip64 = dir.needs_zip64(entries.len() as u64, offset, central_len);
        Ok(ZipStream {
            entries: entries.into_iter(),
            current: None,
            pending: Vec::new(),
            pending_at: 0,
            dir,
            finished: false,
            len: offset + central_len + end_records_len(zip64) as u64,
            buf: vec![0u8; 64 * 1024],
        })
    }

    /// The archive's length in bytes.
    pub fn size(&self) -> u64 {
        self.len
    }

    /// Reads `source` for its CRC, checks its length, rewinds it, and
    /// queues its local header.
    fn begin(
        &mut self,
        name: String,
        mut source: Box<dyn ReadSeek + 'a>,
        size: u64,
    ) -> io::Result<()> {
        let (crc, seen) = read_with_crc(&mut source, &mut self.buf, |_| Ok(()))?;
        if seen != size {
            return Err(io::Error::other(format!(
                "{name}: {seen} bytes where {size} were expected (changed while being sent)"
            )));
        }
        source.seek(SeekFrom::Start(0))?;
        let size32 = small(size, "entry")?;
        self.pending = local_header(&name, crc, size32)?;
        self.pending_at = 0;
        self.dir.record(&name, crc, size32, self.pending.len());
        self.current = Some((source, size, Crc::new(), crc));
        Ok(())
    }

    /// Queues the central directory and end records.
    fn end(&mut self) -> io::Result<()> {
        let tail = self.dir.tail();
        if self.dir.offset + tail.len() as u64 != self.len {
            return Err(io::Error::other("zip length differs from its plan"));
        }
        self.pending = tail;
        self.pending_at = 0;
        self.finished = true;
        Ok(())
    }
}

impl Read for ZipStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pending_at < self.pending.len() {
                let n = buf.len().min(self.pending.len() - self.pending_at);
                buf[..n].copy_from_slice(&self.pending[self.pending_at..self.pending_at + n]);
                self.pending_at += n;
                return Ok(n);
            }
            if let Some((source, left, crc, promised)) = &mut self.current {
                if *left > 0 {
                    let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let n = source.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "a file shrank while being sent",
                        ));
                    }
                    crc.update(&buf[..n]);
                    *left -= n as u64;
                    return Ok(n);
                }
                if crc.sum() != *promised {
                    return Err(io::Error::other("a file changed while being sent"));
                }
                self.current = None;
            }
            match self.entries.next() {
                Some((name, source, size)) => self.begin(name, source, size)?,
                None if !self.finished => self.end()?,
                None => return Ok(0),
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::DeflateEncoder;
    use std::io::Cursor;

    /// A test-only zip builder, independent of `ZipWriter`, that can make
    /// Deflate entries, data descriptors and lying headers.
    pub struct Built {
        pub bytes: Vec<u8>,
        central: Vec<u8>,
        count: u16,
    }

    pub struct Spec<'a> {
        pub name: &'a str,
        pub data: &'a [u8],
        pub deflate: bool,
        pub descriptor: bool,
        /// Declared uncompressed size, if it should lie.
        pub declared: Option<u32>,
    }

    impl Built {
        pub fn new() -> Built {
            Built {
                bytes: Vec::new(),
                central: Vec::new(),
                count: 0,
            }
        }

        pub fn add(mut self, s: Spec<'_>) -> Built {
            let mut crc = Crc::new();
            crc.update(s.data);
            let payload = if s.deflate {
                let mut enc = DeflateEncoder::new(Vec::new(), Compression::default());
                enc.write_all(s.data).unwrap();
                enc.finish().unwrap()
            } else {
                s.data.to_vec()
            };
            let method: u16 = if s.deflate { 8 } else { 0 };
            let flags: u16 = if s.descriptor { 8 } else { 0 };
            let size = s.declared.unwrap_or(s.data.len() as u32);
            let offset = self.bytes.len() as u32;
            let mut fields = Vec::new();
            fields.extend_from_slice(&20u16.to_le_bytes());
            fields.extend_from_slice(&flags.to_le_bytes());
            fields.extend_from_slice(&method.to_le_bytes());
            fields.extend_from_slice(&[0u8; 4]);
            let sizes = [crc.sum(), payload.len() as u32, size];
            let b = &mut self.bytes;
            b.extend_from_slice(&LOCAL_SIG.to_le_bytes());
            b.extend_from_slice(&fields);
            for v in sizes {
                let v = if s.descriptor { 0 } else { v };
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(&(s.name.len() as u16).to_le_bytes());
            b.extend_from_slice(&0u16.to_le_bytes());
            b.extend_from_slice(s.name.as_bytes());
            b.extend_from_slice(&payload);
            if s.descriptor {
                b.extend_from_slice(&0x0807_4b50u32.to_le_bytes());
                for v in sizes {
                    b.extend_from_slice(&v.to_le_bytes());
                }
            }
            let c = &mut self.central;
            c.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
            c.extend_from_slice(&20u16.to_le_bytes());
            c.extend_from_slice(&fields);
            for v in sizes {
                c.extend_from_slice(&v.to_le_bytes());
            }
            c.extend_from_slice(&(s.name.len() as u16).to_le_bytes());
            c.extend_from_slice(&[0u8; 12]);
            c.extend_from_slice(&offset.to_le_bytes());
            c.extend_from_slice(s.name.as_bytes());
            self.count += 1;
            self
        }

        pub fn stored(self, name: &str, data: &[u8]) -> Built {
            self.add(Spec {
                name,
                data,
                deflate: false,
                descriptor: false,
                declared: None,
            })
        }

        pub fn finish(mut self) -> Vec<u8> {
            let offset = self.bytes.len() as u32;
            let central = std::mem::take(&mut self.central);
            self.bytes.extend_from_slice(&central);
            self.bytes.extend_from_slice(&END_SIG.to_le_bytes());
            self.bytes.extend_from_slice(&[0u8; 4]);
            self.bytes.extend_from_slice(&self.count.to_le_bytes());
            self.bytes.extend_from_slice(&self.count.to_le_bytes());
            self.bytes
                .extend_from_slice(&(central.len() as u32).to_le_bytes());
            self.bytes.extend_from_slice(&offset.to_le_bytes());
            self.bytes.extend_from_slice(&0u16.to_le_bytes());
            self.bytes
        }
    }

    fn read_all(zip: &[u8], name: &str) -> Result<Vec<u8>, ZipError> {
        let mut reader = ZipReader::open(Cursor::new(zip))?;
        let entry = reader.entry(name).cloned().expect("entry");
        let mut out = Vec::new();
        reader
            .read_entry(&entry)?
            .read_to_end(&mut out)
            .map_err(ZipError::from_entry_read)?;
        Ok(out)
    }

    #[test]
    fn reads_stored_deflate_and_descriptor_entries() {
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let zip = Built::new()
            .stored("0", b"apple-data-1")
            .add(Spec {
                name: "1",
                data: &big,
                deflate: true,
                descriptor: true,
                declared: None,
            })
            .stored("_meta", br#"[["a","0"],["b","1"]]"#)
            .finish();
        assert_eq!(read_all(&zip, "0").unwrap(), b"apple-data-1");
        assert_eq!(read_all(&zip, "1").unwrap(), big);
        assert_eq!(
            read_all(&zip, "_meta").unwrap(),
            br#"[["a","0"],["b","1"]]"#
        );
    }

    #[test]
    fn lying_sizes_and_bombs_are_malformed() {
        let zeros = vec![0u8; 1 << 20];
        let zip = Built::new()
            .add(Spec {
                name: "bomb",
                data: &zeros,
                deflate: true,
                descriptor: false,
                declared: Some(1000),
            })
            .add(Spec {
                name: "short",
                data: b"abc",
                deflate: false,
                descriptor: false,
                declared: None,
            })
            .finish();
        assert!(matches!(
            read_all(&zip, "bomb"),
            Err(ZipError::Malformed(_))
        ));
        assert_eq!(read_all(&zip, "short").unwrap(), b"abc");
    }

    #[test]
    fn truncated_and_garbage_zips_are_malformed() {
        let zip = Built::new().stored("0", b"apple-data-1").finish();
        for cut in [0, 10, zip.len() / 2, zip.len() - 1] {
            assert!(
                matches!(
                    ZipReader::open(Cursor::new(&zip[..cut])),
                    Err(ZipError::Malformed(_))
                ),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            ZipReader::open(Cursor::new(b"not a zip at all, just some text".to_vec())),
            Err(ZipError::Malformed(_))
        ));
        // A corrupted byte of content fails the CRC.
        let mut bad = zip.clone();
        bad[30 + 1] ^= 0xFF;
        assert!(matches!(read_all(&bad, "0"), Err(ZipError::Malformed(_))));
    }

    #[test]
    fn writer_output_reads_back() {
        let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
        writer.add("0", &mut &b"apple-data-1"[..]).unwrap();
        writer.add("1", &mut &b""[..]).unwrap();
        writer
            .add("_meta", &mut &br#"{"0":"apple.jpg"}"#[..])
            .unwrap();
        let (out, len) = writer.finish().unwrap();
        let bytes = out.into_inner();
        assert_eq!(bytes.len() as u64, len);
        assert_eq!(read_all(&bytes, "0").unwrap(), b"apple-data-1");
        assert_eq!(read_all(&bytes, "1").unwrap(), b"");
        assert_eq!(read_all(&bytes, "_meta").unwrap(), br#"{"0":"apple.jpg"}"#);
        // The local header carries the real CRC and sizes (no descriptor).
        assert_eq!(u32_at(&bytes, 18), 12);
        assert_eq!(u32_at(&bytes, 22), 12);
    }

    /// What `ZipStream` makes of `entries`, read `step` bytes at a time.
    fn streamed(entries: &[(&str, &[u8])], zip64: (u64, u64), step: usize) -> io::Result<Vec<u8>> {
        let sources = entries
            .iter()
            .map(|(name, data)| {
                let source: Box<dyn ReadSeek> = Box::new(Cursor::new(data.to_vec()));
                (name.to_string(), source, data.len() as u64)
            })
            .collect();
        let mut stream = ZipStream::with_zip64_from(sources, zip64.0, zip64.1)?;
        let len = stream.size();
        let mut out = Vec::new();
        let mut buf = vec![0u8; step];
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out.len() as u64, len, "the planned length");
        Ok(out)
    }

    #[test]
    fn the_stream_makes_the_writers_bytes() {
        let big = vec![7u8; 200_000];
        let entries: [(&str, &[u8]); 4] = [
            ("0", b"apple-data-1"),
            ("1", b""),
            ("2", &big),
            ("_meta", br#"{"0":"apple.jpg","1":"empty","2":"big"}"#),
        ];
        let limits = [
            (u64::from(u32::MAX), u64::from(u16::MAX)),
            (100, 3),
            (0, 1),
            (40, 9),
        ];
        for zip64 in limits {
            let mut writer = ZipWriter::new(Cursor::new(Vec::new())).zip64_from(zip64.0, zip64.1);
            for (name, data) in entries {
                writer.add(name, &mut &data[..]).unwrap();
            }
            let (out, len) = writer.finish().unwrap();
            let written = out.into_inner();
            assert_eq!(written.len() as u64, len);
            for step in [1, 7, 4096, 64 * 1024] {
                let bytes = streamed(&entries, zip64, step).unwrap();
                assert!(
                    bytes == written,
                    "zip64 from {zip64:?}, read {step} at a time"
                );
            }
            // (Our reader takes no zip64; zip64_offsets_and_counts_read_back
            // has Python read the writer's.)
            if zip64.1 == u64::from(u16::MAX) {
                assert_eq!(read_all(&written, "2").unwrap(), big);
            }
        }
        // No entries at all: just the end record.
        assert_eq!(
            streamed(&[], (u64::from(u32::MAX), 65535), 10)
                .unwrap()
                .len(),
            END_LEN
        );
    }

    /// A source that gives other bytes (or fewer) after its first pass.
    struct Fickle {
        first: Cursor<Vec<u8>>,
        then: Vec<u8>,
    }

    impl Read for Fickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.first.read(buf)
        }
    }

    impl Seek for Fickle {
        fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
            self.first = Cursor::new(std::mem::take(&mut self.then));
            self.first.seek(to)
        }
    }

    #[test]
    fn a_source_that_changes_while_sent_fails_the_stream() {
        let read = |first: &[u8], then: &[u8], declared: u64| {
            let source: Box<dyn ReadSeek> = Box::new(Fickle {
                first: Cursor::new(first.to_vec()),
                then: then.to_vec(),
            });
            let mut stream = ZipStream::new(vec![("0".to_string(), source, declared)]).unwrap();
            let mut out = Vec::new();
            stream.read_to_end(&mut out).map(|_| out)
        };
        assert!(read(b"abcdef", b"abcdef", 6).is_ok());
        // Another length than the one planned, before anything is sent.
        let err = read(b"abcdef", b"abcdef", 5).unwrap_err();
        assert!(err.to_string().contains("6 bytes where 5"), "{err}");
        // Changed after its CRC was taken: same length, other bytes.
        let err = read(b"abcdef", b"abcxef", 6).unwrap_err();
        assert!(
            err.to_string().contains("changed while being sent"),
            "{err}"
        );
        // Shrank after its CRC was taken.
        let err = read(b"abcdef", b"abc", 6).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// Python's `zipfile` (an independent reader, as the `zip` crate in
    /// Anki is) lists and checks an archive: `name offset size` per entry.
    fn python_listing(zip: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.zip");
        std::fs::write(&path, zip).unwrap();
        let script = "import sys, zipfile\n\
                      z = zipfile.ZipFile(sys.argv[1])\n\
                      assert z.testzip() is None\n\
                      for i in z.infolist(): print(i.filename, i.header_offset, i.file_size)";
        let out = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(&path)
            .output()
            .expect("python3 (the real-client tests need it too)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn zip64_offsets_and_counts_read_back() {
        for (offset, count) in [(u64::from(u32::MAX), u64::from(u16::MAX)), (100, 3), (0, 1)] {
            let mut writer = ZipWriter::new(Cursor::new(Vec::new())).zip64_from(offset, count);
            let mut want = String::new();
            let mut at = 0;
            for i in 0..5u8 {
                let data = [i; 60];
                let name = format!("entry{i}");
                writer.add(&name, &mut &data[..]).unwrap();
                want.push_str(&format!("{name} {at} 60\n"));
                at += 30 + name.len() + 60;
            }
            let (out, len) = writer.finish().unwrap();
            let bytes = out.into_inner();
            assert_eq!(bytes.len() as u64, len);
            assert_eq!(python_listing(&bytes), want, "zip64 from {offset}/{count}");
            let zip64 = offset < 300 || count <= 5;
            assert_eq!(
                bytes.windows(4).any(|w| w == ZIP64_END_SIG.to_le_bytes()),
                zip64
            );
        }
    }
}
