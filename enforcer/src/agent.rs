//! `enforcer run`: resolve the kernel layout, load and attach the programs,
//! apply the policy, and run the audit pipeline until SIGTERM/SIGINT.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use enforcer_common::{ABI_VERSION, AgentConfig, ContainerRoot, mount_walk};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    active::{ActiveError, ActiveVShields, Roots},
    audit::{
        decode::AuditEvent,
        enrich::{BootClock, Enricher, PolicyTable, hostname},
        limit::RateLimit,
        pipeline::{Pipeline, PipelineStats},
        record::{Accounting, ControlEvent, Losses},
        sink::{
            Sink, SinkError,
            spec::{self, SinkSpec},
            webhook::{WebhookCounters, WebhookStats},
        },
    },
    backend::{self, Attached, BackendChoice, BackendError, BackendKind, SignalRoutes},
    cli::DaemonSetRef,
    container::{
        self, CgroupIndex,
        cri::{self, CriError},
        kubernetes::{self, KubernetesError, SharedPods},
        podman::PodmanStore,
        registry::{Catalog, Change, HookState, Registry},
    },
    control::{
        self, ControlSocket, FlushedReply, Incoming, KernelStatus, Peer, PinningStatus,
        PlacedReply, PolicyStatus, ProgramStatus, Reply, Request, StatusReply, Trusted,
        VShieldsReply,
    },
    kernel::{
        features,
        host::{self, HostError, HostIdentity, host_identity},
        layout::{BackingFiles, KernelBtf, Layout, LayoutError, OverlayLayout},
        symbols,
    },
    maps::{self, MapAccessError},
    ops::{self, Metrics},
    pins::{Generation, Links, PinError, Store},
    policy::{self, DriftRule, Policy},
    reload::{Changed, InForce, Trigger, Watches},
    stats::{self, KernelCounters},
    tracking::{State as TrackingState, Tracker, WriteTracking},
};

/// How often lost events and kernel read errors are checked for.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// How long an exiting agent waits for the API to say whether its
/// `DaemonSet` is being uninstalled.
const UNINSTALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the cgroup tree is read for containers no hook announced.
const CONTAINERS_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub backend: BackendChoice,
    pub policy: Policy,
    /// Where `policy` was read from, watched for changes; empty for the
    /// built-in policy.
    pub policy_paths: Vec<PathBuf>,
    pub track_writes: WriteTracking,
    pub signal_mmap_check: bool,
    pub host_pid: u32,
    pub btf: Option<PathBuf>,
    /// Globs of image layer directories (see `--image-store`).
    pub image_stores: Vec<String>,
    /// Where to answer `enforcer vshield list` and OCI hooks.
    pub control_socket: PathBuf,
    /// Where containers are named from.
    pub sources: Sources,
    /// Where to serve metrics and probes.
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Where audit records go.
    pub sinks: Vec<SinkSpec>,
    /// The kernel's rate limit of decision records.
    pub rate_limit: RateLimit,
    /// How often lost and suppressed records are reported in an audit
    /// record of their own (when any were).
    pub accounting_interval: Duration,
    /// Where the kernel objects are pinned (see [`crate::pins`]).
    pub pin_dir: PathBuf,
    /// Unload them at exit when this `DaemonSet` is uninstalled.
    pub uninstall: Option<Uninstall>,
}

/// `--daemonset`: the agent's own `DaemonSet`, whose removal ends enforcement.
#[derive(Clone, Debug)]
pub struct Uninstall {
    pub daemonset: DaemonSetRef,
    pub kubeconfig: Option<PathBuf>,
}

/// Where containers are named from, beside their cgroups.
#[derive(Clone, Debug)]
pub struct Sources {
    /// Podman's storage root.
    pub podman_storage: PathBuf,
    /// CRI runtimes' sockets to read containers from.
    pub cri_sockets: Vec<PathBuf>,
    /// Watch this node's pods in the Kubernetes API.
    pub kubernetes: Option<KubernetesOptions>,
}

