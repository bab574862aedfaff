//! JSON lines in a file, rotated by size: when the next record would take
//! the file past `max-size`, `PATH` becomes `PATH.1` (`PATH.1` becomes
//! `PATH.2`, ...) and a new `PATH` is started; `keep` rotated files are kept,
//! the oldest is deleted.
//!
//! Written here rather than with a rotation crate because rotation must fall
//! between records while the records are written in buffered batches: a
//! reader of `PATH.1` never sees half a record, and the writer does one
//! `write` per batch, not per record.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use bytesize::ByteSize;
use serde::Deserialize;

use super::{Sink, SinkError};
use crate::audit::{format::Format, record::Record};

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    /// The file written; its directory must exist.
    pub path: PathBuf,
    /// Rotate before the file grows past this.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// Rotated files kept (`PATH.1` newest); 0 keeps none.
    #[serde(default = "default_keep")]
    pub keep: u32,
    #[serde(default)]
    pub format: Format,
}

const fn default_max_size() -> ByteSize {
    ByteSize::mib(100)
}

const fn default_keep() -> u32 {
    5
}

/// Buffered bytes written out before the batch ends.
const BUFFER: usize = 64 * 1024;

#[derive(Debug)]
pub struct RotatingFile {
    config: FileConfig,
    file: File,
    /// Bytes in the file, including `pending`.
    size: u64,
    pending: Vec<u8>,
    line: Vec<u8>,
}

impl RotatingFile {
    pub fn open(config: FileConfig) -> Result<Self, SinkError> {
        let file =
            open(&config.path).map_err(|source| io_error(&config.path, "opening", source))?;
        let size = file
            .metadata()
            .map_err(|source| io_error(&config.path, "reading the size of", source))?
            .len();
        Ok(Self {
            config,
            file,
            size,
            pending: Vec::with_capacity(BUFFER),
            line: Vec::new(),
        })
    }

    fn write_pending(&mut self) -> Result<(), SinkError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let written = self.file.write_all(&self.pending);
        self.pending.clear();
        written.map_err(|source| io_error(&self.config.path, "writing", source))
    }

    fn rotate(&mut self) -> Result<(), SinkError> {
        self.write_pending()?;
        let path = &self.config.path;
        let rotated = |n: u32| {
            let mut name = path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let keep = self.config.keep;
        // A missing older file is not a problem: the chain has gaps after a
        // `keep` change or a manual delete.
        let ignore_missing = |result: io::Result<()>| match result {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        };
        let shift = || -> io::Result<()> {
            if keep == 0 {
                return ignore_missing(fs::remove_file(path));
            }
            ignore_missing(fs::remove_file(rotated(keep)))?;
            for n in (1..keep).rev() {
                ignore_missing(fs::rename(rotated(n), rotated(n + 1)))?;
            }
            fs::rename(path, rotated(1))
        };
        shift().map_err(|source| io_error(path, "rotating", source))?;
        self.file = open(path).map_err(|source| io_error(path, "opening", source))?;
        self.size = 0;
        Ok(())
    }
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        // Audit records name users' files and processes.
        .mode(0o600)
        .open(path)
}

fn io_error(path: &Path, doing: &str, source: io::Error) -> SinkError {
    SinkError::File {
        what: format!("{doing} {}", path.display()),
        source,
    }
}

impl Sink for RotatingFile {
    fn write(&mut self, record: &Record) -> Result<(), SinkError> {
        self.line.clear();
        self.config
            .format
            .encode(record, &mut self.line)
            .map_err(|error| io_error(&self.config.path, "encoding for", error.into()))?;
        self.line.push(b'\n');
        let len = self.line.len() as u64;
        // A record larger than the limit still gets a file of its own.
        if self.size > 0 && self.size + len > self.config.max_size.as_u64() {
            self.rotate()?;
        }
        self.pending.extend_from_slice(&self.line);
        self.size += len;
        if self.pending.len() >= BUFFER {
            self.write_pending()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.write_pending()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::sink::tests::{drift_record, scratch_dir};

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("whole records only"))
            .collect()
    }

    #[test]
    fn rotates_between_records_and_keeps_the_newest_files() {
        let dir = scratch_dir("rotate");
        let path = dir.join("audit.json");
        let one = {
            let mut line = Vec::new();
            Format::Ecs
                .encode(&drift_record("/x/0"), &mut line)
                .unwrap();
            line.len() as u64 + 1
        };
        let mut sink = RotatingFile::open(FileConfig {
            path: path.clone(),
            // Three records per file.
            max_size: ByteSize::b(one * 3 + one / 2),
            keep: 2,
            format: Format::Ecs,
        })
        .unwrap();
        for n in 0..10 {
            sink.write(&drift_record(&format!("/x/{n}"))).unwrap();
            if n % 4 == 0 {
                sink.flush().unwrap();
            }
        }
        sink.flush().unwrap();
        let paths = |file: &[serde_json::Value]| -> Vec<String> {
            file.iter()
                .map(|record| record["file"]["path"].as_str().unwrap().to_owned())
                .collect()
        };
        // 10 records: [0 1 2] [3 4 5] [6 7 8] [9]; the first file is gone.
        assert_eq!(paths(&lines(&path)), ["/x/9"]);
        assert_eq!(
            paths(&lines(&dir.join("audit.json.1"))),
            ["/x/6", "/x/7", "/x/8"]
        );
        assert_eq!(
            paths(&lines(&dir.join("audit.json.2"))),
            ["/x/3", "/x/4", "/x/5"]
        );
        assert!(!dir.join("audit.json.3").exists());
        let mode = fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        // Reopening appends.
        drop(sink);
        let mut sink = RotatingFile::open(FileConfig {
            path: path.clone(),
            max_size: ByteSize::mib(1),
            keep: 0,
            format: Format::Ecs,
        })
        .unwrap();
        sink.write(&drift_record("/x/10")).unwrap();
        sink.flush().unwrap();
        assert_eq!(paths(&lines(&path)), ["/x/9", "/x/10"]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_directory_is_named() {
        let error = RotatingFile::open(FileConfig {
            path: PathBuf::from("/nonexistent-dir/audit.json"),
            max_size: ByteSize::mib(1),
            keep: 1,
            format: Format::Ecs,
        })
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("opening /nonexistent-dir/audit.json"),
            "{error}"
        );
    }
}
