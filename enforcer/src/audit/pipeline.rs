//! Wires the audit stages: ring buffer (tokio `AsyncFd`) -> decode -> bounded
//! channel -> writer thread (enrich -> sinks). Notices meant for the agent
//! itself (an untracked root) go to their own channel.
//!
//! The channel is bounded and filled with `try_send`: a slow sink never
//! backs up into the ring buffer reader. What does not fit is counted, and
//! the counts are reported; nothing is dropped silently.
//!
//! [`Pipeline::flush`] is a barrier through both stages: the reader drains
//! the ring buffer and queues the barrier behind what it read; the writer
//! answers once everything before it is written and the sinks are flushed.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    thread,
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use enforcer_common::RootNotice;

use crate::container::CgroupIndex;

use super::{
    decode::{AuditEvent, KernelEvent, decode},
    enrich::Enricher,
    sink::{
        Sink,
        webhook::{WebhookCounters, WebhookStats},
    },
};

/// Queue between the ring buffer reader and the writer.
pub const CHANNEL_CAPACITY: usize = 8192;

/// Records queued for the writer beyond which it is behind: records are then
/// written without the ancestors' executables from `/proc` (a few system
/// calls per ancestor, most of a record's cost), so that a flood is written
/// rather than dropped. The kernel's lineage (pids and names) stays.
const BEHIND: usize = 64;

/// Records in one read of the ring buffer from which the reader is in a
/// flood: it then pauses for [`BUSY_PAUSE`] before reading again. The kernel
/// wakes the reader for each record written while it has read everything
/// (the ring buffer's rule), so a reader that keeps up wakes, and switches
/// tasks, once per record: most of a flood's cost. Pausing lets records
/// gather and be read in batches. The ring buffer (1 MiB) holds about a
/// thousand records, a millisecond of a million records a second; the events
/// benchmark loses no more records to it with the pause than without.
const BUSY_BATCH: usize = 32;
const BUSY_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// Flush requests waiting for the reader.
const FLUSH_CAPACITY: usize = 16;

/// What the writer is handed.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "an item moves once, through the channel; boxing would allocate per event"
)]
enum Item {
    Audit(AuditEvent),
    /// Answered once everything queued before it is written and flushed.
    Barrier(oneshot::Sender<()>),
}

/// Queue of notices for the agent. The kernel repeats a notice until the
/// agent has acted on it, so one that does not fit is not lost.
const NOTICE_CAPACITY: usize = 16;

/// Counters of the userspace half of the pipeline.
#[derive(Debug, Default)]
pub struct PipelineCounters {
    /// Records read from the ring buffer.
    pub received: AtomicU64,
    /// Records that could not be decoded.
    pub decode_errors: AtomicU64,
    /// Kernel records dropped because the writer was behind.
    pub dropped: AtomicU64,
    /// Records handed to every sink.
    pub written: AtomicU64,
    /// Failed sink writes or flushes.
    pub sink_errors: AtomicU64,
    /// Records written without the ancestors' executables because the
    /// writer was behind.
    pub lineage_skipped: AtomicU64,
    /// The webhook sinks' own counters.
    pub webhooks: Vec<Arc<WebhookCounters>>,
}

/// A snapshot of [`PipelineCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipelineStats {
    pub received: u64,
    pub decode_errors: u64,
    pub dropped: u64,
    pub written: u64,
    pub sink_errors: u64,
    pub lineage_skipped: u64,
    /// The webhook sinks' counters, summed; `None` without a webhook sink.
    pub webhook: Option<WebhookStats>,
}

impl PipelineStats {
    /// Each counter with its name (`metrics`: `enforcer_pipeline_NAME_total`,
    /// `enforcer status`: `pipeline.NAME`) and what it counts.
    pub const fn named(&self) -> [(&'static str, &'static str, u64); 6] {
        [
            (
                "received",
                "Records read from the kernel's ring buffer.",
                self.received,
            ),
            ("written", "Records handed to every sink.", self.written),
            (
                "dropped",
                "Records dropped because the writer was behind (lost, counted).",
                self.dropped,
            ),
            (
                "decode_errors",
                "Records that could not be decoded.",
                self.decode_errors,
            ),
            (
                "sink_errors",
                "Failed sink writes and flushes.",
                self.sink_errors,
            ),
            (
                "lineage_skipped",
                "Records written without the ancestors' executables from /proc: the writer was behind.",
                self.lineage_skipped,
            ),
        ]
    }
}