#[derive(Clone, Debug)]
pub struct KubernetesOptions {
    pub node: String,
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "refusing to start: the kernel layout the enforce path needs cannot be resolved ({field}): {source}"
    )]
    Layout {
        field: String,
        #[source]
        source: LayoutError,
    },
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Kubernetes(#[from] KubernetesError),
    #[error(transparent)]
    Cri(CriError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Map(#[from] MapAccessError),
    #[error("invalid policy: {0}")]
    Policy(#[from] policy::PathGlobError),
    #[error("applying the vShields: {0}")]
    VShields(#[from] ActiveError),
    #[error("opening the audit sinks: {0}")]
    Sink(#[from] SinkError),
    #[error("starting the audit pipeline: {0}")]
    Pipeline(#[source] std::io::Error),
    #[error(transparent)]
    Ops(ops::ListenError),
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error(
        "pinning the kernel objects: {0}; the enforcement pinned before this agent, if any, stays in force"
    )]
    Pin(#[from] PinError),
}

fn layout_error(source: LayoutError) -> AgentError {
    AgentError::Layout {
        field: source.field().unwrap_or_else(|| "kernel BTF".to_owned()),
        source,
    }
}

/// Resolves the kernel layout from BTF and says what had to be assumed.
fn kernel_layout(btf_path: Option<&std::path::Path>) -> Result<Layout, AgentError> {
    let release = features::kernel_release();
    if let Err(reason) = features::ensure_overlayfs() {
        tracing::warn!("{reason}");
    }
    let btf = KernelBtf::load(btf_path).map_err(layout_error)?;
    let layout = btf.offsets().map_err(layout_error)?;
    let offsets = layout.offsets;
    tracing::info!(kernel = %release, btf = ?btf.sources(), ?offsets, "kernel layout resolved from BTF");
    if let BackingFiles::UnknownLayout(reason) = &layout.backing_files {
        tracing::warn!(
            %reason,
            "struct backing_file has an unknown layout: mprotect to executable of files on stacked overlays \
             (an image stored on overlayfs) may be refused although they are image files"
        );
    }
    match &layout.mount_walk {
        Err(reason) => tracing::warn!(
            %reason,
            "the mounts of a filesystem cannot be listed: a read-only mount the runtime made is trusted \
             even when a container also has its filesystem mounted writable (one volume mounted \
             read-write and read-only in a pod)"
        ),
        Ok(()) if layout.mount_offsets.walk == mount_walk::NO_LOOP => tracing::warn!(
            "the kernel has no bpf_loop (5.17+): a container file on a read-only mount the runtime made \
             runs even when a container also has its filesystem mounted writable (one volume mounted \
             read-write and read-only in a pod); each such run is reported (layer unchecked-mount)"
        ),
        Ok(()) => {}
    }
    if let OverlayLayout::DerivedFromInodeSize { reason } = &layout.overlay {
        tracing::warn!(
            %reason,
            offset = offsets.ovl_inode_upperdentry,
            "overlay inode layout not in BTF; using sizeof(struct inode) from vmlinux BTF as the offset of \
             ovl_inode.__upperdentry, the layout of overlayfs from 5.x to 7.x. Reads that do not yield a \
             kernel pointer are counted as kernel read errors"
        );
    }
    Ok(layout)
}

/// The programs' load-time settings.
fn agent_config(
    host: &HostIdentity,
    checks: &SignalRoutes,
    fput_fn: u64,
    rate_limit: RateLimit,
) -> AgentConfig {
    // The kernel's numbers for the agent's own architecture.
    let syscall = |number: libc::c_long| {
        if checks.mappings.is_ok() {
            u32::try_from(number).unwrap_or(0)
        } else {
            0
        }
    };
    AgentConfig {
        host_mnt_ns: host.mnt_ns,
        abi_version: ABI_VERSION,
        host_root_dev: host.root_dev,
        mmap_syscall: syscall(libc::SYS_mmap),
        host_root_ino: host.root_ino,
        fput_fn,
        mprotect_syscall: syscall(libc::SYS_mprotect),
        report_burst: rate_limit.burst,
        report_window_ns: rate_limit.window_ns(),
        pkey_mprotect_syscall: syscall(libc::SYS_pkey_mprotect),
        execve_syscall: syscall(libc::SYS_execve),
        execveat_syscall: syscall(libc::SYS_execveat),
        // The kernel programs read the 32-bit gate's registers as x86-64's.
        compat_syscalls: u32::from(cfg!(target_arch = "x86_64") && checks.mappings.is_ok()),
        mount_syscall: syscall(libc::SYS_mount),
        move_mount_syscall: syscall(libc::SYS_move_mount),
        fsconfig_syscall: syscall(libc::SYS_fsconfig),
        mount_setattr_syscall: syscall(libc::SYS_mount_setattr),
    }
}

/// The address of `____fput`, which the signal backend's script check needs
/// (see enforcer-ebpf/src/script.rs), or why the check is off.
fn script_check(layout: &Layout) -> Result<u64, String> {
    layout.deferred_release.clone()?;
    match symbols::address("____fput") {
        Ok(Some(address)) => Ok(address),
        Ok(None) => Err(
            "____fput is not in /proc/kallsyms, or its address is hidden (kptr_restrict)"
                .to_owned(),
        ),
        Err(error) => Err(format!("reading /proc/kallsyms: {error}")),
    }
}

/// Tells the kernel the containers already running, before any program is
/// attached: the kernel records a container's root at its first exec, which
/// for these happened before the agent ran; its next exec could come from
/// a process that has changed its own root since.
fn seed_container_roots(ebpf: &mut aya::Ebpf, host: &HostIdentity) -> Result<(), AgentError> {
    let Some((cgroup2, cgroup2_root)) = container::cgroup2_mount_and_root() else {
        tracing::warn!(
            "no cgroup v2 mount: containers already running are recognised at their next exec, \
             by their root directory then"
        );
        return Ok(());
    };
    let running = host::running_containers(host, &cgroup2, &cgroup2_root);
    let mut roots: aya::maps::HashMap<_, u64, ContainerRoot> =
        maps::borrow_mut(ebpf, maps::CONTAINER_ROOTS)?;
    for found in &running {
        let root = ContainerRoot {
            root_dev: found.root_dev,
            mnt_ns: found.mnt_ns,
        };
        roots
            .insert(found.cgroup_id, root, 0)
            .map_err(|source| MapAccessError::Map {
                map: maps::CONTAINER_ROOTS,
                source,
            })?;
    }
    tracing::info!(
        containers = running.len(),
        "containers already running: each one's processes are measured against the root \
         filesystem of its oldest process"
    );
    Ok(())
}

/// Finds out what the host is, and says so.
fn host(pid: u32) -> Result<HostIdentity, AgentError> {
    let host = host_identity(pid)?;
    if let Some(reason) = &host.fallback {
        tracing::warn!(
            %reason,
            "cannot read the host process's namespaces; treating the agent's own mount namespace and root as \
             the host's. Run the agent in the host's namespaces or pass --host-pid"
        );
    }
    tracing::info!(
        mount_namespace = host.mnt_ns,
        root = format!("{}:{} inode {}", host.root_dev >> 20, host.root_dev & 0xf_ffff, host.root_ino),
        source = %host.source.display(),
        "host identity: the first process of a cgroup with another mount namespace and another root makes the \
         cgroup a container's, whose processes stay container processes"
    );
    Ok(host)
}

pub async fn run(options: RunOptions) -> Result<(), AgentError> {
    // A bad policy is refused before anything else is done.
    let compiled = policy::compile(&options.policy)?;
    let (prepared, mut ebpf) = load(&options)?;
    // Options fail before the first write to maps another agent pinned.
    let mut metrics = options.metrics_address.map(|_| Metrics::new());
    let (sinks, webhooks) = sinks(&options.sinks, metrics.as_ref())?;
    let policy = options.policy;
    let roots = Roots {
        host: &prepared.host,
        image_stores: &options.image_stores,
    };
    // The maps are filled before any program is attached, so the first exec
    // the programs see is already decided by the policy.
    let started = Instant::now();
    let (names, mut active) = first_drift(&mut ebpf, &compiled, &policy, prepared.adopted)?;
    let (mut registry, cgroups, mut changes) = containers(
        &mut ebpf,
        &mut active,
        &options.sources,
        policy.selects_from_the_api(),
    )
    .await?;
    // Also without vShields now: a reload may bring some.
    warn_without_overlay_lower(&prepared.layout);
    let change = active.apply(&mut ebpf, &policy.vshields, &policy.name, roots)?;
    let mut in_force = InForce {
        policy,
        generation: 1,
        paths: options.policy_paths,
    };
    let start_record = in_force.started(change, started);
    let ring: RingBuf<MapData> = maps::take(&mut ebpf, maps::EVENTS)?;
    let counters: Arc<PerCpuArray<MapData, u64>> = Arc::new(maps::take(&mut ebpf, maps::COUNTERS)?);
    let pinning = Pinning::new(&prepared, &counters, metrics.as_mut())?;

    let enricher = enricher(names, cgroups, &registry, &prepared.host);
    let (pipeline, mut notices) =
        Pipeline::start(ring, enricher, sinks, webhooks).map_err(AgentError::Pipeline)?;
    // Handlers before attaching: a signal from here on is a clean shutdown.
    let mut signals = Signals::install()?;

    let (attached, mut tracker) = attach_and_pin(
        &mut ebpf,
        (options.backend, options.track_writes),
        (&prepared.checks, &prepared.host),
        &mut active,
        &pinning,
        &in_force.policy.drift,
    )?;
    let mut watches = Watches::new(&in_force.paths, &options.image_stores);
    let (_control, mut queries) = listen(&options.control_socket, &prepared.host);
    let sampled = (counters.clone(), &pipeline, registry.catalog());
    let ops = Ops::start(options.metrics_address, metrics, &ebpf, sampled).await?;
    log_ready(&attached, &in_force);
    return_start_up_memory();
    pipeline.report(AuditEvent::Policy(Box::new(start_record)));

    let (mut health, mut rediscover) = (ticker(HEALTH_INTERVAL), ticker(CONTAINERS_INTERVAL));
    let mut books = Books::new(options.accounting_interval, &counters, &pipeline);
    let mut last = Health::default();
    let running = Running::new(&attached, &counters, &pipeline, started, &pinning);
    let signal_name = loop {
        let trigger = tokio::select! {
            _ = signals.term.recv() => break "SIGTERM",
            _ = signals.int.recv() => break "SIGINT",
            _ = signals.hup.recv() => Some(Trigger::Sighup),
            policy_or_store = watches.next() => Some(match policy_or_store {
                Changed::Policy => Trigger::Watch,
                Changed::ImageStores => Trigger::ImageStores,
            }),
            Some(query) = queries.recv() => {
                answer(query, &mut ebpf, &mut registry, &mut active, &in_force, tracker.state(), &running);
                None
            }
            Some(notice) = notices.recv() => {
                if let Err(error) = tracker.on_notice(&mut ebpf, &notice) {
                    tracing::error!(error = %crate::error_chain(&error), "updating the tracking state failed");
                }
                None
            }
            change = changes.next() => {
                registry.changed(&change).place_or_log(&mut ebpf, &mut active);
                None
            }
            _ = rediscover.tick() => {
                registry.discover().place_or_log(&mut ebpf, &mut active);
                None
            }
            _ = books.ticker.tick() => books.report(),
            _ = health.tick() => {
                ops.health.tick();
                let now = Health::read(&counters, &pipeline.counters().snapshot());
                now.report_increase(&last);
                last = now;
                None
            }
        };
        if let Some(trigger) = trigger
            && let Some(record) = in_force.reload(&mut ebpf, &mut active, roots, trigger)
        {
            pipeline.report(AuditEvent::Policy(Box::new(record)));
        }
    };
    ops.health.set_ready(false);
    let exit = (signal_name, prepared.store, options.uninstall.as_ref());
    shut_down(ebpf, pipeline, (&counters, &last), exit).await;
    Ok(())
}

/// Attaches what the backend and the policy in force need, then pins it and
/// only then unpins the generations before this agent (see [`crate::pins`]).
fn attach_and_pin(
    ebpf: &mut aya::Ebpf,
    (backend, track_writes): (BackendChoice, WriteTracking),
    (checks, host): (&SignalRoutes, &HostIdentity),
    active: &mut ActiveVShields,
    pinning: &Pinning,
    drift: &DriftRule,
) -> Result<(Attached, Tracker), AgentError> {
    let inherited = Tracker::prepare(ebpf, track_writes)?;
    seed_container_roots(ebpf, host)?;
    let links = &pinning.links;
    let attached = warn_fallback(backend::attach(ebpf, backend, checks, links)?);
    let tracker = Tracker::start(
        ebpf,
        track_writes,
        (&attached.tracking, inherited),
        host,
        links.clone(),
    )?;
    log_drift_methods(&attached, tracker.state(), drift);
    active.attach(ebpf, attached.kind, links.clone())?;
    let committed = links.commit(&pinning.maps_dir)?;
    tracing::info!(
        generation = links.number(),
        programs = committed.programs,
        retired = ?committed.retired,
        dir = %pinning.status.dir,
        "enforcement pinned: it stays in force when the agent stops, until `enforcer unload`"
    );
    Ok((attached, tracker))
}

/// Start-up parses the kernel's BTF (several MiB, tens of MiB of parsed
/// types) and reads the image stores; all of it is freed by now, but glibc's
/// allocator keeps freed memory that is not at the top of the heap. Giving
/// it back keeps the agent's resident memory what it uses while it runs.
fn return_start_up_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The line the tests and operators wait for: enforcement is on.
fn log_ready(attached: &Attached, in_force: &InForce) {
    tracing::info!(
        backend = %attached.kind,
        mode = %in_force.policy.drift.mode,
        policy = %in_force.policy.name,
        "enforcer ready"
    );
}

/// Where audit records go: the configured sinks, and the metrics' counters
/// when they are served.
type Sinks = (Vec<Box<dyn Sink>>, Vec<Arc<WebhookCounters>>);

fn sinks(specs: &[SinkSpec], metrics: Option<&Metrics>) -> Result<Sinks, SinkError> {
    let (mut sinks, mut webhooks) = (Vec::new(), Vec::new());
    for spec in specs {
        let opened = spec::open(spec)?;
        sinks.push(opened.sink);
        webhooks.extend(opened.webhook);
    }
    if let Some(metrics) = metrics {
        sinks.push(Box::new(metrics.sink()));
    }
    Ok((sinks, webhooks))
}

/// The metrics and probe endpoint (`--metrics-address`), and the state its
/// probes report.
#[derive(Debug)]
struct Ops {
    health: Arc<ops::Health>,
    /// Keeps the kernel counting the programs' run times.
    _stats: Option<std::os::fd::OwnedFd>,
}

impl Ops {
    /// Serves `metrics` at `address`, when asked for, with the kernel's
    /// counters, the pipeline's and the containers known, and the programs
    /// of `ebpf` counted and timed (BPF statistics on while the agent runs:
    /// a clock read per program run); ready from here on.
    async fn start(
        address: Option<std::net::SocketAddr>,
        metrics: Option<Metrics>,
        ebpf: &aya::Ebpf,
        (kernel, pipeline, catalog): (Arc<PerCpuArray<MapData, u64>>, &Pipeline, &Catalog),
    ) -> Result<Self, AgentError> {
        let health = Arc::new(ops::Health::default());
        health.set_ready(true);
        let (Some(address), Some(mut metrics)) = (address, metrics) else {
            return Ok(Self {
                health,
                _stats: None,
            });
        };
        let stats = match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => Some(fd),
            Err(error) => {
                tracing::warn!(
                    error = %crate::error_chain(&error),
                    "BPF statistics cannot be turned on (kernels before 5.8): the programs' run counts and \
                     times stay 0 in the metrics"
                );
                None
            }
        };
        let programs = ebpf
            .programs()
            .filter_map(|(name, program)| Some((name.to_owned(), program.info().ok()?.id())))
            .collect();
        metrics.sample(ops::Sampled {
            kernel,
            pipeline: pipeline.counters(),
            programs,
            catalog: catalog.clone(),
            maps: map_usage(ebpf),
        });
        let bound = ops::serve(address, Arc::new(metrics), health.clone())
            .await
            .map_err(AgentError::Ops)?;
        tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
        Ok(Self {
            health,
            _stats: stats,
        })
    }
}

/// The hash maps whose use the metrics report; one that cannot be opened
/// again is a warning, and left out.
fn map_usage(ebpf: &aya::Ebpf) -> Vec<ops::MapUsage> {
    use enforcer_common::{FileId, ReportKey, ReportWindow, VShieldKey, VShieldRule};
    use ops::MapUsage;
    [
        MapUsage::of::<FileId, u32>(ebpf, maps::VSHIELD_FILES),
        MapUsage::of::<VShieldKey, VShieldRule>(ebpf, maps::VSHIELD_RULES),
        MapUsage::of::<u64, u32>(ebpf, maps::CONTAINER_SCOPES),
        MapUsage::of::<u64, u32>(ebpf, maps::CONTAINER_DRIFT),
        MapUsage::of::<u64, u32>(ebpf, maps::WRITTEN_FILES),
        MapUsage::of::<ReportKey, ReportWindow>(ebpf, maps::REPORTED),
    ]
    .into_iter()
    .filter_map(|usage| {
        usage
            .inspect_err(|error| tracing::warn!(%error, "a map's use cannot be reported"))
            .ok()
    })
    .collect()
}

/// The first drift settings in the maps, before any program of this agent
/// is attached; what an agent before this one left in them (`adopted`) is
/// replaced entry by entry.
fn first_drift(
    ebpf: &mut aya::Ebpf,
    compiled: &policy::Compiled,
    policy: &Policy,
    adopted: bool,
) -> Result<(PolicyTable, ActiveVShields), AgentError> {
    let names = PolicyTable::default();
    let mut active = ActiveVShields::new(names.clone());
    if adopted {
        active.adopt(ebpf)?;
    }
    apply_drift(ebpf, compiled, policy, &mut active)?;
    Ok((names, active))
}

/// Writes the drift settings of `policy` and points the containers the
/// agent knows at theirs.
fn apply_drift(
    ebpf: &mut aya::Ebpf,
    compiled: &policy::Compiled,
    policy: &Policy,
    active: &mut ActiveVShields,
) -> Result<(), AgentError> {
    let base = policy::apply(ebpf, compiled)?;
    active.set_drift(
        ebpf,
        &policy.selected_drift,
        base,
        policy::drift_indices(policy, base),
    )?;
    Ok(())
}

/// What adds context to the kernel's records: the containers the registry
/// knows, and what the agent knows of the host.
fn enricher(
    policy: PolicyTable,
    cgroups: Arc<Mutex<CgroupIndex>>,
    registry: &Registry,
    host: &HostIdentity,
) -> Enricher {
    Enricher {
        clock: BootClock::now(),
        hostname: hostname(),
        policy,
        cgroups,
        containers: registry.catalog().clone(),
        proc_lineage: true,
        host_pid_ns: host.pid_ns,
        exe_cache: crate::audit::lineage::ExeCache::default(),
    }
}

/// Writes what is left of the audit stream, and says what the agent saw.
/// The programs stay attached by their pins.
async fn shut_down(
    ebpf: aya::Ebpf,
    pipeline: Pipeline,
    (counters, last): (&PerCpuArray<MapData, u64>, &Health),
    (signal, store, uninstall): (&str, Store, Option<&Uninstall>),
) {
    tracing::info!(
        signal,
        pinned = %store.root().display(),
        "shutting down: enforcement stays in force, pinned (`enforcer unload` removes it)"
    );
    // Pinned links keep the programs attached, and they keep the maps.
    drop(ebpf);
    if let Some(uninstall) = uninstall {
        unload_if_uninstalled(uninstall, store).await;
    }
    let final_stats = pipeline.stop().await;
    let final_health = Health::read(counters, &final_stats);
    final_health.report_increase(last);
    tracing::info!(
        execs_checked = final_health.kernel.exec_checked,
        drift_detected = final_health.kernel.drift_detected,
        drift_allowed_by_path = final_health.kernel.allowed_by_path,
        vshield_hits = final_health.kernel.vshield_hits,
        events_written = final_stats.written,
        events_lost = final_health.kernel.events_lost + final_stats.dropped,
        "stopped"
    );
}

/// Unloads what `store` holds when the agent's `DaemonSet` is being removed;
/// keeps it otherwise, and when the API cannot tell.
async fn unload_if_uninstalled(uninstall: &Uninstall, store: Store) {
    let DaemonSetRef { namespace, name } = &uninstall.daemonset;
    let asked = async {
        let client = kubernetes::client(uninstall.kubeconfig.as_deref())
            .await
            .map_err(|error| crate::error_chain(&error))?;
        kubernetes::daemonset_removed(client, namespace, name)
            .await
            .map_err(|error| crate::error_chain(&error))
    };
    let removed = match tokio::time::timeout(UNINSTALL_TIMEOUT, asked).await {
        Ok(Ok(removed)) => removed,
        Ok(Err(error)) => {
            return tracing::warn!(
                daemonset = %format!("{namespace}/{name}"),
                %error,
                "cannot tell whether the DaemonSet is being uninstalled: enforcement stays pinned \
                 (`enforcer unload` on the node removes it)"
            );
        }
        Err(_) => {
            return tracing::warn!(
                daemonset = %format!("{namespace}/{name}"),
                "the Kubernetes API did not answer within 5 s: enforcement stays pinned \
                 (`enforcer unload` on the node removes it)"
            );
        }
    };
    if !removed.is_removed() {
        return tracing::info!(
            daemonset = %format!("{namespace}/{name}"),
            "the DaemonSet stays (an update or a restart): enforcement stays pinned"
        );
    }
    let root = store.root().to_owned();
    // The lock goes first: unload takes the directory as no agent's.
    drop(store);
    match crate::pins::unload(&root) {
        Ok(unloaded) => tracing::warn!(
            daemonset = %format!("{namespace}/{name}"),
            found = ?removed,
            pins = unloaded.removed.len(),
            detached = unloaded.detached,
            "the DaemonSet is being uninstalled: enforcement unloaded"
        ),
        Err(error) => tracing::error!(
            error = %crate::error_chain(&error),
            "the DaemonSet is being uninstalled, but unloading failed: run `enforcer unload` on the node"
        ),
    }
}

/// Where events' cgroup ids are looked up (see [`crate::container`]).
fn cgroup_index() -> CgroupIndex {
    let mount = container::cgroup2_mount();
    if let Some(mount) = &mount {
        tracing::info!(
            cgroup2 = %mount.display(),
            "containers are named from their cgroups (containerd, CRI-O, Docker, Podman); the agent must \
             see the host's cgroup tree (host cgroup namespace)"
        );
    } else {
        tracing::warn!(
            "cgroup v2 is not mounted here: events carry cgroup ids but no container ids"
        );
    }
    CgroupIndex::new(mount)
}

/// `attached`, with a warning when it is the fallback.
fn warn_fallback(attached: Attached) -> Attached {
    if let Some(reason) = &attached.fallback_reason {
        tracing::warn!(
            %reason,
            "BPF LSM is not usable on this kernel; falling back to the signal backend: in enforce mode, drift \
             is killed with SIGKILL right after exec, before its first instruction, instead of being refused"
        );
    }
    attached
}

/// The control socket, or a warning and a channel that stays empty.
/// Peers are admitted as [`Trusted::agent`] says, with `host`'s mount
/// namespace.
fn listen(
    path: &std::path::Path,
    host: &HostIdentity,
) -> (Option<ControlSocket>, mpsc::Receiver<Incoming>) {
    match ControlSocket::bind(path, Trusted::agent(u64::from(host.mnt_ns))) {
        Ok((socket, queries)) => {
            tracing::info!(socket = %socket.path().display(), "control socket listening (enforcer vshield list)");
            (Some(socket), queries)
        }
        Err(error) => {
            tracing::warn!(
                error = %crate::error_chain(&error),
                "no control socket: `enforcer vshield list` cannot reach this agent"
            );
            // The sender is dropped: `recv` returns None, which the loop skips.
            (None, mpsc::channel(1).1)
        }
    }
}

/// The kernel's layout, the signal backend's checks, the host's identity,
/// and the kernel object loaded for them (nothing attached yet).
/// What start-up prepares before the policy goes in, beside the loaded
/// object.
struct Prepared {
    layout: Layout,
    checks: SignalRoutes,
    host: HostIdentity,
    /// The pin directory, opened, and the generations pinned in it before.
    store: Store,
    before: Vec<Generation>,
    /// Where the object's maps are pinned, and whether they were already
    /// (see [`backend::Loaded`]).
    maps_dir: PathBuf,
    adopted: bool,
}

fn load(options: &RunOptions) -> Result<(Prepared, aya::Ebpf), AgentError> {
    let store = Store::open(&options.pin_dir)?;
    let before = store.generations()?;
    let layout = kernel_layout(options.btf.as_deref())?;
    let script_check = script_check(&layout);
    let checks = signal_routes(&layout, &script_check, options.signal_mmap_check);
    let host = host(options.host_pid)?;
    let config = agent_config(
        &host,
        &checks,
        script_check.unwrap_or(0),
        options.rate_limit,
    );
    let loaded = backend::load_object(
        &layout.offsets,
        &layout.mmap_offsets,
        &layout.task_offsets,
        &layout.mount_offsets,
        &layout.overlay_lower,
        &config,
        &store,
    )?;
    let prepared = Prepared {
        layout,
        checks,
        host,
        store,
        before,
        maps_dir: loaded.maps,
        adopted: loaded.adopted,
    };
    Ok((prepared, loaded.ebpf))
}

/// The container registry, with the containers running now placed (before
/// the first policy is applied, which places them in its scopes).
async fn containers(
    ebpf: &mut aya::Ebpf,
    active: &mut ActiveVShields,
    options: &Sources,
    labels_selected: bool,
) -> Result<(Registry, Arc<Mutex<CgroupIndex>>, Changes), AgentError> {
    let (pods, pod_changes) = watch_pods(options.kubernetes.as_ref(), labels_selected).await?;
    let (sender, container_changes) = mpsc::unbounded_channel();
    let cri = cri::start(&options.cri_sockets, &sender).map_err(AgentError::Cri)?;
    keep_open(sender);
    let cgroups = Arc::new(Mutex::new(cgroup_index()));
    let mut registry = Registry::new(
        cgroups.clone(),
        Catalog::default(),
        PodmanStore::new(&options.podman_storage),
    );
    if let Some(pods) = pods {
        registry = registry.with_pods(pods);
    }
    if let Some(cri) = cri {
        registry = registry.with_cri(cri);
    }
    match container::cgroup_watch::start(&cgroups) {
        Ok(Some(watch)) => registry = registry.with_cgroup_watch(watch),
        Ok(None) => {}
        Err(error) => tracing::warn!(
            %error,
            "watching the cgroup tree for new groups failed: a container that is gone before its records \
             are written (short-lived, on a loaded node) is named from a scan when one finds it, or not at all"
        ),
    }
    let discovery = registry.discover();
    tracing::info!(
        containers = discovery.found.len(),
        podman_storage = %options.podman_storage.display(),
        "containers found from their cgroups"
    );
    discovery.place(ebpf, active)?;
    let changes = Changes {
        pods: pod_changes,
        containers: container_changes,
    };
    Ok((registry, cgroups, changes))
}

/// What the sources of container metadata report as changed.
#[derive(Debug)]
struct Changes {
    /// The UIDs of pods the Kubernetes API reported changes of.
    pods: PodChanges,
    /// The ids of containers a CRI runtime reported changes of.
    containers: mpsc::UnboundedReceiver<BTreeSet<String>>,
}

impl Changes {
    /// The next change reported; cancel-safe.
    async fn next(&mut self) -> Change {
        tokio::select! {
            Some(uids) = self.pods.recv() => Change::Pods(uids),
            Some(ids) = self.containers.recv() => Change::Containers(ids),
            else => std::future::pending().await,
        }
    }
}

/// Keeps `sender`'s receiver open (and quiet) after its sources have gone
/// or were never started.
fn keep_open<T: Send + 'static>(sender: mpsc::UnboundedSender<T>) {
    tokio::spawn(async move {
        sender.closed().await;
    });
}

/// The UIDs of pods the Kubernetes API reported changes of.
type PodChanges = mpsc::UnboundedReceiver<BTreeSet<String>>;

/// Starts the watch of this node's pods, when asked for: the pods it keeps,
/// and the UIDs of those that change. Without it, the receiver never
/// yields.
async fn watch_pods(
    options: Option<&KubernetesOptions>,
    labels_selected: bool,
) -> Result<(Option<SharedPods>, PodChanges), AgentError> {
    let (sender, changes) = mpsc::unbounded_channel();
    let Some(options) = options else {
        if labels_selected {
            tracing::warn!(
                "a vShield or DriftPolicy selects pod labels or container kinds but the agent does not watch \
                 the Kubernetes API (--kubernetes-node): container kinds are never known, and pod labels only \
                 from a CRI runtime's socket (--cri-socket); where they are not known, those vShields apply to \
                 the pod's containers (as to unknown containers), the strictest DriftPolicy applies to them, \
                 and neither to a container outside a pod"
            );
        }
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            tracing::warn!(
                "running in a Kubernetes pod without --kubernetes-node (NODE_NAME): pods are named from the CRI \
                 API and their runtime's OCI annotations only: no container kinds, and labels as they were \
                 when each pod started"
            );
        }
        keep_open(sender);
        return Ok((None, changes));
    };
    let client = kubernetes::client(options.kubeconfig.as_deref()).await?;
    let pods = SharedPods::default();
    tracing::info!(node = %options.node, "Kubernetes: watching the node's pods");
    tokio::spawn(kubernetes::watch(
        client,
        options.node.clone(),
        pods.clone(),
        sender,
    ));
    Ok((Some(pods), changes))
}

/// Places a container its runtime's OCI hook announced, before the hook
/// returns (and the container's program runs).
/// An OCI hook's request, once the kernel has vouched for what it claims
/// ([`control::check_claims`]); the answer, and its audit record.
fn starting(
    ebpf: &mut aya::Ebpf,
    (registry, active): (&mut Registry, &mut ActiveVShields),
    state: &HookState,
    peer: &Peer,
) -> (Reply, ControlEvent) {
    let mut event = ControlEvent {
        at: time::OffsetDateTime::now_utc(),
        outcome: "refused",
        request: "container-starting".to_owned(),
        access: "change",
        peer: peer.to_record(),
        reason: None,
        container_id: Some(state.id.clone()),
        suppressed: 0,
    };
    let placed = control::check_claims(peer, state)
        .and_then(|()| {
            registry
                .starting(state)
                .map_err(|error| crate::error_chain(&error))
        })
        .and_then(|known| {
            let image = known.info.image.as_ref().map(ToString::to_string);
            let id = known.info.id.clone();
            active
                .place(ebpf, vec![known])
                .map_err(|error| crate::error_chain(&error))?;
            Ok((id, image))
        });
    match placed {
        Ok((id, image)) => {
            let scope = active.scope_of(&id);
            tracing::info!(
                container.id = %id,
                container.image = image.as_deref().unwrap_or("unknown"),
                scope,
                "container announced by its OCI hook: placed before its first exec"
            );
            event.outcome = "placed";
            (
                Reply::ContainerPlaced(PlacedReply { id, image, scope }),
                event,
            )
        }
        Err(reason) => {
            tracing::warn!(container.id = %state.id, %reason, "OCI hook request refused");
            event.reason = Some(reason.clone());
            (Reply::Error(format!("refused: {reason}")), event)
        }
    }
}

/// A tick every `period`; late ticks are not made up for.
fn ticker(period: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// Answers a flush request once the pipeline has written everything the
/// kernel recorded so far, without holding up the main loop.
fn flush(pipeline: &Pipeline, reply: tokio::sync::oneshot::Sender<Reply>) {
    let flushed = pipeline.flush();
    let counters = pipeline.counters();
    tokio::spawn(async move {
        let answer = match flushed.await {
            Ok(()) => Reply::Flushed(FlushedReply {
                written: counters.written.load(std::sync::atomic::Ordering::Relaxed),
            }),
            Err(_) => Reply::Error("the audit pipeline is stopping or busy".to_owned()),
        };
        let _ = reply.send(answer);
    });
}

/// The signals the agent acts on.
#[derive(Debug)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, AgentError> {
        let install = |kind| signal(kind).map_err(AgentError::Signals);
        Ok(Self {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
            hup: install(SignalKind::hangup())?,
        })
    }
}

/// What the control socket's answers read that stays put while the agent
/// runs.
struct Running<'a> {
    attached: &'a Attached,
    counters: &'a PerCpuArray<MapData, u64>,
    pipeline: &'a Pipeline,
    started: Instant,
    pinning: &'a Pinning,
}

impl<'a> Running<'a> {
    const fn new(
        attached: &'a Attached,
        counters: &'a PerCpuArray<MapData, u64>,
        pipeline: &'a Pipeline,
        started: Instant,
        pinning: &'a Pinning,
    ) -> Self {
        Self {
            attached,
            counters,
            pipeline,
            started,
            pinning,
        }
    }
}

/// What this agent took over from the ones before it, for the log and
/// `enforcer status`.
#[derive(Debug)]
struct Pinning {
    status: PinningStatus,
    /// This agent's generation of links.
    links: Links,
    /// Where its maps are pinned.
    maps_dir: PathBuf,
}

impl Pinning {
    /// `before`: the generations pinned when this agent started; `adopted`:
    /// whether their maps were this agent's layout (see [`backend::Loaded`]).
    fn new(
        prepared: &Prepared,
        counters: &PerCpuArray<MapData, u64>,
        metrics: Option<&mut Metrics>,
    ) -> Result<Self, PinError> {
        let (store, before, adopted) = (&prepared.store, &prepared.before, prepared.adopted);
        let links = store.begin()?;
        let inherited = stats::read(counters).unwrap_or_default();
        let status = PinningStatus {
            dir: store.root().display().to_string(),
            generation: links.number(),
            adopted_maps: adopted,
            replaced: before
                .iter()
                .map(|generation| generation.name.clone())
                .collect(),
            pinned_since: before
                .first()
                .and_then(|generation| generation.pinned_at)
                .and_then(|at| {
                    time::OffsetDateTime::from(at)
                        .format(&time::format_description::well_known::Rfc3339)
                        .ok()
                }),
            events_lost_before_start: if adopted { inherited.events_lost } else { 0 },
        };
        if let Some(metrics) = metrics {
            metrics.pinning(status.generation, adopted, status.events_lost_before_start);
        }
        if before.is_empty() {
            tracing::info!(dir = %store.root().display(), "no enforcement pinned before this agent");
        } else {
            tracing::info!(
                dir = %store.root().display(),
                generations = ?status.replaced,
                adopted_maps = adopted,
                events_lost_before_start = status.events_lost_before_start,
                "enforcement was pinned by an agent before this one: it stays in force until this one's is \
                 attached; {}",
                if adopted {
                    "its maps (policy, containers, written files, unread records) are this agent's now"
                } else {
                    "its maps have another ABI or layout and are replaced"
                }
            );
        }
        Ok(Self {
            status,
            links,
            maps_dir: prepared.maps_dir.clone(),
        })
    }
}

/// The main loop's answer to a control request.
fn answer(
    incoming: Incoming,
    ebpf: &mut aya::Ebpf,
    registry: &mut Registry,
    active: &mut ActiveVShields,
    in_force: &InForce,
    tracking: &TrackingState,
    running: &Running<'_>,
) {
    let query = match incoming {
        Incoming::Refused(event) => {
            return running.pipeline.report(AuditEvent::Control(event));
        }
        Incoming::Query(query) => query,
    };
    let reply = match query.request {
        Request::Flush => return flush(running.pipeline, query.reply),
        Request::ContainerStarting(state) => {
            let (reply, event) = starting(ebpf, (registry, active), &state, &query.peer);
            running
                .pipeline
                .report(AuditEvent::Control(Box::new(event)));
            reply
        }
        Request::VShields => match active.list(ebpf) {
            Ok(vshields) => Reply::VShields(VShieldsReply {
                policy: in_force.policy.name.clone(),
                generation: in_force.generation,
                backend: running.attached.kind.to_string(),
                decided: active.decided(),
                vshields,
            }),
            Err(error) => Reply::Error(crate::error_chain(&error)),
        },
        Request::Status => Reply::Status(Box::new(status(
            ebpf, registry, in_force, tracking, running,
        ))),
    };
    // The client may have gone; it does not need the answer then.
    let _ = query.reply.send(reply);
}

/// What `enforcer status` shows: the kernel's view of the programs (which
/// have a BPF link), the policy in force and every counter.
fn status(
    ebpf: &aya::Ebpf,
    registry: &Registry,
    in_force: &InForce,
    tracking: &TrackingState,
    running: &Running<'_>,
) -> StatusReply {
    let linked: BTreeSet<u32> = aya::programs::loaded_links()
        .flatten()
        .map(|link| link.program_id())
        .collect();
    let mut programs: Vec<ProgramStatus> = ebpf
        .programs()
        .map(|(name, program)| {
            let info = program.info().ok();
            ProgramStatus {
                name: name.to_owned(),
                loaded: info.is_some(),
                attached: info
                    .as_ref()
                    .is_some_and(|info| linked.contains(&info.id())),
                runs: info
                    .as_ref()
                    .map_or(0, aya::programs::ProgramInfo::run_count),
                run_time_ns: info.as_ref().map_or(0, |info| {
                    u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX)
                }),
            }
        })
        .collect();
    programs.sort_by(|a, b| a.name.cmp(&b.name));
    let kernel = stats::read(running.counters).unwrap_or_default();
    let pipeline = running.pipeline.counters().snapshot();
    let counters = kernel
        .named()
        .into_iter()
        .map(|(name, _, value)| (format!("kernel.{name}"), value))
        .chain(
            pipeline
                .named()
                .into_iter()
                .map(|(name, _, value)| (format!("pipeline.{name}"), value)),
        )
        .chain(
            pipeline
                .webhook
                .iter()
                .flat_map(WebhookStats::named)
                .map(|(name, _, value)| (format!("webhook.{name}"), value)),
        )
        .collect();
    let policy = &in_force.policy;
    StatusReply {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: running.started.elapsed().as_secs(),
        backend: running.attached.kind.to_string(),
        fallback_reason: running.attached.fallback_reason.clone(),
        kernel: KernelStatus {
            release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            lsm: std::fs::read_to_string("/sys/kernel/security/lsm").map_or_else(
                |error| format!("unreadable: {error}"),
                |lsm| lsm.trim().to_owned(),
            ),
            tracking: match tracking {
                TrackingState::Attached => "attached".to_owned(),
                TrackingState::OnDemand => {
                    "on demand (no container runs from a root that is not overlayfs)".to_owned()
                }
                TrackingState::Off(why) => format!("off: {why}"),
            },
        },
        programs,
        policy: PolicyStatus {
            name: policy.name.clone(),
            generation: in_force.generation,
            paths: in_force
                .paths
                .iter()
                .map(|path| path.display().to_string())
                .collect(),
            mode: policy.drift.mode.to_string(),
            drift_policies: policy
                .selected_drift
                .iter()
                .map(|selected| selected.name.clone())
                .collect(),
            vshields: policy.vshields.len(),
        },
        pinning: running.pinning.status.clone(),
        containers: registry
            .catalog()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len(),
        counters,
    }
}

