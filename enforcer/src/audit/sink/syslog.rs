//! RFC 5424 syslog messages, one per record, to a local socket (`/dev/log`),
//! UDP or TCP. The message is the record's JSON; the header carries what a
//! syslog filter needs without parsing it: severity (from the decision),
//! `APP-NAME`, the agent's pid and a `MSGID` of `drift`, `vshield` or
//! `policy`.
//!
//! Syslog has no acknowledgement: a daemon that is down loses what is sent
//! meanwhile (counted as sink errors, and the connection is tried again at
//! most once a second). Use the file or webhook sink where every record must
//! arrive.

use std::{
    io::{self, Write as _},
    net::{TcpStream, UdpSocket},
    os::unix::net::{UnixDatagram, UnixStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use serde::Deserialize;

use super::{Sink, SinkError};
use crate::audit::{format::Format, record::Record};

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SyslogConfig {
    /// `unix:PATH`, `udp:HOST:PORT` or `tcp:HOST:PORT`.
    #[serde(default = "default_address")]
    pub address: Address,
    #[serde(default)]
    pub facility: Facility,
    #[serde(default = "default_app_name")]
    pub app_name: String,
    #[serde(default)]
    pub format: Format,
}

fn default_address() -> Address {
    Address {
        text: "unix:/dev/log".to_owned(),
        target: Target::Unix(PathBuf::from("/dev/log")),
    }
}

/// A checked `address`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Address {
    text: String,
    target: Target,
}

impl TryFrom<String> for Address {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Target::parse(&text).map(|target| Self { text, target })
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn default_app_name() -> String {
    "enforcer".to_owned()
}

/// The facilities an agent may log under (RFC 5424 table 1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Facility {
    User,
    Daemon,
    Auth,
    Authpriv,
    #[default]
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl Facility {
    const fn code(self) -> u8 {
        match self {
            Self::User => 1,
            Self::Daemon => 3,
            Self::Auth => 4,
            Self::Authpriv => 10,
            Self::Local0 => 16,
            Self::Local1 => 17,
            Self::Local2 => 18,
            Self::Local3 => 19,
            Self::Local4 => 20,
            Self::Local5 => 21,
            Self::Local6 => 22,
            Self::Local7 => 23,
        }
    }
}

/// Where messages go.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Unix(PathBuf),
    Udp(String),
    Tcp(String),
}

impl Target {
    fn parse(address: &str) -> Result<Self, String> {
        let (scheme, rest) = address.split_once(':').ok_or_else(|| {
            format!("`{address}` is not unix:PATH, udp:HOST:PORT or tcp:HOST:PORT")
        })?;
        let host_port = |rest: &str| {
            if rest
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
            {
                Ok(rest.to_owned())
            } else {
                Err(format!("`{rest}` in `{address}` is not HOST:PORT"))
            }
        };
        match scheme {
            "unix" if !rest.is_empty() => Ok(Self::Unix(PathBuf::from(rest))),
            "udp" => host_port(rest).map(Self::Udp),
            "tcp" => host_port(rest).map(Self::Tcp),
            _ => Err(format!(
                "`{address}` is not unix:PATH, udp:HOST:PORT or tcp:HOST:PORT"
            )),
        }
    }
}

/// An open connection.
#[derive(Debug)]
enum Connection {
    UnixDatagram(UnixDatagram),
    /// Some daemons listen on a stream socket at `/dev/log`: messages are
    /// then framed as on TCP.
    UnixStream(UnixStream),
    Udp(UdpSocket),
    /// Octet-counted frames (RFC 6587 3.4.1): a JSON message may hold any
    /// byte a newline-framed receiver would split on.
    Tcp(TcpStream),
}

impl Connection {
    fn open(target: &Target) -> io::Result<Self> {
        match target {
            Target::Unix(path) => {
                let socket = UnixDatagram::unbound()?;
                match socket.connect(path) {
                    Ok(()) => Ok(Self::UnixDatagram(socket)),
                    // EPROTOTYPE: the socket is a stream socket.
                    Err(error) if error.raw_os_error() == Some(libc::EPROTOTYPE) => {
                        let stream = UnixStream::connect(path)?;
                        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
                        Ok(Self::UnixStream(stream))
                    }
                    Err(error) => Err(error),
                }
            }
            Target::Udp(address) => {
                let socket = UdpSocket::bind(if address.starts_with('[') {
                    "[::]:0"
                } else {
                    "0.0.0.0:0"
                })?;
                socket.connect(address)?;
                Ok(Self::Udp(socket))
            }
            Target::Tcp(address) => {
                let stream = TcpStream::connect(address)?;
                stream.set_nodelay(true)?;
                // A stalled daemon must not stall every sink.
                stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
                Ok(Self::Tcp(stream))
            }
        }
    }

    const fn is_stream(&self) -> bool {
        matches!(self, Self::UnixStream(_) | Self::Tcp(_))
    }

    /// Sends one message (datagrams) or a batch of frames (streams).
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::UnixDatagram(socket) => socket.send(bytes).map(drop),
            Self::Udp(socket) => socket.send(bytes).map(drop),
            Self::UnixStream(stream) => stream.write_all(bytes),
            Self::Tcp(stream) => stream.write_all(bytes),
        }
    }
}

