//! Batches of records sent (`POST`) to an HTTP endpoint, as a JSON array.
//!
//! `write` only appends the record to an on-disk spool ([`super::spool`]):
//! the pipeline's one writer thread feeds every sink, so a slow or absent
//! receiver must never hold it up. A sender thread of the sink's own reads
//! the spool in order and POSTs batches; records survive receiver outages
//! and agent restarts, up to `spool-max-size`, and what does not fit is
//! counted and warned about, never dropped silently.
//!
//! Delivery is at least once. Every record has a sequence number, kept
//! across restarts; a request carries its first record's number in
//! `X-Enforcer-Sequence` (the others follow it, one by one), so a receiver
//! that remembers the highest number it stored can drop what it already
//! has when a batch is resent (a response lost in a timeout, a crash
//! before the cursor was saved).
//!
//! Answers: 2xx delivered; connection errors, timeouts, 408, 429 and 5xx
//! retried (the same batch, backoff from 200 ms doubling to 30 s); 413
//! (Content Too Large) sends the same records again in batches half as
//! large, down to one record; any other status rejects the batch, which is
//! counted and logged and not sent again: a receiver that refuses the data
//! would otherwise hold back everything behind it for ever.

use std::{
    hash::{BuildHasher as _, RandomState},
    io::Read as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use bytesize::ByteSize;
use http::{HeaderName, HeaderValue, StatusCode, Uri};
use serde::Deserialize;

use super::{
    Sink, SinkError,
    spool::{Append, Batch, Limit, Spool, SpoolReader, SpoolWriter, Wake},
};
use crate::audit::{format::Format, record::Record};

/// The header naming a batch's first sequence number.
pub const SEQUENCE_HEADER: &str = "x-enforcer-sequence";
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Buffered bytes written to the spool before the pipeline's flush.
const BUFFER: usize = 64 * 1024;
/// Of a refusing receiver's answer, what the error log shows.
const ANSWER_SHOWN: u64 = 512;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` (the system's trust store; `HTTPS_PROXY`,
    /// `HTTP_PROXY` and `NO_PROXY` are honoured).
    pub url: String,
    #[serde(default)]
    pub format: Format,
    /// Most records in one request.
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// Largest body of one request: a batch ends before a record that
    /// would take it past this (a record that is larger goes alone).
    /// Receivers and the proxies before them refuse large bodies (nginx's
    /// default `client_max_body_size` is 1 MiB).
    #[serde(default = "default_batch_max_size")]
    pub batch_max_size: ByteSize,
    /// Longest a partial batch waits for more records.
    #[serde(default = "default_batch_wait", with = "humantime_serde")]
    pub batch_wait: Duration,
    /// Limit of one request, connecting to reading the answer.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Where records wait; one webhook sink per directory.
    #[serde(default = "default_spool_dir")]
    pub spool_dir: PathBuf,
    /// Records arriving while the spool holds this much are dropped (counted).
    #[serde(default = "default_spool_max_size")]
    pub spool_max_size: ByteSize,
    /// One extra request header, `Name: value` (e.g. `Authorization: Bearer
    /// TOKEN`); quoted on the command line (`header='Name: value'`).
    #[serde(default)]
    pub header: Option<Header>,
    /// At shutdown, how long the sender goes on delivering what is spooled;
    /// what is left waits in the spool for the next start.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

const fn default_batch() -> u32 {
    500
}

const fn default_batch_max_size() -> ByteSize {
    ByteSize::mib(1)
}

const fn default_batch_wait() -> Duration {
    Duration::from_secs(1)
}

const fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_spool_dir() -> PathBuf {
    PathBuf::from("/var/lib/enforcer/spool/webhook")
}

const fn default_spool_max_size() -> ByteSize {
    ByteSize::mib(256)
}

const fn default_drain_timeout() -> Duration {
    Duration::from_secs(5)
}

/// A request header from the configuration. Its value is usually a secret:
/// `Debug` does not show it, and it is marked sensitive for the client.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Header {
    pub name: HeaderName,
    pub value: HeaderValue,
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Header")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .finish()
    }
}

impl TryFrom<String> for Header {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let Some((name, value)) = text.split_once(':') else {
            return Err("a header is `Name: value`".to_owned());
        };
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("`{}` is not a header name", name.trim()))?;
        // The sink sets these itself; another value would break the request
        // or the receiver's duplicate detection.
        if [
            http::header::CONTENT_TYPE,
            http::header::CONTENT_LENGTH,
            http::header::TRANSFER_ENCODING,
            http::header::HOST,
            HeaderName::from_static(SEQUENCE_HEADER),
        ]
        .contains(&name)
        {
            return Err(format!("the sink sets `{name}` itself"));
        }
        let mut value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("the value of `{name}` is not a valid header value"))?;
        value.set_sensitive(true);
        Ok(Self { name, value })
    }
}

