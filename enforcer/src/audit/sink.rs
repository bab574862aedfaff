//! Where audit records go. Every sink implements [`Sink`]; the pipeline
//! writes each record to each sink.

use std::io::{self, Write};

use super::record::Record;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{sink}: {source}")]
    Io {
        sink: &'static str,
        #[source]
        source: io::Error,
    },
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
}

impl JsonLines<io::BufWriter<io::Stdout>> {
    pub fn stdout() -> Self {
        Self::new("stdout", io::BufWriter::new(io::stdout()))
    }
}

impl<W: Write + Send> JsonLines<W> {
    pub const fn new(name: &'static str, out: W) -> Self {
        Self { name, out }
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
        serde_json::to_writer(&mut self.out, record).map_err(|e| io_error(e.into()))?;
        self.out.write_all(b"\n").map_err(io_error)
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|source| SinkError::Io {
            sink: self.name,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{
        decode::{AuditEvent, tests::drift_event},
        enrich::{BootClock, Enricher, PolicyTable},
    };

    #[test]
    fn writes_one_parseable_object_per_line() {
        let enricher = Enricher {
            containers: crate::container::registry::Catalog::default(),
            proc_lineage: false,
            host_pid_ns: None,
            clock: BootClock::now(),
            hostname: "h".to_owned(),
            policy: PolicyTable::default(),
            cgroups: std::sync::Arc::new(std::sync::Mutex::new(
                crate::container::CgroupIndex::new(None),
            )),
        };
        let mut sink = JsonLines::new("test", Vec::new());
        for path in ["/a", "/b\nwith newline"] {
            sink.write(&enricher.record(&AuditEvent::Decision(drift_event(path))))
                .unwrap();
        }
        sink.flush().unwrap();
        let out = String::from_utf8(sink.into_inner()).unwrap();
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["file"]["path"], "/b\nwith newline");
    }
}
