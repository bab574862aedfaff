//! The operations surface over HTTP (`--metrics-address`): Prometheus
//! metrics at `/metrics`, liveness at `/healthz`, readiness at `/readyz`.
//!
//! Decisions and policy changes are counted as they are written (a
//! [`MetricsSink`] in the audit pipeline); the kernel's counters, the
//! pipeline's counters and the programs' run times are read when scraped,
//! so a scrape never shows a stale total.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, PerCpuArray};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeCounterValue, EncodeLabelSet, EncodeMetric as _},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};
use tokio::net::TcpListener;

use crate::{
    audit::{
        pipeline::PipelineCounters,
        record::Record,
        sink::{Sink, SinkError, webhook::WebhookStats},
    },
    stats,
};

/// A main loop that has not ticked for this long is stuck: `/healthz`
/// fails.
const STALE_AFTER: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    /// `blocked`, `killed`, `audit`, `kill-failed`.
    decision: &'static str,
    /// `drift` or `vshield`.
    reason: &'static str,
    /// `exec`, `mmap`, `mprotect`, `open`.
    via: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    /// `applied` or `refused`.
    outcome: &'static str,
}

/// Counts what the audit pipeline writes: a sink beside the others.
#[derive(Debug, Clone)]
pub struct MetricsSink {
    decisions: Family<DecisionLabels, Counter>,
    policy_changes: Family<OutcomeLabels, Counter>,
    generation: Gauge,
    control: Family<OutcomeLabels, Counter>,
}

