//! Wires the audit stages: ring buffer (tokio `AsyncFd`) -> decode -> bounded
//! channel -> writer thread (enrich -> sinks).
//!
//! The channel is bounded and filled with `try_send`: a slow sink never
//! backs up into the ring buffer reader. What does not fit is counted, and
//! the counts are reported; nothing is dropped silently.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, watch},
    task::JoinHandle,
};

use super::{
    decode::{KernelEvent, decode},
    enrich::Enricher,
    sink::Sink,
};

/// Queue between the ring buffer reader and the writer.
pub const CHANNEL_CAPACITY: usize = 8192;

/// Counters of the userspace half of the pipeline.
#[derive(Debug, Default)]
pub struct PipelineCounters {
    /// Records read from the ring buffer.
    pub received: AtomicU64,
    /// Records that could not be decoded.
    pub decode_errors: AtomicU64,
    /// Records dropped because the writer was behind.
    pub dropped: AtomicU64,
    /// Records handed to every sink.
    pub written: AtomicU64,
    /// Failed sink writes or flushes.
    pub sink_errors: AtomicU64,
}

/// A snapshot of [`PipelineCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipelineStats {
    pub received: u64,
    pub decode_errors: u64,
    pub dropped: u64,
    pub written: u64,
    pub sink_errors: u64,
}

impl PipelineCounters {
    pub fn snapshot(&self) -> PipelineStats {
        PipelineStats {
            received: self.received.load(Ordering::Relaxed),
            decode_errors: self.decode_errors.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            sink_errors: self.sink_errors.load(Ordering::Relaxed),
        }
    }
}

/// The running pipeline.
#[derive(Debug)]
pub struct Pipeline {
    stop: watch::Sender<bool>,
    reader: JoinHandle<()>,
    writer: thread::JoinHandle<()>,
    counters: Arc<PipelineCounters>,
}

impl Pipeline {
    /// Starts reading `ring`. Must be called inside a tokio runtime.
    pub fn start(
        ring: RingBuf<MapData>,
        enricher: Enricher,
        sinks: Vec<Box<dyn Sink>>,
    ) -> std::io::Result<Self> {
        let counters = Arc::new(PipelineCounters::default());
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (stop, stop_rx) = watch::channel(false);
        // SAFETY: the RingBuf owns its map fd, which stays open and the same
        // until the RingBuf (owned by the AsyncFd from here on) is dropped.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        let reader = tokio::spawn(read_loop(ring, tx, Arc::clone(&counters), stop_rx));
        let writer_counters = Arc::clone(&counters);
        let writer = thread::Builder::new()
            .name("audit-writer".to_owned())
            .spawn(move || write_loop(rx, &enricher, sinks, &writer_counters))?;
        Ok(Self {
            stop,
            reader,
            writer,
            counters,
        })
    }

    pub fn counters(&self) -> Arc<PipelineCounters> {
        Arc::clone(&self.counters)
    }

    /// Reads what is left in the ring buffer, writes it, flushes the sinks
    /// and returns the final counts. Detach the programs first, so that
    /// "what is left" is everything.
    pub async fn stop(self) -> PipelineStats {
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
    tx: mpsc::Sender<KernelEvent>,
    counters: Arc<PipelineCounters>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            ready = ring.readable_mut() => match ready {
                Ok(mut guard) => {
                    drain_nonblocking(guard.get_inner_mut(), &tx, &counters);
                    guard.clear_ready();
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
            Ok(event) => {
                if tx.send(event).await.is_err() {
                    break;
                }
            }
            Err(error) => report_decode_error(&counters, &error),
        }
    }
}

fn drain_nonblocking(
    ring: &mut RingBuf<MapData>,
    tx: &mpsc::Sender<KernelEvent>,
    counters: &PipelineCounters,
) {
    while let Some(item) = ring.next() {
        counters.received.fetch_add(1, Ordering::Relaxed);
        match decode(&item) {
            Ok(event) => {
                if tx.try_send(event).is_err() {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(error) => report_decode_error(counters, &error),
        }
    }
}

fn report_decode_error(counters: &PipelineCounters, error: &super::decode::DecodeError) {
    counters.decode_errors.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(%error, "undecodable audit record skipped");
}

fn write_loop(
    mut rx: mpsc::Receiver<KernelEvent>,
    enricher: &Enricher,
    mut sinks: Vec<Box<dyn Sink>>,
    counters: &PipelineCounters,
) {
    while let Some(event) = rx.blocking_recv() {
        write_one(&event, enricher, &mut sinks, counters);
        // Batch whatever else is queued before flushing.
        while let Ok(event) = rx.try_recv() {
            write_one(&event, enricher, &mut sinks, counters);
        }
        for sink in &mut sinks {
            if let Err(error) = sink.flush() {
                counters.sink_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, "audit sink flush failed");
            }
        }
    }
}

fn write_one(
    event: &KernelEvent,
    enricher: &Enricher,
    sinks: &mut [Box<dyn Sink>],
    counters: &PipelineCounters,
) {
    let record = enricher.record(event);
    for sink in sinks {
        if let Err(error) = sink.write(&record) {
            counters.sink_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "audit sink write failed");
        }
    }
    counters.written.fetch_add(1, Ordering::Relaxed);
}
