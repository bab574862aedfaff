//! Where audit records go. Every sink implements [`Sink`]; the pipeline
//! writes each record to each sink, in order, from its writer thread.

pub mod file;
pub mod spec;
pub mod spool;
pub mod syslog;
pub mod webhook;

use std::io::{self, Write};

use super::{format::Format, record::Record};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{sink}: {source}")]
    Io {
        sink: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("file sink: {what}: {source}")]
    File {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("webhook sink: spool: {source}")]
    Spool {
        #[source]
        source: spool::SpoolError,
    },
    #[error("webhook sink: {lost} records could not be spooled (lost): {source}")]
    SpoolLost {
        lost: u64,
        #[source]
        source: spool::SpoolError,
    },
    #[error("{sink} sink: encoding a record: {source}")]
    Encode {
        sink: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{sink} sink: {message}")]
    Other { sink: &'static str, message: String },
}

pub trait Sink: Send {
    fn write(&mut self, record: &Record) -> Result<(), SinkError>;
    /// Called when the pipeline has no more records queued.
    fn flush(&mut self) -> Result<(), SinkError>;
}

/// One JSON object per line.
#[derive(Debug)]
pub struct JsonLines<W> {
    name: &'static str,
    out: W,
    format: Format,
    /// One encoded record, reused.
    line: Vec<u8>,
}

impl JsonLines<io::BufWriter<io::Stdout>> {
    pub fn stdout(format: Format) -> Self {
        Self::new("stdout", io::BufWriter::new(io::stdout()), format)
    }
}

impl<W: Write + Send> JsonLines<W> {
    pub const fn new(name: &'static str, out: W, format: Format) -> Self {
        Self {
            name,
            out,
            format,
            line: Vec::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write + Send> Sink for JsonLines<W> {
    fn write(&mut self, record: &Record) -> Result<(), SinkError> {
        let io_error = |source| SinkError::Io {
            sink: self.name,
            source,
        };
        self.line.clear();
        self.format
            .encode(record, &mut self.line)
            .map_err(|source| SinkError::Encode {
                sink: self.name,
                source,
            })?;
        self.line.push(b'\n');
        self.out.write_all(&self.line).map_err(io_error)
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|source| SinkError::Io {
            sink: self.name,
            source,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::audit::{
        decode::{AuditEvent, tests::drift_event},
        enrich::{BootClock, Enricher, PolicyTable},
    };

    /// A drift decision's record, with `path` as its file.
    pub(crate) fn drift_record(path: &str) -> Record {
        record_of(&AuditEvent::Decision(drift_event(path)))
    }

    /// The record of `event`, enriched with nothing known.
    pub(crate) fn record_of(event: &AuditEvent) -> Record {
        let enricher = Enricher {
            containers: crate::container::registry::Catalog::default(),
            proc_lineage: false,
            host_pid_ns: None,
            exe_cache: crate::audit::lineage::ExeCache::default(),
            clock: BootClock::now(),
            hostname: "h".to_owned(),
            policy: PolicyTable::default(),
            cgroups: std::sync::Arc::new(std::sync::Mutex::new(
                crate::container::CgroupIndex::new(None),
            )),
        };
        enricher.record(event)
    }

    /// A new, empty directory for one test.
    pub(crate) fn scratch_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("enforcer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    }

    #[test]
    fn writes_one_parseable_object_per_line() {
        let mut sink = JsonLines::new("test", Vec::new(), Format::Ecs);
        for path in ["/a", "/b\nwith newline"] {
            sink.write(&drift_record(path)).unwrap();
        }
        sink.flush().unwrap();
        let out = String::from_utf8(sink.into_inner()).unwrap();
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["file"]["path"], "/b\nwith newline");
    }
}
