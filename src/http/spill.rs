//! Where a legacy form's `data` part waits while the rest of the form is
//! read (clients may send the other fields after it): in memory while it is
//! small, in a temporary file once it grows, so a collection upload from an
//! old client never sits in RAM.

use std::fs::{self, File};
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::storage::TempFile;

/// Bytes kept in memory before spilling to disk; JSON requests stay below.
pub const MEMORY_LIMIT: usize = 256 * 1024;

pub struct Spill {
    dir: PathBuf,
    memory: Vec<u8>,
    file: Option<(File, TempFile)>,
}

impl Spill {
    /// A new, empty spill whose file (if needed) goes into `dir`.
    pub fn new(dir: &Path) -> Spill {
        Spill {
            dir: dir.to_path_buf(),
            memory: Vec::new(),
            file: None,
        }
    }

    /// Everything written, from the start.
    pub fn reader(&mut self) -> io::Result<Box<dyn Read + Send + '_>> {
        match &mut self.file {
            Some((file, _)) => {
                file.seek(SeekFrom::Start(0))?;
                Ok(Box::new(io::BufReader::new(file)))
            }
            None => Ok(Box::new(Cursor::new(&self.memory[..]))),
        }
    }

    fn spill_to_file(&mut self) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let (temp, mut file) = TempFile::create(&self.dir, "legacy-form")?;
        file.write_all(&self.memory)?;
        self.memory = Vec::new();
        self.file = Some((file, temp));
        Ok(())
    }
}

impl Write for Spill {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.file.is_none() && self.memory.len() + buf.len() > MEMORY_LIMIT {
            self.spill_to_file()?;
        }
        match &mut self.file {
            Some((file, _)) => file.write(buf),
            None => {
                self.memory.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some((file, _)) => file.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(s: &mut Spill) -> Vec<u8> {
        let mut out = Vec::new();
        s.reader().unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn small_data_stays_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spill::new(&dir.path().join("t"));
        s.write_all(b"{\"v\":10}").unwrap();
        assert_eq!(read_all(&mut s), b"{\"v\":10}");
        assert!(!dir.path().join("t").exists());
    }

    #[test]
    fn large_data_goes_to_a_file_that_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let spill_dir = dir.path().join("t");
        let data: Vec<u8> = (0..MEMORY_LIMIT * 3).map(|i| (i % 251) as u8).collect();
        let path = {
            let mut s = Spill::new(&spill_dir);
            for chunk in data.chunks(1000) {
                s.write_all(chunk).unwrap();
            }
            assert_eq!(read_all(&mut s), data);
            assert_eq!(read_all(&mut s), data, "readable twice");
            let entries: Vec<_> = fs::read_dir(&spill_dir).unwrap().flatten().collect();
            assert_eq!(entries.len(), 1);
            entries[0].path()
        };
        assert!(!path.exists());
    }
}