/// A stalled daemon must not stall every sink.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames buffered for a stream before the batch ends.
const STREAM_BUFFER: usize = 64 * 1024;

/// Frames kept for a daemon that is away; more are dropped (counted as
/// sink errors).
const MAX_PENDING: usize = 4 * 1024 * 1024;

/// How long a failed connection rests before the next try.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Syslog {
    config: SyslogConfig,
    target: Target,
    connection: Option<Connection>,
    /// When the connection last failed.
    failed_at: Option<Instant>,
    pid: u32,
    message: Vec<u8>,
    /// Whether the daemon takes a stream (framed messages, batched): TCP,
    /// and a `/dev/log` found to be a stream socket.
    stream: bool,
    /// Stream transports: frames not yet handed to the kernel; kept until
    /// they are, so a reconnect sends them again.
    pending: Vec<u8>,
}

impl Syslog {
    /// Checks the address and connects; a daemon that is not there yet is
    /// a warning, and the connection is tried again for each record.
    pub fn connect(config: SyslogConfig) -> Result<Self, SinkError> {
        let target = config.address.target.clone();
        let mut sink = Self {
            config,
            target: target.clone(),
            connection: None,
            failed_at: None,
            pid: std::process::id(),
            message: Vec::new(),
            pending: Vec::new(),
            stream: matches!(target, Target::Tcp(_)),
        };
        if let Err(error) = sink.connection() {
            tracing::warn!(%error, "syslog daemon not reachable yet; records are lost until it is");
        }
        Ok(sink)
    }

    fn connection(&mut self) -> Result<&mut Connection, SinkError> {
        if self.connection.is_none() {
            if self
                .failed_at
                .is_some_and(|at| at.elapsed() < RECONNECT_AFTER)
            {
                return Err(self.error(&io::Error::new(
                    io::ErrorKind::NotConnected,
                    "not connected (the last try failed less than a second ago)",
                )));
            }
            match Connection::open(&self.target) {
                Ok(connection) => {
                    if self.failed_at.take().is_some() {
                        tracing::info!(address = %self.config.address, "syslog daemon reachable again");
                    }
                    self.stream = connection.is_stream();
                    self.connection = Some(connection);
                }
                Err(error) => {
                    self.failed_at = Some(Instant::now());
                    return Err(self.error(&error));
                }
            }
        }
        Ok(self.connection.as_mut().expect("connected above"))
    }

    fn error(&self, source: &io::Error) -> SinkError {
        SinkError::Other {
            sink: "syslog",
            message: format!("{}: {source}", self.config.address.text),
        }
    }