/// Counters of one webhook sink.
#[derive(Debug, Default)]
pub struct WebhookCounters {
    /// Records written to the spool.
    pub spooled: AtomicU64,
    /// Records the receiver accepted (2xx).
    pub sent: AtomicU64,
    /// Failed requests that were retried.
    pub retries: AtomicU64,
    /// Records in batches the receiver refused (4xx other than 408, 429).
    pub rejected: AtomicU64,
    /// Records dropped because the spool was full.
    pub spool_dropped: AtomicU64,
    /// Records lost because the spool could not be written.
    pub spool_failed: AtomicU64,
    /// Partly written records (from a crash) skipped at start.
    pub spool_torn: AtomicU64,
}

/// A snapshot of [`WebhookCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WebhookStats {
    pub spooled: u64,
    pub sent: u64,
    pub retries: u64,
    pub rejected: u64,
    pub spool_dropped: u64,
    pub spool_failed: u64,
    pub spool_torn: u64,
}

impl WebhookStats {
    /// The counters of several webhook sinks, added up.
    pub fn sum(all: impl Iterator<Item = Self>) -> Self {
        all.fold(Self::default(), |sum, one| Self {
            spooled: sum.spooled + one.spooled,
            sent: sum.sent + one.sent,
            retries: sum.retries + one.retries,
            rejected: sum.rejected + one.rejected,
            spool_dropped: sum.spool_dropped + one.spool_dropped,
            spool_failed: sum.spool_failed + one.spool_failed,
            spool_torn: sum.spool_torn + one.spool_torn,
        })
    }

    /// Records that reached the spool but will never reach the receiver.
    pub const fn undelivered(&self) -> u64 {
        self.rejected + self.spool_dropped + self.spool_failed + self.spool_torn
    }

    /// Each counter with its name (`metrics`: `enforcer_webhook_NAME_total`,
    /// `enforcer status`: `webhook.NAME`) and what it counts.
    pub const fn named(&self) -> [(&'static str, &'static str, u64); 7] {
        [
            (
                "spooled",
                "Records written to the webhook's spool.",
                self.spooled,
            ),
            ("sent", "Records the webhook receiver accepted.", self.sent),
            (
                "retries",
                "Webhook requests that failed and were retried.",
                self.retries,
            ),
            (
                "rejected",
                "Records in batches the webhook receiver refused (dropped, counted).",
                self.rejected,
            ),
            (
                "spool_dropped",
                "Records dropped because the webhook's spool was full (lost, counted).",
                self.spool_dropped,
            ),
            (
                "spool_failed",
                "Records lost because the webhook's spool could not be written.",
                self.spool_failed,
            ),
            (
                "spool_torn",
                "Partly written records (from a crash) skipped at start.",
                self.spool_torn,
            ),
        ]
    }
}

impl WebhookCounters {
    pub fn snapshot(&self) -> WebhookStats {
        WebhookStats {
            spooled: self.spooled.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            spool_dropped: self.spool_dropped.load(Ordering::Relaxed),
            spool_failed: self.spool_failed.load(Ordering::Relaxed),
            spool_torn: self.spool_torn.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug)]
pub struct Webhook {
    format: Format,
    writer: SpoolWriter,
    spool: Arc<Spool>,
    counters: Arc<WebhookCounters>,
    drain_timeout: Duration,
    /// One encoded record, reused.
    line: Vec<u8>,
    /// Records dropped since the spool became full, while it is.
    dropping: Option<u64>,
    sender: Option<thread::JoinHandle<()>>,
}

fn error(message: impl std::fmt::Display) -> SinkError {
    SinkError::Other {
        sink: "webhook",
        message: message.to_string(),
    }
}

impl Webhook {
    /// Checks the options, opens the spool (replaying what it holds from
    /// before) and starts the sender.
    pub fn start(config: WebhookConfig) -> Result<Self, SinkError> {
        let url: Uri = config
            .url
            .parse()
            .map_err(|e| error(format!("url `{}`: {e}", config.url)))?;
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
            return Err(error(format!(
                "url `{}`: must be http://HOST/... or https://HOST/...",
                config.url
            )));
        }
        if config.batch == 0 {
            return Err(error("batch: must be at least 1"));
        }
        // Room for `[`, one small record and `]`.
        let batch_bytes = usize::try_from(config.batch_max_size.as_u64()).unwrap_or(usize::MAX);
        if batch_bytes < 1024 {
            return Err(error("batch-max-size: must be at least 1KiB"));
        }
        if config.timeout.is_zero() {
            return Err(error("timeout: must be more than 0"));
        }
        let (spool, writer, recovered) =
            Spool::open(&config.spool_dir, config.spool_max_size.as_u64())
                .map_err(|source| SinkError::Spool { source })?;
        let counters = Arc::new(WebhookCounters::default());
        counters.spool_torn.store(recovered.torn, Ordering::Relaxed);
        // Credentials in the URL (user info, a token in the path or query)
        // stay out of the log.
        let target = format!(
            "{}://{}",
            url.scheme_str().unwrap_or_default(),
            url.authority().map_or("", |authority| authority
                .as_str()
                .rsplit('@')
                .next()
                .unwrap_or_default())
        );
        if recovered.records > 0 {
            tracing::info!(
                records = recovered.records,
                from = recovered.cursor,
                spool = %config.spool_dir.display(),
                "webhook spool holds records from before; sending them first"
            );
        }
        let sender = Sender {
            reader: SpoolReader::new(Arc::clone(&spool)),
            spool: Arc::clone(&spool),
            client: client(config.timeout),
            url,
            target,
            header: config.header,
            limit: Limit {
                records: u64::from(config.batch),
                bytes: batch_bytes,
            },
            batch_wait: config.batch_wait,
            timeout: config.timeout,
            counters: Arc::clone(&counters),
            cursor: recovered.cursor,
            failing: None,
            backoff: FIRST_BACKOFF,
            spool_failing: false,
        };
        let sender = thread::Builder::new()
            .name("audit-webhook".to_owned())
            .spawn(move || sender.run())
            .map_err(|source| SinkError::Io {
                sink: "webhook",
                source,
            })?;
        Ok(Self {
            format: config.format,
            writer,
            spool,
            counters,
            drain_timeout: config.drain_timeout,
            line: Vec::new(),
            dropping: None,
            sender: Some(sender),
        })
    }