fn warn_without_overlay_lower(layout: &Layout) {
    if let Err(reason) = &layout.overlay_lower_source {
        tracing::warn!(
            %reason,
            "where overlayfs keeps an overlay inode's lower inode is unknown on this kernel: files in containers \
             are identified by their overlay inode, so vShields match only in containers running now, and a \
             copy-up of a shielded file escapes its vShield"
        );
    }
}

/// Which optional signal-backend routes can run.
fn signal_routes(
    layout: &Layout,
    script_check: &Result<u64, String>,
    mmap_check: bool,
) -> SignalRoutes {
    SignalRoutes {
        scripts: script_check.clone().map(drop),
        interpreter: layout.syscall_mmap.clone(),
        mappings: if mmap_check {
            layout.syscall_mmap.clone()
        } else {
            Err(
                "off; --signal-mmap-check turns it on, at a cost to every system call on the host"
                    .to_owned(),
            )
        },
    }
}

/// Says whether what container processes do to mounts is seen.
fn log_mount_changes(attached: &Attached) {
    match (&attached.mount_changes, attached.kind) {
        (Ok(()), BackendKind::Lsm) => tracing::info!(
            "filesystems that container processes create or remount, mount namespaces in which they mount, \
             move or re-flag anything (mount, mount_setattr, move_mount, fsconfig; every system call gate), \
             and containers that did so with the host's privileges are marked: no read-only flag there is \
             trusted"
        ),
        (Ok(()), BackendKind::Signal) => tracing::warn!(
            "signal backend: mount namespaces in which container processes mount, move or re-flag anything \
             (mount, mount_setattr, move_mount, fsconfig; both system call gates), and containers that did so \
             with the host's privileges, are marked: no read-only flag there is trusted; no filesystem is \
             marked by itself"
        ),
        (Err(reason), _) => tracing::warn!(
            %reason,
            "what container processes do to mounts is NOT seen: a privileged container (CAP_SYS_ADMIN) can \
             fill a filesystem and make it read-only, and what it holds then runs as image content"
        ),
    }
}