    /// Runs `action` on the connection. A failure closes it and `action`
    /// runs once more on a new one: a daemon that restarted is found at the
    /// first record after it.
    fn with_connection(
        &mut self,
        action: impl Fn(&mut Connection, &[u8]) -> io::Result<()>,
    ) -> Result<(), SinkError> {
        let message = std::mem::take(&mut self.message);
        let mut result = Ok(());
        for _ in 0..2 {
            let connection = match self.connection() {
                Ok(connection) => connection,
                // Connecting failed: no second try now.
                Err(error) => {
                    result = Err(error);
                    break;
                }
            };
            match action(connection, &message) {
                Ok(()) => {
                    result = Ok(());
                    break;
                }
                Err(error) => {
                    self.connection = None;
                    result = Err(self.error(&error));
                }
            }
        }
        if result.is_err() {
            self.failed_at.get_or_insert_with(Instant::now);
        }
        self.message = message;
        result
    }
}

/// `PRI` severity (RFC 5424 table 2) and `MSGID` of a record.
fn severity_and_id(record: &Record) -> (u8, &'static str) {
    match record {
        Record::Decision(record) => {
            let severity = match record.enforcer.decision {
                // A decision the kernel could not carry out.
                "kill-failed" => 3,
                "blocked" | "killed" => 4,
                _ => 5,
            };
            (severity, record.enforcer.reason)
        }
        Record::Policy(record) => {
            let severity = if record.enforcer.policy.errors.is_empty() {
                6
            } else {
                3
            };
            (severity, "policy")
        }
        Record::Accounting(record) => {
            // Losses are errors; suppressions alone are notices.
            let severity = if record.event.outcome == "failure" {
                3
            } else {
                5
            };
            (severity, "accounting")
        }
        Record::Control(record) => {
            // A refusal is someone trying what they may not.
            let severity = if record.event.outcome == "failure" {
                4
            } else {
                6
            };
            (severity, "control")
        }
    }
}

/// Writes the RFC 5424 header of `record` into `out`.
fn header(out: &mut Vec<u8>, record: &Record, facility: Facility, app_name: &str, pid: u32) {
    let (severity, msgid) = severity_and_id(record);
    let (timestamp, hostname) = (record.timestamp(), &record.host().hostname);
    // HOSTNAME and APP-NAME are printable US-ASCII without spaces; "-" when
    // there is nothing left.
    let field = |text: &str, max: usize| -> String {
        let clean: String = text
            .chars()
            .filter(char::is_ascii_graphic)
            .take(max)
            .collect();
        if clean.is_empty() {
            "-".to_owned()
        } else {
            clean
        }
    };
    // No STRUCTURED-DATA: an SD-ID of our own needs an IANA enterprise
    // number, and the JSON message carries every field anyway.
    let _ = write!(
        out,
        "<{}>1 {} {} {} {pid} {msgid} - ",
        u16::from(facility.code()) * 8 + u16::from(severity),
        field(timestamp, 64),
        field(hostname, 255),
        field(app_name, 48),
    );
}