    /// The sink's counters, live.
    pub fn stats(&self) -> Arc<WebhookCounters> {
        Arc::clone(&self.counters)
    }

    fn commit(&mut self) -> Result<(), SinkError> {
        match self.writer.commit() {
            Ok(records) => {
                self.counters.spooled.fetch_add(records, Ordering::Relaxed);
                Ok(())
            }
            Err((spool, lost)) => {
                self.counters
                    .spool_failed
                    .fetch_add(lost, Ordering::Relaxed);
                Err(SinkError::SpoolLost {
                    lost,
                    source: spool,
                })
            }
        }
    }
}

impl Sink for Webhook {
    fn write(&mut self, record: &Record) -> Result<(), SinkError> {
        self.line.clear();
        self.format
            .encode(record, &mut self.line)
            .map_err(|source| SinkError::Encode {
                sink: "webhook",
                source,
            })?;
        self.line.push(b'\n');
        match self.writer.append(&self.line) {
            Append::Full => {
                self.counters.spool_dropped.fetch_add(1, Ordering::Relaxed);
                let dropped = self.dropping.get_or_insert_with(|| {
                    tracing::warn!(
                        spool = %self.spool.dir().display(),
                        "webhook spool is full (spool-max-size): new records are dropped until the receiver takes some"
                    );
                    0
                });
                *dropped += 1;
                // Counted and warned about: an error per record would flood
                // the log with what the warning said.
                return Ok(());
            }
            Append::Buffered => {
                if let Some(dropped) = self.dropping.take() {
                    tracing::info!(
                        dropped,
                        "webhook spool has room again; records were dropped while it was full"
                    );
                }
            }
        }
        if self.writer.pending_bytes() >= BUFFER {
            self.commit()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.commit()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        if let Err(error) = self.commit() {
            tracing::error!(%error, "webhook sink: the last records could not be spooled");
        }
        self.spool.drain_until(Instant::now() + self.drain_timeout);
        if let Some(sender) = self.sender.take()
            && sender.join().is_err()
        {
            tracing::error!("webhook sender thread panicked");
        }
    }
}

fn client(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        // Statuses are answers to act on, not errors.
        .http_status_as_error(false)
        // A redirected POST would be resent as a GET, or not at all.
        .max_redirects(0)
        .user_agent(concat!("enforcer/", env!("CARGO_PKG_VERSION")))
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                .build(),
        )
        .build()
        .into()
}

/// What became of one request.
#[derive(Debug)]
enum Outcome {
    Delivered,
    /// HTTP 413 for a batch of more than one record: to be sent again in
    /// smaller batches.
    TooLarge,
    /// Not to be sent again.
    Rejected {
        status: StatusCode,
        answer: String,
    },
    /// To be sent again, after `after` if the receiver said so.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
}

/// A run of failed requests.
#[derive(Debug)]
struct Streak {
    since: Instant,
    attempts: u64,
}

/// The sender thread.
struct Sender {
    spool: Arc<Spool>,
    reader: SpoolReader,
    client: ureq::Agent,
    url: Uri,
    /// `scheme://host:port`, for the log.
    target: String,
    header: Option<Header>,
    /// The most one request holds; fewer records after the receiver
    /// answered 413 (Content Too Large).
    limit: Limit,
    batch_wait: Duration,
    timeout: Duration,
    counters: Arc<WebhookCounters>,
    /// The first record not yet delivered (or rejected).
    cursor: u64,
    /// The current run of failed requests, if any.
    failing: Option<Streak>,
    /// The wait before the next retry.
    backoff: Duration,
    /// Spool trouble (reading a segment, saving the cursor) was logged and
    /// has not gone away since: one error a streak.
    spool_failing: bool,
}