impl PipelineCounters {
    pub fn snapshot(&self) -> PipelineStats {
        PipelineStats {
            received: self.received.load(Ordering::Relaxed),
            decode_errors: self.decode_errors.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            sink_errors: self.sink_errors.load(Ordering::Relaxed),
            lineage_skipped: self.lineage_skipped.load(Ordering::Relaxed),
            webhook: (!self.webhooks.is_empty())
                .then(|| WebhookStats::sum(self.webhooks.iter().map(|webhook| webhook.snapshot()))),
        }
    }
}

/// The running pipeline.
#[derive(Debug)]
pub struct Pipeline {
    stop: watch::Sender<bool>,
    /// For the agent's own records (policy changes).
    agent: mpsc::Sender<Item>,
    /// Barriers for the reader to queue behind what the kernel wrote.
    flush: mpsc::Sender<oneshot::Sender<()>>,
    reader: JoinHandle<()>,
    writer: thread::JoinHandle<()>,
    counters: Arc<PipelineCounters>,
}

/// Where the reader sends what it decoded.
struct Outputs {
    audit: mpsc::Sender<Item>,
    notices: mpsc::Sender<RootNotice>,
    /// The writer's cgroup index. The reader has each decision's group
    /// looked up as it takes the record: a short-lived container's group may
    /// be gone by the time a writer that is behind enriches the record, and
    /// its id then names nothing.
    cgroups: Arc<Mutex<CgroupIndex>>,
}

impl Pipeline {
    /// Starts reading `ring`; returns the pipeline and the notices for the
    /// agent. Must be called inside a tokio runtime.
    pub fn start(
        ring: RingBuf<MapData>,
        enricher: Enricher,
        sinks: Vec<Box<dyn Sink>>,
        webhooks: Vec<Arc<WebhookCounters>>,
    ) -> std::io::Result<(Self, mpsc::Receiver<RootNotice>)> {
        let counters = Arc::new(PipelineCounters {
            webhooks,
            ..PipelineCounters::default()
        });
        let (audit, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (notices, notices_rx) = mpsc::channel(NOTICE_CAPACITY);
        let agent = audit.clone();
        let outputs = Outputs {
            audit,
            notices,
            cgroups: Arc::clone(&enricher.cgroups),
        };
        let (stop, stop_rx) = watch::channel(false);
        let (flush, flush_rx) = mpsc::channel(FLUSH_CAPACITY);
        // SAFETY: the RingBuf owns its map fd, which stays open and the same
        // until the RingBuf (owned by the AsyncFd from here on) is dropped.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        let reader = tokio::spawn(read_loop(
            ring,
            outputs,
            Arc::clone(&counters),
            stop_rx,
            flush_rx,
        ));
        let writer_counters = Arc::clone(&counters);
        let writer = thread::Builder::new()
            .name("audit-writer".to_owned())
            .spawn(move || write_loop(rx, &enricher, sinks, &writer_counters))?;
        let pipeline = Self {
            stop,
            agent,
            flush,
            reader,
            writer,
            counters,
        };
        Ok((pipeline, notices_rx))
    }

    pub fn counters(&self) -> Arc<PipelineCounters> {
        Arc::clone(&self.counters)
    }

    /// Writes a record of the agent's own (a policy change, accounting)
    /// with the kernel's. Never dropped: a task waits for room in the queue
    /// (these records are few, and they are the ones that say what changed
    /// and what was lost). Must be called inside the tokio runtime.
    pub fn report(&self, event: AuditEvent) {
        let agent = self.agent.clone();
        tokio::spawn(async move {
            // Fails only when the writer is gone, at the end of a shutdown.
            let _ = agent.send(Item::Audit(event)).await;
        });
    }

    /// A barrier: the answer comes once every record the kernel had written
    /// when this was called is written to the sinks and they are flushed
    /// (then [`PipelineCounters::written`] counts them). The sender is
    /// dropped unanswered when the pipeline is stopping or already has
    /// [`FLUSH_CAPACITY`] barriers waiting.
    pub fn flush(&self) -> oneshot::Receiver<()> {
        let (done, answer) = oneshot::channel();
        let _ = self.flush.try_send(done);
        answer
    }

    /// Reads what is left in the ring buffer, writes it, flushes the sinks
    /// and returns the final counts. Detach the programs first, so that
    /// "what is left" is everything.
    pub async fn stop(self) -> PipelineStats {
        // The writer ends when every sender is gone.
        drop(self.agent);
        // The reader may already have ended; then there is nothing to tell.
        let _ = self.stop.send(true);
        if let Err(error) = self.reader.await {
            tracing::error!(%error, "audit reader task failed");
        }
        // The reader dropped its sender; the writer drains the channel and
        // returns.
        let writer = self.writer;
        if tokio::task::spawn_blocking(move || writer.join())
            .await
            .is_err()
        {
            tracing::error!("audit writer thread panicked");
        }
        self.counters.snapshot()
    }
}