/// Says at start-up which drift routes are decided, and how.
fn log_drift_methods(attached: &Attached, tracking: &TrackingState, rule: &DriftRule) {
    let verdict = |allowed: bool| if allowed { "allowed" } else { "drift" };
    let non_overlay_root = match tracking {
        TrackingState::Attached => {
            "files written, created, made executable, renamed or linked by container processes since tracking \
             started are drift"
        }
        TrackingState::OnDemand => {
            "tracked from when the first container on such a root runs a program; files written, created, made \
             executable, renamed or linked by container processes from then on are drift"
        }
        TrackingState::Off(_) => {
            "NOT TRACKED: files on a container root that is not overlayfs are allowed"
        }
    };
    tracing::info!(
        overlay_root = "files with an upper-layer copy are drift, however the root is reached",
        non_overlay_root,
        memfd = verdict(rule.allow_memfd),
        writable_mounts = verdict(rule.allow_writable_mounts),
        read_only_mounts = "allowed where the host or the runtime made them read-only",
        container_mounts = "drift: filesystems of a user namespace, read-only flags set in one, detached \
                            mounts, overlays of a user namespace over writable files",
        allowed_paths = ?rule.allowed_paths,
        exec_sessions = if rule.audit_exec_sessions { "audited" } else { "as the mode says" },
        "drift detection"
    );
    log_mount_changes(attached);
    let Some(signal) = &attached.signal else {
        tracing::info!(
            "routes decided before anything runs: exec (also scripts and execveat), executable mappings by the \
             dynamic loader, LD_PRELOAD and dlopen (mmap), mprotect to executable"
        );
        return;
    };
    tracing::info!(
        "signal backend: execs of a drift file are decided, by SIGKILL before the program's first instruction"
    );
    match &signal.scripts {
        Ok(()) => tracing::info!(
            "signal backend: scripts are decided, every level of nested scripts: the interpreter is killed \
             before it reads a dropped script; a script whose file cannot be found is refused and reported \
             (layer unresolved)"
        ),
        Err(reason) => tracing::warn!(
            %reason,
            "signal backend: scripts are NOT decided: a dropped script runs under its image interpreter"
        ),
    }
    match &signal.interpreter {
        Ok(()) => tracing::info!(
            "signal backend: the ELF interpreter (dynamic loader) of every exec is decided, by SIGKILL before \
             the program's first instruction"
        ),
        Err(reason) => tracing::warn!(
            %reason,
            "signal backend: the ELF interpreter of an exec is NOT decided: a dropped loader written over the \
             image's runs under the name of every dynamic program"
        ),
    }
    if let Some(reason) = &signal.scripts_bounded {
        tracing::warn!(
            %reason,
            "signal backend: an exec that releases more than 256 files (close-on-exec descriptors) leaves its \
             script unresolved: refused and reported as such"
        );
    }
    match &signal.failed_exec {
        Ok(()) => tracing::info!(
            "signal backend: an exec of a drift file that fails with ENOEXEC (a script without #!) is decided at \
             system call exit: the caller is killed before it can run the file itself"
        ),
        Err(reason) => tracing::warn!(
            %reason,
            "signal backend: a dropped script without #! is NOT decided: the shell that ran it runs it itself \
             after execve fails with ENOEXEC"
        ),
    }
    match &signal.mappings {
        Ok(()) => tracing::info!(
            "signal backend: executable mappings of a drift file (the dynamic loader running a dropped program, \
             LD_PRELOAD, dlopen) are decided at mmap entry, through both system call gates (mmap, mmap2, old_mmap): \
             the process is killed before mmap returns"
        ),
        Err(reason) => tracing::warn!(
            %reason,
            "signal backend: executable mappings are NOT decided: the dynamic loader running a dropped program, \
             LD_PRELOAD and dlopen of a dropped library run"
        ),
    }
    match &signal.mprotect {
        Ok(()) => tracing::info!(
            "signal backend: mprotect and pkey_mprotect adding PROT_EXEC to a mapping of a drift file are decided at \
             system call entry, through both system call gates"
        ),
        Err(reason) => tracing::warn!(
            %reason,
            "signal backend: mprotect adding PROT_EXEC to a mapping of a dropped file is NOT decided"
        ),
    }
}