impl Sink for MetricsSink {
    fn write(&mut self, record: &Record) -> Result<(), SinkError> {
        match record {
            Record::Decision(record) => {
                let labels = DecisionLabels {
                    decision: record.enforcer.decision,
                    reason: record.enforcer.reason,
                    via: record.enforcer.via,
                };
                self.decisions.get_or_create(&labels).inc();
            }
            Record::Policy(record) => {
                let policy = &record.enforcer.policy;
                let outcome = if policy.errors.is_empty() {
                    "applied"
                } else {
                    "refused"
                };
                self.policy_changes
                    .get_or_create(&OutcomeLabels { outcome })
                    .inc();
                self.generation
                    .set(i64::try_from(policy.generation).unwrap_or(i64::MAX));
            }
            // Its numbers are the counters the metrics read themselves.
            Record::Accounting(_) => {}
            Record::Control(record) => {
                self.control
                    .get_or_create(&OutcomeLabels {
                        outcome: record.enforcer.control.outcome,
                    })
                    .inc();
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Whether the agent is alive and ready, for the probes.
#[derive(Debug)]
pub struct Health {
    ready: AtomicBool,
    last_tick: Mutex<Instant>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            ready: AtomicBool::new(false),
            last_tick: Mutex::new(Instant::now()),
        }
    }
}

impl Health {
    /// The programs are attached and the policy is in force (`true`), or
    /// the agent is shutting down (`false`).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The main loop ticked.
    pub fn tick(&self) {
        *self
            .last_tick
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    fn alive(&self) -> bool {
        self.last_tick
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
            < STALE_AFTER
    }
}

/// Counts the entries of one hash map (a walk over its keys).
pub type EntryCount = Box<dyn Fn() -> Result<usize, aya::maps::MapError> + Send + Sync>;

/// A hash map whose use is reported, through a file descriptor of its own
/// (the main loop owns the object's maps).
pub struct MapUsage {
    pub name: &'static str,
    pub capacity: u32,
    pub entries: EntryCount,
}

impl std::fmt::Debug for MapUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapUsage")
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl MapUsage {
    /// For map `name` of the loaded object, typed `K -> V`.
    pub fn of<K: aya::Pod + Send + Sync, V: aya::Pod + Send + Sync>(
        ebpf: &aya::Ebpf,
        name: &'static str,
    ) -> Result<Self, aya::maps::MapError> {
        use aya::maps::{Map, MapData, MapError};
        let (info, lru) = match ebpf.map(name) {
            Some(Map::HashMap(data)) => (data.info()?, false),
            Some(Map::LruHashMap(data)) => (data.info()?, true),
            _ => {
                return Err(MapError::InvalidName {
                    name: name.to_owned(),
                });
            }
        };
        let data = MapData::from_id(info.id())?;
        let map = aya::maps::HashMap::<MapData, K, V>::try_from(if lru {
            Map::LruHashMap(data)
        } else {
            Map::HashMap(data)
        })?;
        Ok(Self {
            name,
            capacity: info.max_entries(),
            // Entries added or removed during the walk may be missed or
            // counted twice: a gauge, not an inventory.
            entries: Box::new(move || map.keys().try_fold(0, |count, key| key.map(|_| count + 1))),
        })
    }
}

/// What is read when scraped.
pub struct Sampled {
    /// The kernel programs' counters.
    pub kernel: Arc<PerCpuArray<MapData, u64>>,
    pub pipeline: Arc<PipelineCounters>,
    /// The agent's programs: name and id.
    pub programs: Vec<(String, u32)>,
    pub catalog: crate::container::registry::Catalog,
    /// The hash maps whose entries are counted.
    pub maps: Vec<MapUsage>,
}

impl std::fmt::Debug for Sampled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampled")
            .field("programs", &self.programs)
            .finish_non_exhaustive()
    }
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for Sampled {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let pipeline = self.pipeline.snapshot();
        for (name, help, value) in pipeline.named() {
            counter(
                &mut encoder,
                &format!("enforcer_pipeline_{name}"),
                help,
                value,
            )?;
        }
        for (name, help, value) in pipeline.webhook.iter().flat_map(WebhookStats::named) {
            counter(
                &mut encoder,
                &format!("enforcer_webhook_{name}"),
                help,
                value,
            )?;
        }
        // A failed read is shown as no kernel counters at all, not zeros.
        if let Ok(kernel) = stats::read(&self.kernel) {
            for (name, help, value) in kernel.named() {
                counter(
                    &mut encoder,
                    &format!("enforcer_kernel_{name}"),
                    help,
                    value,
                )?;
            }
        }
        self.encode_programs(&mut encoder)?;
        self.encode_maps(&mut encoder)?;
        let containers = self
            .catalog
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        let gauge = ConstGauge::new(i64::try_from(containers).unwrap_or(i64::MAX));
        gauge.encode(encoder.encode_descriptor(
            "enforcer_containers_known",
            "Containers the agent knows (running, and recently exited ones).",
            None,
            gauge.metric_type(),
        )?)
    }
}

impl Sampled {
    /// Entries in use and capacity of each hash map.
    fn encode_maps(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "enforcer_map_entries",
            "Entries in each of the kernel programs' hash maps (counted at the scrape).",
            None,
            MetricType::Gauge,
        )?;
        for map in &self.maps {
            // A map that cannot be read is left out rather than shown empty.
            if let Ok(entries) = (map.entries)() {
                ConstGauge::new(i64::try_from(entries).unwrap_or(i64::MAX))
                    .encode(family.encode_family(&[("map", map.name)])?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "enforcer_map_capacity",
            "Entries each of the kernel programs' hash maps holds at most.",
            None,
            MetricType::Gauge,
        )?;
        for map in &self.maps {
            ConstGauge::new(i64::from(map.capacity))
                .encode(family.encode_family(&[("map", map.name)])?)?;
        }
        Ok(())
    }

    /// Run counts and times of the agent's programs, from the kernel's
    /// program info (counted while BPF statistics are on).
    fn encode_programs(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let ours: std::collections::HashMap<u32, &str> = self
            .programs
            .iter()
            .map(|(name, id)| (*id, name.as_str()))
            .collect();
        let mut runs = Vec::new();
        for info in aya::programs::loaded_programs().flatten() {
            if let Some(name) = ours.get(&info.id()) {
                runs.push((*name, info.run_count(), info.run_time()));
            }
        }
        runs.sort_unstable();
        per_program(
            encoder,
            "enforcer_program_runs",
            "Runs of each kernel program (while BPF statistics are on).",
            runs.iter().map(|(name, count, _)| (*name, *count)),
        )?;
        per_program(
            encoder,
            "enforcer_program_run_time_seconds",
            "Time spent in each kernel program (while BPF statistics are on).",
            runs.iter()
                .map(|(name, _, time)| (*name, time.as_secs_f64())),
        )?;
        Ok(())
    }
}

/// One counter `name` with a sample per program.
fn per_program<'a, N: EncodeCounterValue>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: impl Iterator<Item = (&'a str, N)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (program, value) in values {
        ConstCounter::new(value).encode(family.encode_family(&[("program", program)])?)?;
    }
    Ok(())
}