impl Sender {
    fn run(mut self) {
        let mut batch = Batch::default();
        let mut ready_since = None;
        loop {
            if self.spool.wait_ready(
                self.cursor,
                self.limit.records,
                self.batch_wait,
                &mut ready_since,
            ) == Wake::Stop
            {
                break;
            }
            if let Err(error) = self.reader.read(self.cursor, self.limit, &mut batch) {
                if !std::mem::replace(&mut self.spool_failing, true) {
                    tracing::error!(%error, "webhook sink cannot read its spool; retrying");
                }
                if !self.pause() {
                    break;
                }
                continue;
            }
            if batch.records == 0 {
                // The index counts records no segment has (deleted by
                // hand): move on rather than spin.
                self.cursor = self.cursor.max(batch.first);
                if !self.pause() {
                    break;
                }
                continue;
            }
            let Some(outcome) = self.deliver(&batch) else {
                break;
            };
            if let Outcome::TooLarge = outcome {
                // The same records again, in smaller requests: a body limit
                // does not change from one request to the next, so the
                // smaller batch stays.
                self.limit.records = (batch.records / 2).max(1);
                tracing::warn!(
                    url = %self.target,
                    records = batch.records,
                    bytes = batch.body.len(),
                    now = self.limit.records,
                    "webhook receiver refused a batch as too large (HTTP 413); sending fewer records per request (see the sink's batch and batch-max-size)"
                );
                continue;
            }
            self.settle(&batch, outcome);
        }
        let left = self.spool.waiting(self.cursor);
        if left > 0 {
            tracing::info!(
                records = left,
                spool = %self.spool.dir().display(),
                "webhook sink stopped; undelivered records stay in the spool for the next start"
            );
        }
    }

    /// Sends `batch` until the receiver takes or refuses it; `None` when
    /// the sink is gone and its drain time is over first.
    fn deliver(&mut self, batch: &Batch) -> Option<Outcome> {
        loop {
            let timeout = self.request_timeout()?;
            let (reason, after) = match self.post(batch, timeout) {
                Outcome::Retry { reason, after } => (reason, after),
                done => return Some(done),
            };
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            let streak = self.failing.get_or_insert_with(|| {
                tracing::warn!(
                    url = %self.target,
                    error = reason,
                    waiting = self.spool.waiting(batch.first),
                    "webhook delivery failing; records wait in the spool and are retried"
                );
                Streak {
                    since: Instant::now(),
                    attempts: 0,
                }
            });
            streak.attempts += 1;
            if let Some(after) = after {
                self.backoff = self.backoff.max(after.min(MAX_BACKOFF));
            }
            if !self.pause() {
                return None;
            }
        }
    }

    /// Moves the cursor past `batch`, delivered or refused.
    fn settle(&mut self, batch: &Batch, outcome: Outcome) {
        self.cursor = batch.end();
        match self.spool.acknowledge(self.cursor) {
            Ok(()) => self.spool_failing = false,
            Err(error) => {
                // The cursor moves on in memory; after a restart the batch
                // may be sent again, which its number tells.
                if !std::mem::replace(&mut self.spool_failing, true) {
                    tracing::error!(%error, "webhook sink cannot update its spool");
                }
            }
        }
        // Counted once the spool has let go of the batch.
        if let Outcome::Rejected { status, answer } = outcome {
            self.counters
                .rejected
                .fetch_add(batch.records, Ordering::Relaxed);
            tracing::error!(
                url = %self.target,
                %status,
                answer,
                records = batch.records,
                sequence = batch.first,
                "webhook receiver refused a batch; it is dropped"
            );
            return;
        }
        self.counters
            .sent
            .fetch_add(batch.records, Ordering::Relaxed);
        if let Some(streak) = self.failing.take() {
            tracing::info!(
                url = %self.target,
                waited = self.spool.waiting(batch.first),
                failed_attempts = streak.attempts,
                outage = ?streak.since.elapsed(),
                "webhook delivery resumed"
            );
        }
        self.backoff = FIRST_BACKOFF;
    }

    /// Waits out the backoff (with jitter, so that the agents of many nodes
    /// do not retry in step after an outage) and doubles it; false when the
    /// sink is gone and its drain time is over.
    fn pause(&mut self) -> bool {
        let millis = self.backoff.as_millis() as u64;
        let jitter = RandomState::new().hash_one(Instant::now()) % (millis / 4 + 1);
        self.spool.pause(Duration::from_millis(millis - jitter));
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.spool
            .deadline()
            .is_none_or(|deadline| Instant::now() < deadline)
    }