impl Sink for Syslog {
    fn write(&mut self, record: &Record) -> Result<(), SinkError> {
        self.message.clear();
        header(
            &mut self.message,
            record,
            self.config.facility,
            &self.config.app_name,
            self.pid,
        );
        self.config
            .format
            .encode(record, &mut self.message)
            .map_err(|source| SinkError::Encode {
                sink: "syslog",
                source,
            })?;
        if !self.stream {
            return self.with_connection(Connection::send);
        }
        let _ = write!(self.pending, "{} ", self.message.len());
        self.pending.extend_from_slice(&self.message);
        if self.pending.len() >= STREAM_BUFFER {
            return self.flush();
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        std::mem::swap(&mut self.message, &mut self.pending);
        let sent = self.with_connection(Connection::send);
        std::mem::swap(&mut self.message, &mut self.pending);
        match sent {
            Ok(()) => self.pending.clear(),
            // Unsent frames wait for the next flush, up to a bound: a daemon
            // that stays away must not grow the agent.
            Err(_) if self.pending.len() > MAX_PENDING => self.pending.clear(),
            Err(_) => {}
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Read as _, net::TcpListener};

    use super::*;
    use crate::audit::sink::tests::{drift_record, scratch_dir};

    fn config(address: &str) -> SyslogConfig {
        SyslogConfig {
            address: Address::try_from(address.to_owned()).unwrap(),
            facility: Facility::Auth,
            app_name: "enf orcer".to_owned(),
            format: Format::Ecs,
        }
    }

    /// The header's fields and the JSON message of one datagram.
    fn split(message: &str) -> (Vec<&str>, serde_json::Value) {
        let fields: Vec<&str> = message.splitn(8, ' ').collect();
        let json = serde_json::from_str(fields[7]).expect("the message is the record");
        (fields[..7].to_vec(), json)
    }

    #[test]
    fn datagrams_carry_an_rfc5424_header_and_the_record() {
        let dir = scratch_dir("syslog-unix");
        let path = dir.join("log");
        let daemon = UnixDatagram::bind(&path).unwrap();
        let mut sink = Syslog::connect(config(&format!("unix:{}", path.display()))).unwrap();
        sink.write(&drift_record("/tmp/dropped")).unwrap();
        sink.flush().unwrap();
        let mut buffer = vec![0; 65536];
        let len = daemon.recv(&mut buffer).unwrap();
        let (header, json) = split(std::str::from_utf8(&buffer[..len]).unwrap());
        // auth (4) * 8 + warning (4): the drift was blocked.
        assert_eq!(header[0], "<36>1");
        assert_eq!(header[1], json["@timestamp"].as_str().unwrap());
        assert_eq!(header[2], "h");
        // The space is not allowed in APP-NAME.
        assert_eq!(header[3], "enforcer");
        assert_eq!(header[4], std::process::id().to_string());
        assert_eq!(header[5..], ["drift", "-"]);
        assert_eq!(json["file"]["path"], "/tmp/dropped");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn tcp_frames_are_octet_counted_and_a_restarted_daemon_is_found_again() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let mut sink = Syslog::connect(config(&format!("tcp:{address}"))).unwrap();
        let (mut first, _) = listener.accept().unwrap();
        sink.write(&drift_record("/a\nb")).unwrap();
        sink.flush().unwrap();
        drop(sink);
        let mut received = String::new();
        first.read_to_string(&mut received).unwrap();
        let (len, rest) = received.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), rest.len());
        let (header, json) = split(rest);
        assert_eq!(header[0], "<36>1");
        assert_eq!(json["file"]["path"], "/a\nb");

        // The daemon closes the connection: the sink reconnects.
        let mut sink = Syslog::connect(config(&format!("tcp:{address}"))).unwrap();
        let (old, _) = listener.accept().unwrap();
        drop(old);
        let mut delivered = false;
        for attempt in 0..20 {
            // Writes into a closed connection succeed until the peer's reset
            // arrives; then the sink reconnects and sends again.
            if sink
                .write(&drift_record(&format!("/retry/{attempt}")))
                .is_ok()
                && sink.flush().is_ok()
            {
                listener.set_nonblocking(true).unwrap();
                if let Ok((mut again, _)) = listener.accept() {
                    drop(sink);
                    again.set_nonblocking(false).unwrap();
                    let mut text = String::new();
                    again.read_to_string(&mut text).unwrap();
                    assert!(text.contains("/retry/"), "{text}");
                    delivered = true;
                    break;
                }
                listener.set_nonblocking(false).unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(delivered, "the sink did not reconnect");
    }

    #[test]
    fn addresses_are_checked() {
        for bad in ["tcp:localhost", "udp::514", "file:/x", "unix:", "x"] {
            assert!(Address::try_from(bad.to_owned()).is_err(), "{bad}");
        }
        assert_eq!(
            Address::try_from("udp:[::1]:514".to_owned())
                .unwrap()
                .target,
            Target::Udp("[::1]:514".to_owned())
        );
    }
}
