//! The webhook sink's on-disk queue: records wait here, in order, until the
//! receiver has them, across receiver outages and agent restarts.
//!
//! Layout of the spool directory:
//! - `SEQ.jsonl` segments, append-only, one encoded record per line, named
//!   by the sequence number of their first record (20 digits, so that names
//!   sort as numbers). Record `n` of segment `SEQ` has number `SEQ + n`.
//! - `cursor`: the number of the first record not yet delivered; replaced
//!   atomically (temp file + rename) after each delivered batch.
//! - `lock`: held (`flock`) while a sink uses the directory; two writers
//!   would interleave lines and reuse sequence numbers.
//!
//! One writer (the pipeline's thread) appends; one reader (the sender
//! thread) reads from the cursor on. They share only [`Index`], an
//! in-memory list of segments with the number of *complete* lines each
//! holds: the writer bumps it after a `write` has returned, so the reader
//! never reads a line that is still being written, and never needs to look
//! at the directory again.

use std::{
    collections::VecDeque,
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

const SEGMENT_SUFFIX: &str = ".jsonl";
const CURSOR: &str = "cursor";
const CURSOR_TEMP: &str = "cursor.tmp";
const LOCK: &str = "lock";
/// Segments roll over at this size at most (smaller for a small spool, so
/// that delivered records free space while the spool is nearly full).
const MAX_SEGMENT: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{doing} {}: {source}", path.display())]
    Io {
        doing: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "spool directory {} is in use by another webhook sink or agent (give each webhook sink a spool-dir of its own)",
        path.display()
    )]
    InUse { path: PathBuf },
}

fn context(doing: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SpoolError {
    let path = path.to_owned();
    move |source| SpoolError::Io {
        doing,
        path,
        source,
    }
}

/// A segment's place in the sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    first: u64,
    /// Complete lines in the file.
    records: u64,
    /// Bytes of those lines.
    bytes: u64,
}

impl Segment {
    const fn end(&self) -> u64 {
        self.first + self.records
    }
}

#[derive(Debug, Default)]
struct Index {
    segments: VecDeque<Segment>,
    /// The segment the writer appends to; never deleted under it.
    active: Option<u64>,
    /// Set when the sink is dropped: deliver until then, then stop.
    drain_until: Option<Instant>,
}

impl Index {
    fn end(&self) -> u64 {
        self.segments.back().map_or(0, Segment::end)
    }
}

/// What the writer and the reader share.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    index: Mutex<Index>,
    /// Signalled when records are committed and when draining starts.
    changed: Condvar,
    /// Bytes in the segments on disk (committed lines only).
    bytes: AtomicU64,
    /// Held for the life of the spool; the lock goes with the descriptor.
    _lock: File,
}

/// What [`Spool::open`] found from before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// The first record not yet delivered.
    pub cursor: u64,
    /// Records waiting from before (not yet delivered).
    pub records: u64,
    /// Partly written last lines (a crash mid-write) cut off.
    pub torn: u64,
}

/// Why the sender woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Send what is there.
    Send,
    /// The sink is gone and the drain time is over (or nothing is left).
    Stop,
}