    /// The limit of the next request: the timeout, or what is left of the
    /// drain time; `None` when that is over.
    fn request_timeout(&self) -> Option<Duration> {
        match self.spool.deadline() {
            None => Some(self.timeout),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                (!left.is_zero()).then(|| left.min(self.timeout))
            }
        }
    }

    fn post(&self, batch: &Batch, timeout: Duration) -> Outcome {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(SEQUENCE_HEADER, batch.first.to_string());
        if let Some(header) = &self.header {
            request = request.header(header.name.clone(), header.value.clone());
        }
        let sent = request
            .config()
            .timeout_global(Some(timeout))
            .build()
            .send(&batch.body[..]);
        let mut response = match sent {
            Ok(response) => response,
            Err(error) => {
                return Outcome::Retry {
                    reason: error.to_string(),
                    after: None,
                };
            }
        };
        let status = response.status();
        if status.is_success() {
            return Outcome::Delivered;
        }
        if status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
        {
            // Seconds only; an HTTP date is rare from an API and the
            // backoff covers it.
            let after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse().ok())
                .map(Duration::from_secs);
            return Outcome::Retry {
                reason: format!("HTTP {status}"),
                after,
            };
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE && batch.records > 1 {
            return Outcome::TooLarge;
        }
        let mut answer = Vec::new();
        // What the receiver said about it, for the log; a read error leaves
        // less of it.
        let _ = response
            .body_mut()
            .as_reader()
            .take(ANSWER_SHOWN)
            .read_to_end(&mut answer);
        Outcome::Rejected {
            status,
            answer: String::from_utf8_lossy(&answer).into_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        fs,
        io::{BufRead as _, BufReader, Write as _},
        net::{SocketAddr, TcpListener, TcpStream},
        path::Path,
        sync::Mutex,
    };

    use super::*;
    use crate::audit::sink::{
        spec::{self, SinkSpec},
        tests::{drift_record, scratch_dir},
    };

    /// One request as the receiver saw it.
    #[derive(Debug, Clone)]
    struct Request {
        status: u16,
        sequence: u64,
        content_type: String,
        paths: Vec<String>,
    }

    #[derive(Debug, Default)]
    struct Received {
        /// Answers for the next requests, then `default`.
        answers: VecDeque<u16>,
        default: u16,
        /// Bodies longer than this are answered 413.
        max_body: Option<usize>,
        requests: Vec<Request>,
        /// The length of each request's body.
        bodies: Vec<usize>,
    }

    /// An HTTP/1.1 receiver on a thread: one request per connection, the
    /// body a JSON array of records.
    struct Receiver {
        address: SocketAddr,
        received: Arc<Mutex<Received>>,
    }

    impl Receiver {
        fn start() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap();
            let received = Arc::new(Mutex::new(Received {
                default: 200,
                ..Received::default()
            }));
            let state = Arc::clone(&received);
            // Lives as long as the test process.
            thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    answer(&stream, &state);
                }
            });
            Self { address, received }
        }

        fn url(&self) -> String {
            format!("http://{}/ingest", self.address)
        }

        fn set_default(&self, status: u16) {
            self.received.lock().unwrap().default = status;
        }

        fn refuse_bodies_over(&self, bytes: usize) {
            self.received.lock().unwrap().max_body = Some(bytes);
        }

        fn body_lengths(&self) -> Vec<usize> {
            self.received.lock().unwrap().bodies.clone()
        }

        fn answer_next(&self, statuses: &[u16]) {
            self.received.lock().unwrap().answers.extend(statuses);
        }

        fn requests(&self) -> Vec<Request> {
            self.received.lock().unwrap().requests.clone()
        }

        /// The accepted requests: (sequence, paths).
        fn delivered(&self) -> Vec<(u64, Vec<String>)> {
            self.requests()
                .into_iter()
                .filter(|request| request.status == 200)
                .map(|request| (request.sequence, request.paths))
                .collect()
        }

        fn delivered_paths(&self) -> Vec<String> {
            self.delivered()
                .into_iter()
                .flat_map(|(_, paths)| paths)
                .collect()
        }
    }

    fn answer(mut stream: &TcpStream, state: &Mutex<Received>) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            headers.push(line.trim_end().to_owned());
        }
        let header = |name: &str| {
            headers
                .iter()
                .find_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    key.eq_ignore_ascii_case(name)
                        .then(|| value.trim().to_owned())
                })
                .unwrap_or_default()
        };
        let mut body = vec![0; header("content-length").parse().unwrap()];
        std::io::Read::read_exact(&mut reader, &mut body).unwrap();
        let records: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        let mut received = state.lock().unwrap();
        let status = if received.max_body.is_some_and(|max| body.len() > max) {
            413
        } else {
            received.answers.pop_front().unwrap_or(received.default)
        };
        received.bodies.push(body.len());
        received.requests.push(Request {
            status,
            sequence: header(SEQUENCE_HEADER).parse().unwrap(),
            content_type: header("content-type"),
            paths: records
                .iter()
                .map(|record| record["file"]["path"].as_str().unwrap().to_owned())
                .collect(),
        });
        drop(received);
        let _ = write!(
            stream,
            "HTTP/1.1 {status} X\r\nContent-Length: 3\r\nConnection: close\r\n\r\nno!"
        );
    }

    /// An address nothing listens on: connections are refused.
    fn nobody() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/", listener.local_addr().unwrap())
    }

    fn config(url: &str, dir: &Path) -> WebhookConfig {
        WebhookConfig {
            url: url.to_owned(),
            format: Format::Ecs,
            batch: default_batch(),
            batch_max_size: default_batch_max_size(),
            batch_wait: Duration::from_millis(50),
            timeout: Duration::from_secs(5),
            spool_dir: dir.to_owned(),
            spool_max_size: default_spool_max_size(),
            header: None,
            drain_timeout: Duration::from_millis(300),
        }
    }

    fn write_paths(sink: &mut Webhook, paths: impl IntoIterator<Item = String>) {
        for path in paths {
            sink.write(&drift_record(&path)).unwrap();
        }
        sink.flush().unwrap();
    }

    fn paths(range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|n| format!("/r/{n}")).collect()
    }

    /// Each batch's sequence number is the count of records before it.
    fn assert_numbered(delivered: &[(u64, Vec<String>)]) {
        let mut next = 0;
        for (sequence, paths) in delivered {
            assert_eq!(*sequence, next, "{delivered:?}");
            next += paths.len() as u64;
        }
    }

    fn wait_until(what: &str, condition: impl Fn() -> bool) {
        let started = Instant::now();
        while !condition() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "timed out waiting until {what}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut found: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "jsonl"))
            .collect();
        found.sort();
        found
    }

    #[test]
    fn options_parse_from_the_command_line_with_defaults() {
        let SinkSpec::Webhook(config) =
            spec::parse("webhook:https://siem.example:8443/in?t=1,batch=10,batch-wait=200ms")
                .unwrap()
        else {
            panic!("not a webhook");
        };
        assert_eq!(config.url, "https://siem.example:8443/in?t=1");
        assert_eq!(config.batch, 10);
        assert_eq!(config.batch_wait, Duration::from_millis(200));
        assert_eq!(config.timeout, Duration::from_secs(10));
        assert_eq!(
            config.spool_dir,
            Path::new("/var/lib/enforcer/spool/webhook")
        );
        assert_eq!(config.spool_max_size, ByteSize::mib(256));
        assert_eq!(config.batch_max_size, ByteSize::mib(1));
        assert_eq!(config.drain_timeout, Duration::from_secs(5));
        assert_eq!(config.header, None);

        let SinkSpec::Webhook(config) = spec::parse(
            "webhook:http://h/,spool-dir=/s,spool-max-size=1MiB,batch-max-size=512KiB,timeout=2s,header='Authorization: Bearer s3cret'",
        )
        .unwrap() else {
            panic!("not a webhook");
        };
        assert_eq!(config.spool_max_size, ByteSize::mib(1));
        assert_eq!(config.batch_max_size, ByteSize::kib(512));
        let header = config.header.unwrap();
        assert_eq!(header.name, "authorization");
        assert_eq!(header.value, "Bearer s3cret");
        assert!(!format!("{header:?}").contains("s3cret"));

        for (spec, says) in [
            (
                "webhook:http://h/,header='Content-Type: x'",
                "sets `content-type` itself",
            ),
            ("webhook:http://h/,header=nocolon", "header"),
            ("webhook:http://h/,batch=-1", "batch"),
            ("webhook:http://h/,retries=3", "retries"),
        ] {
            let error = spec::parse(spec).unwrap_err();
            assert!(error.contains(says), "{spec}: {error}");
        }
    }

    #[test]
    fn bad_urls_and_values_are_refused_at_start() {
        let dir = scratch_dir("webhook-bad");
        for (url, batch, says) in [
            ("ftp://h/", 1, "must be http"),
            ("/just/a/path", 1, "must be http"),
            ("http://h/", 0, "batch"),
        ] {
            let mut config = config(url, &dir);
            config.batch = batch;
            let error = Webhook::start(config).unwrap_err().to_string();
            assert!(error.contains(says), "{url}: {error}");
        }
        let mut config = config("http://h/", &dir);
        config.batch_max_size = ByteSize::b(100);
        let error = Webhook::start(config).unwrap_err().to_string();
        assert!(error.contains("batch-max-size"), "{error}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn batches_arrive_in_order_with_their_sequence_numbers() {
        let receiver = Receiver::start();
        let dir = scratch_dir("webhook-batches");
        let mut config = config(&receiver.url(), &dir);
        config.batch = 3;
        let mut sink = Webhook::start(config).unwrap();
        write_paths(&mut sink, paths(0..7));
        wait_until("7 sent", || sink.stats().snapshot().sent == 7);
        let delivered = receiver.delivered();
        let sizes: Vec<_> = delivered
            .iter()
            .map(|(sequence, paths)| (*sequence, paths.len()))
            .collect();
        assert_eq!(sizes, [(0, 3), (3, 3), (6, 1)]);
        assert_eq!(receiver.delivered_paths(), paths(0..7));
        assert!(
            receiver
                .requests()
                .iter()
                .all(|request| request.content_type == "application/json")
        );
        // More records, a later batch: the numbers go on.
        write_paths(&mut sink, paths(7..9));
        wait_until("9 sent", || sink.stats().snapshot().sent == 9);
        assert_eq!(receiver.delivered().last().unwrap().0, 7);
        let stats = sink.stats().snapshot();
        assert_eq!((stats.spooled, stats.sent, stats.retries), (9, 9, 0));
        drop(sink);
        // Delivered segments are gone; the cursor says where to go on.
        assert!(segments(&dir).len() <= 1, "{:?}", segments(&dir));
        assert_eq!(fs::read_to_string(dir.join("cursor")).unwrap(), "9\n");
        fs::remove_dir_all(dir).unwrap();
    }

    /// The length of one record's line in the spool (without its newline).
    fn record_length(path: &str) -> usize {
        let mut line = Vec::new();
        Format::Ecs.encode(&drift_record(path), &mut line).unwrap();
        line.len()
    }

    #[test]
    fn batches_end_before_the_size_limit() {
        let one = record_length("/r/0");
        // (limit, records): two and a half records hold two; one and a half
        // one, and a longer record goes alone.
        let long = format!("/{}long", "dir/".repeat(one / 8 + 12));
        for (limit, written, sizes) in [
            (one * 5 / 2, paths(0..5), vec![2, 2, 1]),
            (
                one * 3 / 2,
                vec!["/r/0".to_owned(), long.clone(), "/r/1".to_owned()],
                vec![1, 1, 1],
            ),
        ] {
            let receiver = Receiver::start();
            let dir = scratch_dir("webhook-batch-bytes");
            let mut config = config(&receiver.url(), &dir);
            config.batch_max_size = ByteSize::b(limit.max(1024) as u64);
            assert!(limit >= 1024, "records are longer than the test thinks");
            let mut sink = Webhook::start(config).unwrap();
            write_paths(&mut sink, written.clone());
            let count = written.len() as u64;
            wait_until("all sent", || sink.stats().snapshot().sent == count);
            let delivered = receiver.delivered();
            let got: Vec<_> = delivered.iter().map(|(_, paths)| paths.len()).collect();
            assert_eq!(got, sizes, "{delivered:?}");
            assert_numbered(&delivered);
            assert_eq!(receiver.delivered_paths(), written);
            for (body, (_, paths)) in receiver.body_lengths().iter().zip(&delivered) {
                assert!(
                    *body <= limit || paths == std::slice::from_ref(&long),
                    "{body} > {limit}"
                );
            }
            if written.contains(&long) {
                assert!(receiver.body_lengths()[1] > limit);
            }
            drop(sink);
            fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn a_receiver_that_refuses_large_bodies_gets_smaller_batches() {
        let receiver = Receiver::start();
        let dir = scratch_dir("webhook-413");
        let one = record_length("/r/0");
        // Three records fit, four do not.
        receiver.refuse_bodies_over(one * 7 / 2);
        let mut config = config(&receiver.url(), &dir);
        config.batch = 8;
        // Only once all are spooled: one batch of eight first.
        config.batch_wait = Duration::from_mins(1);
        let mut sink = Webhook::start(config).unwrap();
        write_paths(&mut sink, paths(0..8));
        wait_until("8 sent", || sink.stats().snapshot().sent == 8);
        let statuses: Vec<_> = receiver
            .requests()
            .iter()
            .map(|r| (r.status, r.paths.len()))
            .collect();
        // 8 and 4 refused; then two at a time.
        assert_eq!(
            statuses,
            [(413, 8), (413, 4), (200, 2), (200, 2), (200, 2), (200, 2)]
        );
        assert_eq!(receiver.delivered_paths(), paths(0..8));
        assert_numbered(&receiver.delivered());
        // A single record the receiver refuses is dropped and counted (sent
        // by the drain at the sink's end: a batch of one waits for more).
        receiver.refuse_bodies_over(one / 2);
        write_paths(&mut sink, paths(8..9));
        let counters = sink.stats();
        drop(sink);
        let stats = counters.snapshot();
        assert_eq!((stats.sent, stats.rejected, stats.retries), (8, 1, 0));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failing_receiver_gets_the_same_batch_again() {
        let receiver = Receiver::start();
        receiver.answer_next(&[503, 429, 500]);
        let dir = scratch_dir("webhook-retry");
        let mut sink = Webhook::start(config(&receiver.url(), &dir)).unwrap();
        write_paths(&mut sink, paths(0..2));
        wait_until("2 sent", || sink.stats().snapshot().sent == 2);
        let requests = receiver.requests();
        assert_eq!(
            requests.iter().map(|r| r.status).collect::<Vec<_>>(),
            [503, 429, 500, 200]
        );
        assert!(
            requests
                .iter()
                .all(|r| r.sequence == 0 && r.paths == paths(0..2)),
            "{requests:?}"
        );
        let stats = sink.stats().snapshot();
        assert_eq!((stats.sent, stats.retries, stats.rejected), (2, 3, 0));
        drop(sink);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_refused_batch_is_counted_and_skipped() {
        let receiver = Receiver::start();
        receiver.answer_next(&[400]);
        let dir = scratch_dir("webhook-rejected");
        let mut config = config(&receiver.url(), &dir);
        config.batch = 2;
        let mut sink = Webhook::start(config).unwrap();
        write_paths(&mut sink, paths(0..3));
        wait_until("the rest sent", || sink.stats().snapshot().sent == 1);
        let requests = receiver.requests();
        assert_eq!(requests.len(), 2, "{requests:?}");
        assert_eq!((requests[0].status, requests[0].sequence), (400, 0));
        assert_eq!(receiver.delivered(), [(2, vec!["/r/2".to_owned()])]);
        let stats = sink.stats().snapshot();
        assert_eq!((stats.sent, stats.rejected, stats.retries), (1, 2, 0));
        drop(sink);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_full_spool_drops_and_counts_new_records() {
        let receiver = Receiver::start();
        receiver.set_default(503);
        let dir = scratch_dir("webhook-full");
        // A spooled record: its line and the newline.
        let one = record_length("/r/0") as u64 + 1;
        let mut config = config(&receiver.url(), &dir);
        // Room for three records.
        config.spool_max_size = ByteSize::b(one * 3 + one / 2);
        let mut sink = Webhook::start(config).unwrap();
        for path in paths(0..10) {
            write_paths(&mut sink, [path]);
        }
        let stats = sink.stats().snapshot();
        assert_eq!((stats.spooled, stats.spool_dropped), (3, 7));
        // The receiver is back: what was spooled arrives, and there is room
        // again.
        receiver.set_default(200);
        wait_until("3 sent", || sink.stats().snapshot().sent == 3);
        assert_eq!(receiver.delivered_paths(), paths(0..3));
        write_paths(&mut sink, ["/r/10".to_owned()]);
        wait_until("4 delivered", || receiver.delivered_paths().len() == 4);
        assert_eq!(
            receiver.delivered().last().unwrap(),
            &(3, vec!["/r/10".to_owned()])
        );
        assert_eq!(sink.stats().snapshot().spool_dropped, 7);
        drop(sink);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn what_was_not_delivered_is_sent_after_a_restart_once() {
        let receiver = Receiver::start();
        let dir = scratch_dir("webhook-restart");
        let mut sink = Webhook::start(config(&receiver.url(), &dir)).unwrap();
        write_paths(&mut sink, paths(0..3));
        wait_until("3 delivered", || receiver.delivered_paths().len() == 3);
        // The receiver is down while more records come and the agent stops.
        receiver.set_default(503);
        write_paths(&mut sink, paths(3..7));
        wait_until("a failed attempt", || {
            receiver.requests().iter().any(|r| r.status == 503)
        });
        drop(sink);
        assert_eq!(receiver.delivered_paths(), paths(0..3));

        receiver.set_default(200);
        let mut sink = Webhook::start(config(&receiver.url(), &dir)).unwrap();
        write_paths(&mut sink, paths(7..8));
        wait_until("8 delivered", || receiver.delivered_paths().len() >= 8);
        drop(sink);
        assert_eq!(receiver.delivered_paths(), paths(0..8));
        assert_numbered(&receiver.delivered());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn stopping_delivers_what_is_spooled() {
        let receiver = Receiver::start();
        let dir = scratch_dir("webhook-drain");
        let mut config = config(&receiver.url(), &dir);
        // Only the drain sends these.
        config.batch_wait = Duration::from_mins(1);
        let mut sink = Webhook::start(config).unwrap();
        for path in paths(0..3) {
            sink.write(&drift_record(&path)).unwrap();
        }
        drop(sink);
        assert_eq!(receiver.delivered_paths(), paths(0..3));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_counted() {
        let dir = scratch_dir("webhook-torn");
        let mut sink = Webhook::start(config(&nobody(), &dir)).unwrap();
        write_paths(&mut sink, paths(0..3));
        drop(sink);
        // A crash in the middle of a write.
        let last = segments(&dir).pop().unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(&last)
            .unwrap()
            .write_all(br#"{"file":{"path":"/torn"#)
            .unwrap();

        let receiver = Receiver::start();
        let mut sink = Webhook::start(config(&receiver.url(), &dir)).unwrap();
        assert_eq!(sink.stats().snapshot().spool_torn, 1);
        write_paths(&mut sink, paths(3..4));
        wait_until("4 delivered", || receiver.delivered_paths().len() >= 4);
        drop(sink);
        assert_eq!(receiver.delivered_paths(), paths(0..4));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn one_spool_directory_serves_one_sink() {
        let dir = scratch_dir("webhook-locked");
        let sink = Webhook::start(config(&nobody(), &dir)).unwrap();
        let error = Webhook::start(config(&nobody(), &dir))
            .unwrap_err()
            .to_string();
        assert!(error.contains("in use"), "{error}");
        drop(sink);
        // Free again once the first is gone.
        drop(Webhook::start(config(&nobody(), &dir)).unwrap());
        fs::remove_dir_all(dir).unwrap();
    }
}