async fn read_loop(
    mut ring: AsyncFd<RingBuf<MapData>>,
    outputs: Outputs,
    counters: Arc<PipelineCounters>,
    mut stop: watch::Receiver<bool>,
    mut flush: mpsc::Receiver<oneshot::Sender<()>>,
) {
    loop {
        tokio::select! {
            Some(done) = flush.recv() => {
                drain_nonblocking(ring.get_mut(), &outputs, &counters);
                // Waits for room: a barrier is not dropped.
                if outputs.audit.send(Item::Barrier(done)).await.is_err() {
                    return;
                }
            }
            ready = ring.readable_mut() => match ready {
                Ok(mut guard) => {
                    let read = drain_nonblocking(guard.get_inner_mut(), &outputs, &counters);
                    guard.clear_ready();
                    if read >= BUSY_BATCH {
                        tokio::time::sleep(BUSY_PAUSE).await;
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "polling the audit ring buffer failed; no more events will be read");
                    return;
                }
            },
            _ = stop.changed() => break,
        }
    }
    // Final drain: the programs are detached, so this is the last of it.
    // Wait for room in the channel instead of dropping.
    loop {
        let event = {
            let Some(item) = ring.get_mut().next() else {
                break;
            };
            counters.received.fetch_add(1, Ordering::Relaxed);
            decode(&item)
        };
        match event {
            Ok(KernelEvent::Audit(event)) => {
                if outputs.audit.send(Item::Audit(event)).await.is_err() {
                    break;
                }
            }
            // The programs are detached: nothing is waiting for an answer.
            Ok(KernelEvent::UntrackedRoot(_)) => {}
            Err(error) => report_decode_error(&counters, &error),
        }
    }
}

/// Reads what the ring buffer holds; returns how many records that was.
fn drain_nonblocking(
    ring: &mut RingBuf<MapData>,
    outputs: &Outputs,
    counters: &PipelineCounters,
) -> usize {
    let mut read = 0;
    while let Some(item) = ring.next() {
        read += 1;
        counters.received.fetch_add(1, Ordering::Relaxed);
        match decode(&item) {
            Ok(KernelEvent::Audit(event)) => {
                if let AuditEvent::Decision(decision) = &event {
                    outputs
                        .cgroups
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .learn(decision.cgroup_id);
                }
                if outputs.audit.try_send(Item::Audit(event)).is_err() {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(KernelEvent::UntrackedRoot(notice)) => {
                // Full: the agent is busy with an earlier notice, and the
                // kernel sends another until it is answered.
                let _ = outputs.notices.try_send(notice);
            }
            Err(error) => report_decode_error(counters, &error),
        }
    }
    read
}

fn report_decode_error(counters: &PipelineCounters, error: &super::decode::DecodeError) {
    counters.decode_errors.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(%error, "undecodable audit record skipped");
}

fn write_loop(
    mut rx: mpsc::Receiver<Item>,
    enricher: &Enricher,
    mut sinks: Vec<Box<dyn Sink>>,
    counters: &PipelineCounters,
) {
    let mut barriers = Vec::new();
    while let Some(item) = rx.blocking_recv() {
        // Batch whatever else is queued before flushing.
        let mut next = Some(item);
        while let Some(item) = next.take() {
            match item {
                Item::Audit(event) => {
                    let behind = rx.len() > BEHIND;
                    if behind {
                        counters.lineage_skipped.fetch_add(1, Ordering::Relaxed);
                    }
                    write_one(&event, enricher, &mut sinks, counters, !behind);
                }
                Item::Barrier(done) => barriers.push(done),
            }
            next = rx.try_recv().ok();
        }
        for sink in &mut sinks {
            if let Err(error) = sink.flush() {
                counters.sink_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, "audit sink flush failed");
            }
        }
        for done in barriers.drain(..) {
            // The asker may have given up.
            let _ = done.send(());
        }
    }
}

fn write_one(
    event: &AuditEvent,
    enricher: &Enricher,
    sinks: &mut [Box<dyn Sink>],
    counters: &PipelineCounters,
    proc_lineage: bool,
) {
    let record = enricher.record_with(event, proc_lineage);
    for sink in sinks {
        if let Err(error) = sink.write(&record) {
            counters.sink_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "audit sink write failed");
        }
    }
    counters.written.fetch_add(1, Ordering::Relaxed);
}