impl Spool {
    /// Opens (creating) the spool in `dir`: takes its lock, cuts torn last
    /// lines, deletes delivered segments, and reads the cursor.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
    ) -> Result<(Arc<Self>, SpoolWriter, Recovered), SpoolError> {
        // Audit records name users' files and processes.
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(context("creating", dir))?;
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(context("opening", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::InUse {
                    path: dir.to_owned(),
                });
            }
            Err(fs::TryLockError::Error(source)) => {
                return Err(context("locking", &lock_path)(source));
            }
        }
        // A temp cursor is what a crash between write and rename leaves.
        let _ = fs::remove_file(dir.join(CURSOR_TEMP));
        let cursor = read_cursor(dir);

        let mut torn = 0;
        let mut segments = VecDeque::new();
        for first in segment_names(dir)? {
            let path = segment_path(dir, first);
            let (records, bytes, cut) = scan(&path)?;
            torn += u64::from(cut);
            if records == 0 {
                fs::remove_file(&path).map_err(context("removing empty segment", &path))?;
                continue;
            }
            if let Some(previous) = segments.back().map(Segment::end)
                && previous > first
            {
                tracing::warn!(
                    spool = %dir.display(),
                    segment = first,
                    previous_end = previous,
                    "webhook spool segments overlap; some sequence numbers are sent twice"
                );
            }
            segments.push_back(Segment {
                first,
                records,
                bytes,
            });
        }
        // No cursor (first start, or unreadable): everything there is sent;
        // a receiver drops what it has by sequence number.
        let cursor = cursor.unwrap_or_else(|| segments.front().map_or(0, |s| s.first));
        while let Some(segment) = segments.front().copied()
            && segment.end() <= cursor
        {
            // Delivered before a crash between the cursor and the delete.
            let path = segment_path(dir, segment.first);
            fs::remove_file(&path).map_err(context("removing delivered segment", &path))?;
            segments.pop_front();
        }
        let end = segments.back().map_or(cursor, Segment::end).max(cursor);
        let records = segments
            .iter()
            .map(|s| s.end().saturating_sub(s.first.max(cursor)))
            .sum();
        let bytes = segments.iter().map(|s| s.bytes).sum();
        let spool = Arc::new(Self {
            dir: dir.to_owned(),
            index: Mutex::new(Index {
                segments,
                active: None,
                drain_until: None,
            }),
            changed: Condvar::new(),
            bytes: AtomicU64::new(bytes),
            _lock: lock,
        });
        let writer = SpoolWriter {
            spool: Arc::clone(&spool),
            max_bytes,
            segment_target: (max_bytes / 16).clamp(1, MAX_SEGMENT),
            file: None,
            file_bytes: 0,
            next: end,
            pending: Vec::new(),
            pending_records: 0,
        };
        Ok((
            spool,
            writer,
            Recovered {
                cursor,
                records,
                torn,
            },
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // The index is a few numbers updated under the lock in one step: a
        // panic elsewhere cannot leave it half-changed.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records committed from `cursor` on.
    pub fn waiting(&self, cursor: u64) -> u64 {
        self.index().end().saturating_sub(cursor)
    }

    /// Tells the sender to deliver what it can until `deadline`, then stop.
    pub fn drain_until(&self, deadline: Instant) {
        self.index().drain_until = Some(deadline);
        self.changed.notify_all();
    }

    /// The drain deadline, once the sink is gone.
    pub fn deadline(&self) -> Option<Instant> {
        self.index().drain_until
    }

    /// Blocks until a batch from `cursor` should go: `batch` records are
    /// there, or some are and the first of them was seen `batch_wait` ago
    /// (`ready_since`, kept by the caller across calls), or the sink is
    /// draining.
    pub fn wait_ready(
        &self,
        cursor: u64,
        batch: u64,
        batch_wait: Duration,
        ready_since: &mut Option<Instant>,
    ) -> Wake {
        let mut index = self.index();
        loop {
            let waiting = index.end().saturating_sub(cursor);
            let now = Instant::now();
            if let Some(deadline) = index.drain_until {
                return if waiting == 0 || now >= deadline {
                    Wake::Stop
                } else {
                    Wake::Send
                };
            }
            if waiting == 0 {
                *ready_since = None;
                index = self
                    .changed
                    .wait(index)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            let since = *ready_since.get_or_insert(now);
            if waiting >= batch || now >= since + batch_wait {
                return Wake::Send;
            }
            index = self
                .changed
                .wait_timeout(index, since + batch_wait - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Sleeps for `pause` (a retry's backoff); returns early when draining
    /// starts (so that the last attempt is not a backoff away) or when the
    /// drain time is over.
    pub fn pause(&self, pause: Duration) {
        let end = Instant::now() + pause;
        let mut index = self.index();
        let draining = index.drain_until.is_some();
        loop {
            let now = Instant::now();
            let end = index.drain_until.map_or(end, |deadline| deadline.min(end));
            if now >= end || (!draining && index.drain_until.is_some()) {
                return;
            }
            index = self
                .changed
                .wait_timeout(index, end - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Records that everything before `cursor` is delivered: replaces the
    /// cursor file, then deletes the segments wholly before it. A crash in
    /// between leaves segments that the next start deletes.
    pub fn acknowledge(&self, cursor: u64) -> Result<(), SpoolError> {
        let written = write_cursor(&self.dir, cursor);
        let mut index = self.index();
        let mut removed = Ok(());
        while let Some(segment) = index.segments.front().copied()
            && segment.end() <= cursor
            && index.active != Some(segment.first)
        {
            let path = segment_path(&self.dir, segment.first);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => {
                    removed = Err(context("removing delivered segment", &path)(error));
                    break;
                }
            }
            index.segments.pop_front();
            self.bytes.fetch_sub(segment.bytes, Ordering::Relaxed);
        }
        drop(index);
        written.and(removed)
    }
}

/// `dir`'s segments' first sequence numbers, in order.
fn segment_names(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut firsts = Vec::new();
    for entry in fs::read_dir(dir).map_err(context("listing", dir))? {
        let entry = entry.map_err(context("listing", dir))?;
        let name = entry.file_name();
        let first = name
            .to_str()
            .and_then(|name| name.strip_suffix(SEGMENT_SUFFIX))
            .filter(|digits| digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse().ok());
        if let Some(first) = first {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}{SEGMENT_SUFFIX}"))
}

/// Counts a segment's complete lines; cuts off a partial last line (what a
/// crash or a full disk in the middle of a write leaves). Returns the
/// lines, their bytes, and whether a partial line was cut.
fn scan(path: &Path) -> Result<(u64, u64, bool), SpoolError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(context("opening", path))?;
    let mut reader = BufReader::with_capacity(256 * 1024, &file);
    let (mut lines, mut complete, mut total) = (0, 0, 0);
    loop {
        let buffer = reader.fill_buf().map_err(context("reading", path))?;
        if buffer.is_empty() {
            break;
        }
        let len = buffer.len();
        if let Some(last) = buffer.iter().rposition(|&b| b == b'\n') {
            lines += newlines(buffer);
            complete = total + last as u64 + 1;
        }
        total += len as u64;
        reader.consume(len);
    }
    let cut = complete < total;
    if cut {
        tracing::warn!(
            segment = %path.display(),
            bytes = total - complete,
            "webhook spool: a partly written last record (from a crash) is skipped"
        );
        file.set_len(complete)
            .map_err(context("truncating", path))?;
    }
    Ok((lines, complete, cut))
}

fn newlines(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0, |count, &b| count + u64::from(b == b'\n'))
}

/// The cursor, if there is a readable one.
fn read_cursor(dir: &Path) -> Option<u64> {
    let path = dir.join(CURSOR);
    let mut text = String::new();
    match File::open(&path).and_then(|mut file| file.read_to_string(&mut text)) {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(cursor = %path.display(), %error, "webhook spool cursor unreadable; resending the whole spool");
            return None;
        }
    }
    let cursor = text.trim().parse().ok();
    if cursor.is_none() {
        tracing::warn!(cursor = %path.display(), "webhook spool cursor is not a number; resending the whole spool");
    }
    cursor
}

fn write_cursor(dir: &Path, cursor: u64) -> Result<(), SpoolError> {
    let temp = dir.join(CURSOR_TEMP);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(context("creating", &temp))?;
    // The data must be on disk before the rename is: otherwise a power loss
    // can leave an empty cursor under the real name. The rename itself is
    // not synced: losing it means a batch is resent, which its sequence
    // number lets the receiver drop.
    writeln!(file, "{cursor}")
        .and_then(|()| file.sync_data())
        .map_err(context("writing", &temp))?;
    let path = dir.join(CURSOR);
    fs::rename(&temp, &path).map_err(context("replacing", &path))
}

/// Whether [`SpoolWriter::append`] took the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Append {
    Buffered,
    /// The spool holds its maximum size; the record was not taken.
    Full,
}

/// The writer's half: buffers lines, appends them to the active segment.
#[derive(Debug)]
pub struct SpoolWriter {
    spool: Arc<Spool>,
    max_bytes: u64,
    segment_target: u64,
    /// The active segment (its first sequence number and file); `None`
    /// until the first commit and after a failed write (whose partial line
    /// stays behind at the end of that segment, past the lines the index
    /// counts, and is cut at the next start).
    file: Option<(u64, File)>,
    file_bytes: u64,
    /// The sequence number of the next committed record.
    next: u64,
    pending: Vec<u8>,
    pending_records: u64,
}

impl SpoolWriter {
    /// Buffers `line` (one record and its newline) unless the spool, with
    /// what is buffered, would grow past its maximum size.
    pub fn append(&mut self, line: &[u8]) -> Append {
        let on_disk = self.spool.bytes.load(Ordering::Relaxed);
        if on_disk + (self.pending.len() + line.len()) as u64 > self.max_bytes {
            return Append::Full;
        }
        self.pending.extend_from_slice(line);
        self.pending_records += 1;
        Append::Buffered
    }

    /// Bytes buffered, not yet in a segment.
    pub const fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Writes the buffered lines to the active segment and wakes the
    /// sender. Returns the records committed, or the error and the records
    /// lost with it.
    pub fn commit(&mut self) -> Result<u64, (SpoolError, u64)> {
        if self.pending.is_empty() {
            return Ok(0);
        }
        let records = std::mem::take(&mut self.pending_records);
        let written = self.write_pending(records);
        self.pending.clear();
        match written {
            Ok(()) => Ok(records),
            Err(error) => {
                self.file = None;
                Err((error, records))
            }
        }
    }

    fn write_pending(&mut self, records: u64) -> Result<(), SpoolError> {
        let (first, file) = match &mut self.file {
            Some(active) if self.file_bytes < self.segment_target => active,
            slot => {
                let new = Self::roll(&self.spool, self.next)?;
                self.file_bytes = 0;
                slot.insert(new)
            }
        };
        file.write_all(&self.pending)
            .map_err(context("writing", &segment_path(&self.spool.dir, *first)))?;
        let bytes = self.pending.len() as u64;
        self.next += records;
        self.file_bytes += bytes;
        self.spool.bytes.fetch_add(bytes, Ordering::Relaxed);
        let mut index = self.spool.index();
        if let Some(segment) = index.segments.back_mut() {
            segment.records += records;
            segment.bytes += bytes;
        }
        drop(index);
        self.spool.changed.notify_all();
        Ok(())
    }

    /// Starts a new segment, its first record `first`.
    fn roll(spool: &Spool, first: u64) -> Result<(u64, File), SpoolError> {
        let path = segment_path(&spool.dir, first);
        // A file of that name can only be a segment that got no complete
        // line (its write failed): nothing in it counts.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(context("creating", &path))?;
        let mut index = spool.index();
        if index.segments.back().is_none_or(|last| last.first != first) {
            index.segments.push_back(Segment {
                first,
                records: 0,
                bytes: 0,
            });
        }
        index.active = Some(first);
        Ok((first, file))
    }
}

/// The most one batch holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub records: u64,
    /// Of the body, `[` and `]` included.
    pub bytes: usize,
}

/// Records read for one request: a JSON array of them.
#[derive(Debug, Default)]
pub struct Batch {
    /// The sequence number of the first record.
    pub first: u64,
    pub records: u64,
    /// `[record,record,...]`.
    pub body: Vec<u8>,
}

impl Batch {
    pub const fn end(&self) -> u64 {
        self.first + self.records
    }
}

/// The sender's half: reads records in order from a sequence number on.
#[derive(Debug)]
pub struct SpoolReader {
    spool: Arc<Spool>,
    open: Option<OpenSegment>,
    line: Vec<u8>,
    /// The sequence number of the record in `line` when a batch ended
    /// before it (it would have made the batch too large): the next batch
    /// starts with it, without reading it again.
    carried: Option<u64>,
}

#[derive(Debug)]
struct OpenSegment {
    first: u64,
    /// The sequence number of the next line `file` reads.
    next: u64,
    file: BufReader<File>,
}

impl OpenSegment {
    /// Reads the next line into `line` (cleared first), without its newline.
    fn read_line(&mut self, path: &Path, line: &mut Vec<u8>) -> Result<(), SpoolError> {
        line.clear();
        self.file
            .read_until(b'\n', line)
            .map_err(context("reading", path))?;
        if line.pop() != Some(b'\n') {
            // The index counted a line the file does not have: the file was
            // changed under the spool.
            let error = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "segment shorter than its records",
            );
            return Err(context("reading", path)(error));
        }
        self.next += 1;
        Ok(())
    }
}

impl SpoolReader {
    pub const fn new(spool: Arc<Spool>) -> Self {
        Self {
            spool,
            open: None,
            line: Vec::new(),
            carried: None,
        }
    }

    /// Reads up to `limit.records` records from `from` on into `batch`,
    /// and no more than make its body `limit.bytes` long (a single record
    /// that is longer goes alone). Records that are not there (a segment
    /// deleted by hand) are skipped: the batch starts at the next record
    /// there is, and stops before a gap, so that its records are numbered
    /// `first`, `first + 1`, ...
    pub fn read(&mut self, from: u64, limit: Limit, batch: &mut Batch) -> Result<(), SpoolError> {
        batch.first = from;
        batch.records = 0;
        batch.body.clear();
        batch.body.push(b'[');
        let mut seq = from;
        if self.carried.take() == Some(from) && limit.records > 0 {
            batch.body.extend_from_slice(&self.line);
            batch.records = 1;
            seq += 1;
        }
        let read = self.read_into(&mut seq, limit, batch);
        if read.is_err() {
            // Start over from a fresh open at the next try.
            self.open = None;
            self.carried = None;
        }
        batch.body.push(b']');
        read
    }

    fn read_into(
        &mut self,
        seq: &mut u64,
        limit: Limit,
        batch: &mut Batch,
    ) -> Result<(), SpoolError> {
        let max = limit.records;
        while batch.records < max {
            let Some(segment) = self.segment_after(*seq) else {
                break;
            };
            if segment.first > *seq {
                if batch.records > 0 {
                    break;
                }
                *seq = segment.first;
                batch.first = segment.first;
            }
            let take = (segment.end() - *seq).min(max - batch.records);
            let path = segment_path(&self.spool.dir, segment.first);
            let open = seek(&mut self.open, &mut self.line, segment.first, *seq, &path)?;
            for _ in 0..take {
                open.read_line(&path, &mut self.line)?;
                if batch.records > 0 {
                    // `,` before it and the closing `]`.
                    if batch.body.len() + self.line.len() + 2 > limit.bytes {
                        self.carried = Some(*seq);
                        return Ok(());
                    }
                    batch.body.push(b',');
                }
                batch.body.extend_from_slice(&self.line);
                batch.records += 1;
                *seq += 1;
            }
        }
        Ok(())
    }

    /// The first segment with records at or after `seq`.
    fn segment_after(&self, seq: u64) -> Option<Segment> {
        self.spool
            .index()
            .segments
            .iter()
            .find(|segment| segment.end() > seq)
            .copied()
    }
}

/// The segment `first` open in `open` (opened if need be), positioned at
/// record `seq`.
fn seek<'a>(
    open: &'a mut Option<OpenSegment>,
    line: &mut Vec<u8>,
    first: u64,
    seq: u64,
    path: &Path,
) -> Result<&'a mut OpenSegment, SpoolError> {
    if open
        .as_ref()
        .is_some_and(|open| open.first != first || open.next > seq)
    {
        *open = None;
    }
    let open = match open {
        Some(open) => open,
        none => none.insert(OpenSegment {
            first,
            next: first,
            file: BufReader::with_capacity(
                64 * 1024,
                File::open(path).map_err(context("opening", path))?,
            ),
        }),
    };
    while open.next < seq {
        open.read_line(path, line)?;
    }
    Ok(open)
}