/// What the health check compares between ticks.
#[derive(Clone, Copy, Debug, Default)]
struct Health {
    kernel: KernelCounters,
    pipeline: PipelineStats,
}

/// When the next accounting record is due, and what the last one counted.
struct Books<'a> {
    ticker: tokio::time::Interval,
    last: Losses,
    last_at: Instant,
    counters: &'a PerCpuArray<MapData, u64>,
    pipeline: &'a Pipeline,
}

impl<'a> Books<'a> {
    fn new(
        interval: Duration,
        counters: &'a PerCpuArray<MapData, u64>,
        pipeline: &'a Pipeline,
    ) -> Self {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            ticker,
            last: Losses::default(),
            last_at: Instant::now(),
            counters,
            pipeline,
        }
    }

    /// Writes the accounting record, when one is due; for the main loop,
    /// which has no trigger from it.
    fn report(&mut self) -> Option<Trigger> {
        let now = Health::read(self.counters, &self.pipeline.counters().snapshot());
        if let Some(accounting) = self.due(&now) {
            self.pipeline
                .report(AuditEvent::Accounting(Box::new(accounting)));
        }
        None
    }

    /// The accounting record for what was lost or left out since the last
    /// one; none when nothing was.
    fn due(&mut self, now: &Health) -> Option<Accounting> {
        let total = now.losses();
        let since = total.since(&self.last);
        if !since.any() {
            return None;
        }
        let record = Accounting {
            at: time::OffsetDateTime::now_utc(),
            period_s: self.last_at.elapsed().as_secs(),
            since,
            total,
        };
        self.last = total;
        self.last_at = Instant::now();
        Some(record)
    }
}