/// The metrics registry and what feeds it.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sink: MetricsSink,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let sink = MetricsSink {
            decisions: Family::default(),
            policy_changes: Family::default(),
            generation: Gauge::default(),
            control: Family::default(),
        };
        registry.register(
            "enforcer_decisions",
            "Decisions written as audit events, by decision, reason and route.",
            sink.decisions.clone(),
        );
        registry.register(
            "enforcer_policy_changes",
            "Policy changes, applied or refused (the previous policy stays in force).",
            sink.policy_changes.clone(),
        );
        registry.register(
            "enforcer_control_requests",
            "Control requests refused, and containers OCI hooks placed, as audit records.",
            sink.control.clone(),
        );
        registry.register(
            "enforcer_policy_generation",
            "The generation of the policy in force.",
            sink.generation.clone(),
        );
        Self { registry, sink }
    }

    /// Where enforcement stands across agents (see `crate::pins`).
    pub fn pinning(&mut self, generation: u64, adopted_maps: bool, lost_before_start: u64) {
        for (name, help, value) in [
            (
                "enforcer_pinned_generation",
                "This agent's generation of pinned programs: enforcement stays in force when it stops.",
                generation,
            ),
            (
                "enforcer_adopted_maps",
                "1 when this agent took over the maps an agent before it pinned, else 0.",
                u64::from(adopted_maps),
            ),
            (
                "enforcer_events_lost_before_start",
                "Records the kernel could not keep while no agent read them, before this agent started.",
                lost_before_start,
            ),
        ] {
            let gauge: Gauge = Gauge::default();
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
            self.registry.register(name, help, gauge);
        }
    }

    /// The sink that counts what the pipeline writes.
    pub fn sink(&self) -> MetricsSink {
        self.sink.clone()
    }

    /// Adds what is read at each scrape: the kernel's and the pipeline's
    /// counters, the programs' run times and the containers known.
    pub fn sample(&mut self, sampled: Sampled) {
        self.registry.register_collector(Box::new(sampled));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
            let _ = writeln!(text, "# encoding the metrics failed");
        }
        text
    }
}

#[derive(Debug, thiserror::Error)]
#[error("listening for metrics and probes at {address}: {source}")]
pub struct ListenError {
    address: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Answers one request. Pure but for the reads.
fn respond(path: &str, metrics: &Metrics, health: &Health) -> (StatusCode, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        "/healthz" if health.alive() => (StatusCode::OK, TEXT, "ok\n".to_owned()),
        "/healthz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "the agent's main loop has not run for 30 s\n".to_owned(),
        ),
        "/readyz" if health.ready.load(Ordering::Relaxed) => {
            (StatusCode::OK, TEXT, "ready\n".to_owned())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "not enforcing: starting or shutting down\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: /metrics, /healthz, /readyz\n".to_owned(),
        ),
    }
}

/// Listens at `address` and serves the endpoints until the agent exits.
///
/// # Errors
/// The address cannot be listened on.
pub async fn serve(
    address: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> Result<SocketAddr, ListenError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| ListenError { address, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ListenError { address, source })?;
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accepting a metrics connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (metrics, health) = (metrics.clone(), health.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let (status, content_type, body) =
                        respond(request.uri().path(), &metrics, &health);
                    let response = Response::builder()
                        .status(status)
                        .header(hyper::header::CONTENT_TYPE, content_type)
                        .body(Full::new(Bytes::from(body)));
                    async move { response }
                });
                // A client that goes away mid-request is its own business.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_answer_by_state_and_unknown_paths_are_not_found() {
        let metrics = Metrics::new();
        let health = Health::default();
        assert_eq!(respond("/healthz", &metrics, &health).0, StatusCode::OK);
        assert_eq!(
            respond("/readyz", &metrics, &health).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.set_ready(true);
        assert_eq!(respond("/readyz", &metrics, &health).0, StatusCode::OK);
        *health.last_tick.lock().unwrap() = Instant::now().checked_sub(STALE_AFTER).unwrap();
        assert_eq!(
            respond("/healthz", &metrics, &health).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(respond("/", &metrics, &health).0, StatusCode::NOT_FOUND);
    }
}