impl Health {
    fn read(counters: &PerCpuArray<MapData, u64>, pipeline: &PipelineStats) -> Self {
        let kernel = stats::read(counters).unwrap_or_else(|error| {
            tracing::error!(%error, "reading kernel counters failed");
            KernelCounters::default()
        });
        Self {
            kernel,
            pipeline: *pipeline,
        }
    }

    fn losses(&self) -> Losses {
        Losses {
            suppressed: self.kernel.events_suppressed,
            lost: self.kernel.events_lost,
            dropped: self.pipeline.dropped,
            undecodable: self.pipeline.decode_errors,
            sink_errors: self.pipeline.sink_errors,
            undelivered: self
                .pipeline
                .webhook
                .map_or(0, |webhook| webhook.undelivered()),
        }
    }

    /// Warns about every loss counter that grew since `before`.
    fn report_increase(&self, before: &Self) {
        let grew = |now: u64, then: u64| now.saturating_sub(then);
        let checks = [
            (
                grew(self.kernel.events_lost, before.kernel.events_lost),
                "audit events lost: the kernel ring buffer was full",
            ),
            (
                grew(self.pipeline.dropped, before.pipeline.dropped),
                "audit events dropped: the sinks were too slow",
            ),
            (
                grew(self.pipeline.decode_errors, before.pipeline.decode_errors),
                "audit records could not be decoded",
            ),
            (
                grew(self.pipeline.sink_errors, before.pipeline.sink_errors),
                "audit sink writes failed",
            ),
            (
                grew(self.kernel.read_errors, before.kernel.read_errors),
                "kernel reads failed during checks: each one reported (layer read-error), refused for container \
                 processes in enforce mode, allowed for others",
            ),
            (
                grew(self.kernel.unchecked_mounts, before.kernel.unchecked_mounts),
                "container files ran from read-only mounts this kernel cannot check for a writable mount of the same \
                 filesystem: allowed, each reported (layer unchecked-mount)",
            ),
            (
                grew(self.kernel.signal_failed, before.kernel.signal_failed),
                "SIGKILL could not be sent to drift processes; they ran",
            ),
            (
                grew(
                    self.kernel.written_table_full,
                    before.kernel.written_table_full,
                ),
                "the table of files written in containers is full: those files are not tracked as drift",
            ),
            (
                grew(self.kernel.path_unresolved, before.kernel.path_unresolved),
                "drift files whose path in the container could not be built (over 1024 bytes or 64 components and mount crossings, \
                 or not in the container's mount namespace): not allowed by --allow-path",
            ),
            (
                grew(
                    self.kernel.script_unresolved,
                    before.kernel.script_unresolved,
                ),
                "scripts run in containers whose file the signal backend could not find (more files released by \
                 the exec than the walk takes, or released early): refused in enforce mode and reported",
            ),
        ];
        for (count, what) in checks {
            if count > 0 {
                tracing::warn!(count, "{what}");
            }
        }
    }
}
