//! The running agent's local control socket: a Unix socket, owner-only,
//! one JSON request line and one JSON reply line per connection. The agent's
//! main loop answers ([`Incoming`]), since it owns the kernel object; the socket
//! tasks only carry bytes, and only for a peer the kernel vouches for
//! ([`Trusted`]).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use crate::{
    active::Listed,
    audit::record::{ControlEvent, ControlPeer},
    container::registry::HookState,
};

/// Where `enforcer run` listens and the other commands ask by default.
pub const DEFAULT_SOCKET: &str = "/run/enforcer/control.sock";

/// A request longer than this is refused (an OCI hook's request carries
/// the container's annotations).
const MAX_REQUEST: u64 = 256 * 1024;
/// A client that sends nothing for this long is dropped; the client gives
/// up on an agent that does not answer within it.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Requests the socket takes in a second, on average (a burst of twice as
/// many); more are refused, so that a peer looping on the socket cannot
/// keep the main loop from its work.
const REQUESTS_PER_SECOND: u32 = 20;
/// Refusals recorded per 10 s; the others are counted and the next record
/// says how many.
const REFUSAL_RECORDS_PER_10S: u32 = 10;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// The vShields in force, with their hit counts.
    #[serde(rename = "vshields")]
    VShields,
    /// A container runtime's OCI hook: this container is about to start;
    /// the answer comes once its policy is in the kernel.
    ContainerStarting(HookState),
    /// The answer comes once every event the kernel recorded before the
    /// request is written to the sinks.
    Flush,
    /// The agent's backend, kernel, programs, policy and counters.
    Status,
}

impl Request {
    /// Its name on the wire.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::VShields => "vshields",
            Self::ContainerStarting(_) => "container-starting",
            Self::Flush => "flush",
            Self::Status => "status",
        }
    }

    /// `read` for what only reports, `change` for what changes the agent's
    /// state or holds its pipeline (an OCI hook's placement, a flush).
    pub const fn access(&self) -> &'static str {
        match self {
            Self::VShields | Self::Status => "read",
            Self::ContainerStarting(_) | Self::Flush => "change",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    #[serde(rename = "vshields")]
    VShields(VShieldsReply),
    ContainerPlaced(PlacedReply),
    Flushed(FlushedReply),
    Status(Box<StatusReply>),
    Error(String),
}

/// The answer to [`Request::Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    pub version: String,
    pub uptime_seconds: u64,
    /// `lsm` or `signal`.
    pub backend: String,
    /// Why the backend is the signal backend although lsm was preferred.
    pub fallback_reason: Option<String>,
    pub kernel: KernelStatus,
    /// The agent's kernel programs, and whether the kernel has them attached
    /// (a BPF link to them exists).
    pub programs: Vec<ProgramStatus>,
    pub policy: PolicyStatus,
    /// Where enforcement is pinned, and what this agent took over.
    pub pinning: PinningStatus,
    /// Containers the agent knows (running, and recently exited ones).
    pub containers: usize,
    /// The kernel programs' and the audit pipeline's counters, by name.
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// Enforcement that outlives the agent (see `crate::pins`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinningStatus {
    /// The pin directory.
    pub dir: String,
    /// This agent's generation of pinned programs.
    pub generation: u64,
    /// Whether this agent took over the maps an agent before it pinned
    /// (same ABI and map layout): its policy entries, containers, written
    /// files, counters and unread records.
    pub adopted_maps: bool,
    /// The generations pinned when this agent started, which it replaced.
    pub replaced: Vec<String>,
    /// When the oldest of those was pinned (RFC 3339), if any.
    pub pinned_since: Option<String>,
    /// Records the kernel could not keep before this agent started (its
    /// ring buffer was full while no agent read it), when it adopted the
    /// maps.
    pub events_lost_before_start: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelStatus {
    /// `uname -r`.
    pub release: String,
    /// The active LSMs (`/sys/kernel/security/lsm`).
    pub lsm: String,
    /// Whether write tracking on roots that are not overlayfs is attached,
    /// and why not.
    pub tracking: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramStatus {
    pub name: String,
    /// In the kernel (the object's other programs are for another backend
    /// or route, or were refused).
    pub loaded: bool,
    pub attached: bool,
    /// Runs and time in it, while BPF statistics are on (with
    /// `--metrics-address`); 0 otherwise.
    pub runs: u64,
    pub run_time_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// `rule.ruleset` of the policy in force.
    pub name: String,
    pub generation: u64,
    /// Where it is read from (empty: the built-in policy).
    pub paths: Vec<String>,
    /// The `DriftPolicy` for every container: its mode.
    pub mode: String,
    /// The `DriftPolicy`s with selectors, in precedence order.
    pub drift_policies: Vec<String>,
    pub vshields: usize,
}

/// The answer to [`Request::Flush`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushedReply {
    /// Audit records written since the agent started (each one JSON line
    /// on stdout), the flushed ones included.
    pub written: u64,
}

/// The answer to [`Request::ContainerStarting`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedReply {
    pub id: String,
    /// `name:tag@digest`, when known.
    pub image: Option<String>,
    /// Its vShield scope code (see `enforcer_common::scope`).
    pub scope: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VShieldsReply {
    /// `rule.ruleset` of the policy in force.
    pub policy: String,
    pub generation: u64,
    /// `lsm` or `signal`.
    pub backend: String,
    /// vShield operations the backend decides (`exec`, `open`, `load`).
    pub decided: Vec<String>,
    pub vshields: Vec<Listed>,
}

/// A request for the main loop, with who asked and where its answer goes.
#[derive(Debug)]
pub struct Query {
    pub request: Request,
    pub peer: Peer,
    pub reply: oneshot::Sender<Reply>,
}

/// What the control socket hands the main loop.
#[derive(Debug)]
pub enum Incoming {
    /// A request from an admitted peer, to answer.
    Query(Query),
    /// A request refused (or a peer refused before it asked), to record.
    Refused(Box<ControlEvent>),
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: another agent answers there")]
    InUse { path: PathBuf },
    #[error(
        "control socket {path}: {source} (is `enforcer run` running, with this --control-socket?)"
    )]
    NoAgent {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: {what}")]
    Protocol { path: PathBuf, what: String },
}

/// Who may talk to the agent, by what the kernel says of the peer
/// (`SO_PEERCRED`) rather than by who can reach the socket file: a
/// container with a hostPath of `/run` reaches it. A peer must run as the
/// agent's user (root) in the host's mount namespace, or in the agent's
/// own (an operator's `kubectl exec` into the agent's pod). A container
/// process is in neither, whatever its uid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trusted {
    pub uid: u32,
    /// Inode numbers of the trusted mount namespaces.
    pub mount_namespaces: Vec<u64>,
}

impl Trusted {
    /// The agent's user, the host's mount namespace (`host_mnt_ns`) and the
    /// agent's own.
    pub fn agent(host_mnt_ns: u64) -> Self {
        let mut mount_namespaces = vec![host_mnt_ns];
        if let Ok(own) = namespace_of("self")
            && own != host_mnt_ns
        {
            mount_namespaces.push(own);
        }
        Self {
            // SAFETY: geteuid cannot fail.
            uid: unsafe { libc::geteuid() },
            mount_namespaces,
        }
    }

    /// Whether `peer` may send requests; why not.
    pub fn admit(&self, peer: &Peer) -> Result<(), Refusal> {
        if peer.uid != self.uid {
            return Err(Refusal::User { uid: peer.uid });
        }
        let Some(pid) = peer.pid else {
            return Err(Refusal::NoPid);
        };
        match &peer.mount_namespace {
            Ok(ns) if self.mount_namespaces.contains(ns) => Ok(()),
            Ok(ns) => Err(Refusal::Namespace { pid, ns: *ns }),
            Err(reason) => Err(Refusal::Unreadable {
                pid,
                reason: reason.clone(),
            }),
        }
    }
}

/// What the kernel says of a connected peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
    /// The inode number of its mount namespace, or why it could not be
    /// read (the process is gone).
    pub mount_namespace: Result<u64, String>,
}

impl Peer {
    /// As audit records name it.
    pub fn to_record(&self) -> ControlPeer {
        ControlPeer {
            pid: self.pid,
            uid: self.uid,
            mount_namespace: self.mount_namespace.as_ref().ok().copied(),
        }
    }

    fn of(stream: &UnixStream) -> Result<Self, Refusal> {
        let cred = stream.peer_cred().map_err(|error| Refusal::Unreadable {
            pid: 0,
            reason: error.to_string(),
        })?;
        let pid = cred.pid();
        let mount_namespace = pid.map_or_else(
            || Err("no pid".to_owned()),
            |pid| {
                // The pid may name another process by the time /proc is
                // read (the peer exited, the number was reused). A pidfd
                // pins the peer: the kernel's own (SO_PEERPIDFD, 6.5+), or
                // one opened at once on older kernels (a far narrower
                // window). The process read is the peer if it still runs
                // after the read.
                let pidfd = peer_pidfd(stream, pid).map_err(|error| format!("pidfd: {error}"))?;
                let namespace =
                    namespace_of(&pid.to_string()).map_err(|error| error.to_string())?;
                if is_running(&pidfd) {
                    Ok(namespace)
                } else {
                    Err("the peer exited before it could be checked".to_owned())
                }
            },
        );
        Ok(Self {
            uid: cred.uid(),
            pid,
            mount_namespace,
        })
    }
}

/// A pidfd of the peer of `stream`, whose pid `SO_PEERCRED` says is `pid`.
fn peer_pidfd(stream: &UnixStream, pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    let mut fd: libc::c_int = -1;
    let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: getsockopt into an int this function owns, with its size.
    let got = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&raw mut fd).cast(),
            &raw mut len,
        )
    };
    if got != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ENOPROTOOPT) {
            return Err(error);
        }
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new
        // descriptor or -1.
        let opened = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if opened < 0 {
            return Err(std::io::Error::last_os_error());
        }
        fd = libc::c_int::try_from(opened).map_err(std::io::Error::other)?;
    }
    // SAFETY: the kernel just made `fd`, and nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Whether the process `pidfd` refers to still runs (signal 0).
fn is_running(pidfd: &std::os::fd::OwnedFd) -> bool {
    use std::os::fd::AsRawFd as _;
    // SAFETY: pidfd_send_signal(2) with signal 0 only checks the process.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        ) == 0
    }
}

/// Checks an OCI hook's claims against what the kernel says: the
/// container's first process `state.pid` is in a cgroup whose path names
/// the container id `state.id`, and it is a child of the process that ran
/// the hook (the runtime, which forks both), or of the hook's peer itself.
/// A process that only reaches the socket cannot claim another process or
/// container than one it made; why not, when it does.
///
/// # Errors
/// The claim the kernel contradicts, or what could not be read.
pub fn check_claims(peer: &Peer, state: &HookState) -> Result<(), String> {
    check_claims_in(Path::new("/proc"), peer, state)
}

fn check_claims_in(proc: &Path, peer: &Peer, state: &HookState) -> Result<(), String> {
    // Shorter ids would match by accident: runtimes use 64 hex digits.
    if state.id.len() < 12
        || !state
            .id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    {
        return Err(format!("{:?} is not a container id", state.id));
    }
    let pid = state.pid;
    let cgroups = std::fs::read_to_string(proc.join(format!("{pid}/cgroup")))
        .map_err(|error| format!("the cgroup of pid {pid}: {error}"))?;
    if !cgroups
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .any(|path| path.contains(&state.id))
    {
        return Err(format!(
            "pid {pid} is not in a cgroup of container {}: {}",
            state.id,
            cgroups.trim()
        ));
    }
    let hook = peer.pid.ok_or("the kernel gave no pid for the hook")?;
    let parent = parent_of(proc, i64::from(pid))?;
    let runtime = parent_of(proc, i64::from(hook))?;
    if parent != runtime && parent != i64::from(hook) {
        return Err(format!(
            "pid {pid} is a child of pid {parent}, not of the runtime that ran the hook (pid {runtime})"
        ));
    }
    Ok(())
}

/// The parent pid of `pid` (`/proc/PID/stat`'s fourth field, after the
/// command name, which may hold spaces and parentheses).
fn parent_of(proc: &Path, pid: i64) -> Result<i64, String> {
    let stat = std::fs::read_to_string(proc.join(format!("{pid}/stat")))
        .map_err(|error| format!("pid {pid}: {error}"))?;
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|ppid| ppid.parse().ok())
        .ok_or_else(|| format!("pid {pid}: unreadable stat"))
}

/// The inode number of `/proc/{pid}/ns/mnt`.
fn namespace_of(pid: &str) -> std::io::Result<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/mnt")).map(|metadata| metadata.ino())
}

/// Why a peer was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("uid {uid} is not the agent's")]
    User { uid: u32 },
    #[error("the kernel gave no pid for the peer")]
    NoPid,
    #[error("pid {pid} runs in mount namespace {ns}, neither the host's nor the agent's")]
    Namespace { pid: i32, ns: u64 },
    #[error("pid {pid}: {reason}")]
    Unreadable { pid: i32, reason: String },
    #[error("more than {REQUESTS_PER_SECOND} requests a second")]
    RateLimited,
}

/// The listening socket; the file is removed when it is dropped.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl ControlSocket {
    /// Listens at `path` (creating its directory, owner-only) and returns
    /// the queries for the main loop. A stale socket file left by an agent
    /// that died is replaced; a live one is an error.
    pub fn bind(
        path: &Path,
        trusted: Trusted,
    ) -> Result<(Self, mpsc::Receiver<Incoming>), ControlError> {
        let io = |source| ControlError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            if !parent.exists() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            owner_only(parent).map_err(io)?;
        }
        if let Ok(metadata) = std::fs::symlink_metadata(path) {
            if !metadata.file_type().is_socket() {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists and is not a socket",
                )));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        let listener = UnixListener::bind(path).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let (queries, receiver) = mpsc::channel(8);
        let task = tokio::spawn(accept_loop(listener, queries, trusted));
        Ok((
            Self {
                path: path.to_owned(),
                task,
            },
            receiver,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
        // Gone already is fine: nothing to clean up.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Makes the socket's directory owner-only, as a `DaemonSet`'s hostPath
/// (made 0755 by the kubelet) is not: only root on the host then reaches
/// the socket at all. A shared directory is left as it is: one with the
/// sticky bit (`/tmp`), the root, `/run` and `/var/run`.
fn owner_only(dir: &Path) -> std::io::Result<()> {
    let metadata = std::fs::metadata(dir)?;
    let shared = metadata.permissions().mode() & 0o1000 != 0
        || [Path::new("/"), Path::new("/run"), Path::new("/var/run")].contains(&dir);
    // SAFETY: geteuid cannot fail.
    if shared || metadata.uid() != unsafe { libc::geteuid() } {
        return Ok(());
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// A token bucket: `rate` tokens a second, up to `burst`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: std::time::Instant,
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Self {
        Self {
            tokens: burst,
            rate,
            burst,
            last: std::time::Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = std::time::Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Where refusals go: to the main loop as records, at most
/// [`REFUSAL_RECORDS_PER_10S`]; the rest counted into the next one.
#[derive(Debug)]
struct Refusals {
    incoming: mpsc::Sender<Incoming>,
    records: Bucket,
    suppressed: u64,
}

impl Refusals {
    fn record(&mut self, mut event: ControlEvent) {
        if !self.records.take() {
            self.suppressed += 1;
            return;
        }
        event.suppressed = std::mem::take(&mut self.suppressed);
        tracing::warn!(
            uid = event.peer.uid,
            pid = event.peer.pid,
            request = %event.request,
            reason = event.reason.as_deref().unwrap_or_default(),
            suppressed = event.suppressed,
            "control socket: request refused"
        );
        let count = event.suppressed + 1;
        // A full queue is a busy main loop: the refusal is counted into
        // the next record instead of waiting for it.
        if self
            .incoming
            .try_send(Incoming::Refused(Box::new(event)))
            .is_err()
        {
            self.suppressed += count;
        }
    }
}

async fn accept_loop(listener: UnixListener, incoming: mpsc::Sender<Incoming>, trusted: Trusted) {
    let refusals = std::sync::Arc::new(std::sync::Mutex::new(Refusals {
        incoming: incoming.clone(),
        records: Bucket::new(
            f64::from(REFUSAL_RECORDS_PER_10S) / 10.0,
            f64::from(REFUSAL_RECORDS_PER_10S),
        ),
        suppressed: 0,
    }));
    let mut requests = Bucket::new(
        f64::from(REQUESTS_PER_SECOND),
        f64::from(REQUESTS_PER_SECOND * 2),
    );
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Only admitted peers spend the budget: refused ones cost
                // no work of the main loop.
                let (peer, admitted) = match Peer::of(&stream) {
                    Ok(peer) => {
                        let admitted = trusted.admit(&peer).and_then(|()| {
                            if requests.take() {
                                Ok(())
                            } else {
                                Err(Refusal::RateLimited)
                            }
                        });
                        (peer, admitted)
                    }
                    Err(refusal) => (
                        Peer {
                            uid: u32::MAX,
                            pid: None,
                            mount_namespace: Err(refusal.to_string()),
                        },
                        Err(refusal),
                    ),
                };
                tokio::spawn(serve(
                    stream,
                    incoming.clone(),
                    (peer, admitted),
                    std::sync::Arc::clone(&refusals),
                ));
            }
            Err(error) => {
                tracing::warn!(%error, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve(
    stream: UnixStream,
    incoming: mpsc::Sender<Incoming>,
    (peer, admitted): (Peer, Result<(), Refusal>),
    refusals: std::sync::Arc<std::sync::Mutex<Refusals>>,
) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut limited = tokio::io::BufReader::new(read.take(MAX_REQUEST));
    let received = tokio::time::timeout(TIMEOUT, limited.read_line(&mut line)).await;
    let request = match received {
        Ok(Ok(_)) => serde_json::from_str::<Request>(line.trim_end())
            .map_err(|error| format!("invalid request {:?}: {error}", line.trim_end())),
        Ok(Err(error)) => Err(format!("reading the request: {error}")),
        Err(_) => Err("no request within 5 s".to_owned()),
    };
    // A refused peer's request is read before the answer: closing on a
    // client still writing would give it EPIPE in place of the reason.
    let reply = match (admitted, request) {
        (Err(refusal), request) => {
            let (name, access) = request.as_ref().map_or(("unread", "read"), |request| {
                (request.name(), request.access())
            });
            refusals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .record(ControlEvent {
                    at: time::OffsetDateTime::now_utc(),
                    outcome: "refused",
                    request: name.to_owned(),
                    access,
                    peer: peer.to_record(),
                    reason: Some(refusal.to_string()),
                    container_id: match &request {
                        Ok(Request::ContainerStarting(state)) => Some(state.id.clone()),
                        _ => None,
                    },
                    suppressed: 0,
                });
            Reply::Error(format!("refused: {refusal}"))
        }
        (Ok(()), Ok(request)) => ask_main_loop(request, peer, &incoming).await,
        (Ok(()), Err(error)) => Reply::Error(error),
    };
    let Ok(mut text) = serde_json::to_vec(&reply) else {
        return;
    };
    text.push(b'\n');
    // A client that went away does not need its answer.
    let _ = write.write_all(&text).await;
}

async fn ask_main_loop(request: Request, peer: Peer, incoming: &mpsc::Sender<Incoming>) -> Reply {
    let (reply, answer) = oneshot::channel();
    let query = Query {
        request,
        peer,
        reply,
    };
    if incoming.send(Incoming::Query(query)).await.is_err() {
        return Reply::Error("the agent is shutting down".to_owned());
    }
    answer
        .await
        .unwrap_or_else(|_| Reply::Error("the agent is shutting down".to_owned()))
}

/// Asks the agent listening at `path`.
pub fn ask(path: &Path, request: &Request) -> Result<Reply, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    let mut stream =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| ControlError::NoAgent {
            path: path.to_owned(),
            source,
        })?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let mut text = serde_json::to_vec(request).map_err(|error| ControlError::Protocol {
        path: path.to_owned(),
        what: error.to_string(),
    })?;
    text.push(b'\n');
    let sent = stream.write_all(&text);
    let mut line = String::new();
    // An agent that refuses the peer may answer and close before the whole
    // request is written: its answer says more than EPIPE.
    match BufReader::new(stream).read_line(&mut line) {
        Ok(read) if read > 0 => {}
        Ok(_) => sent.map_err(io)?,
        Err(error) => return Err(io(sent.err().unwrap_or(error))),
    }
    serde_json::from_str(&line).map_err(|error| ControlError::Protocol {
        path: path.to_owned(),
        what: format!("unreadable reply {:?}: {error}", line.trim_end()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_have_a_stable_wire_form() {
        assert_eq!(
            serde_json::to_string(&Request::VShields).unwrap(),
            r#"{"request":"vshields"}"#
        );
        let reply = Reply::Error("x".to_owned());
        assert_eq!(serde_json::to_string(&reply).unwrap(), r#"{"error":"x"}"#);
        assert_eq!(
            serde_json::to_string(&Request::Flush).unwrap(),
            r#"{"request":"flush"}"#
        );
        let reply = Reply::Flushed(FlushedReply { written: 7 });
        assert_eq!(
            serde_json::to_string(&reply).unwrap(),
            r#"{"flushed":{"written":7}}"#
        );
        let starting = Request::ContainerStarting(HookState {
            id: "c1".to_owned(),
            pid: 42,
            annotations: [("a".to_owned(), "b".to_owned())].into(),
        });
        assert_eq!(
            serde_json::to_string(&starting).unwrap(),
            r#"{"request":"container-starting","id":"c1","pid":42,"annotations":{"a":"b"}}"#
        );
    }

    #[test]
    fn only_the_agents_user_in_a_trusted_mount_namespace_is_admitted() {
        let trusted = Trusted {
            uid: 0,
            mount_namespaces: vec![10, 20],
        };
        let peer = |uid, pid, ns: Result<u64, &str>| Peer {
            uid,
            pid,
            mount_namespace: ns.map_err(str::to_owned),
        };
        assert_eq!(trusted.admit(&peer(0, Some(7), Ok(10))), Ok(()));
        assert_eq!(trusted.admit(&peer(0, Some(7), Ok(20))), Ok(()));
        assert_eq!(
            trusted.admit(&peer(0, Some(7), Ok(30))),
            Err(Refusal::Namespace { pid: 7, ns: 30 })
        );
        assert_eq!(
            trusted.admit(&peer(1000, Some(7), Ok(10))),
            Err(Refusal::User { uid: 1000 })
        );
        assert_eq!(trusted.admit(&peer(0, None, Ok(10))), Err(Refusal::NoPid));
        assert!(matches!(
            trusted.admit(&peer(0, Some(7), Err("gone"))),
            Err(Refusal::Unreadable { pid: 7, .. })
        ));
    }

    #[tokio::test]
    async fn a_query_is_answered_by_the_main_loop_and_the_socket_file_is_removed() {
        let dir = std::env::temp_dir().join(format!("enforcer-control-{}", std::process::id()));
        let path = dir.join("control.sock");
        let trusted = Trusted::agent(namespace_of("self").unwrap());
        let (socket, mut queries) = ControlSocket::bind(&path, trusted.clone()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            ControlSocket::bind(&path, trusted),
            Err(ControlError::InUse { .. })
        ));
        let main_loop = tokio::spawn(async move {
            let Some(Incoming::Query(query)) = queries.recv().await else {
                panic!("no query");
            };
            assert_eq!(query.request, Request::VShields);
            assert_eq!(query.peer.pid, i32::try_from(std::process::id()).ok());
            query
                .reply
                .send(Reply::Error("answered".to_owned()))
                .unwrap();
        });
        let client_path = path.clone();
        let reply = tokio::task::spawn_blocking(move || ask(&client_path, &Request::VShields))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply, Reply::Error("answered".to_owned()));
        main_loop.await.unwrap();
        drop(socket);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A `/proc` of processes: (pid, parent, cgroup path, command).
    fn fake_proc(processes: &[(u32, u32, &str, &str)]) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "enforcer-proc-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        for (pid, parent, cgroup, command) in processes {
            let dir = root.join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
            std::fs::write(
                dir.join("stat"),
                format!("{pid} ({command}) S {parent} 1 1 0 -1"),
            )
            .unwrap();
        }
        root
    }

    const ID: &str = "3f6e1c0d2b4a59687c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a60";

    #[test]
    fn a_hook_may_claim_only_what_its_runtime_made() {
        let scope = format!("/machine.slice/libpod-{ID}.scope/container");
        let proc = fake_proc(&[
            // crun (100) forked the container (200) and the hook (300).
            (200, 100, &scope, "sh"),
            (300, 100, "/machine.slice/libpod-conmon.scope", "enforcer"),
            // Another container's process, and a forger's child.
            (400, 90, &scope, "sh"),
            (500, 300, "/user.slice", "sleep"),
            (600, 100, "/machine.slice/libpod-other.scope", "a) b (c"),
        ]);
        let peer = |pid| Peer {
            uid: 0,
            pid: Some(pid),
            mount_namespace: Ok(1),
        };
        let state = |id: &str, pid| HookState {
            id: id.to_owned(),
            pid,
            annotations: std::collections::BTreeMap::new(),
        };
        assert_eq!(check_claims_in(&proc, &peer(300), &state(ID, 200)), Ok(()));
        // A pid of another runtime, a process not in the container's
        // group, an id too short to mean anything, a pid that is gone.
        let refused = [
            check_claims_in(&proc, &peer(300), &state(ID, 400)),
            check_claims_in(&proc, &peer(300), &state(ID, 500)),
            check_claims_in(&proc, &peer(300), &state(ID, 600)),
            check_claims_in(&proc, &peer(300), &state("3f6e", 200)),
            check_claims_in(&proc, &peer(300), &state(ID, 999)),
        ];
        for result in &refused {
            assert!(result.is_err(), "{refused:?}");
        }
        assert!(
            refused[0]
                .as_ref()
                .unwrap_err()
                .contains("not of the runtime")
        );
        assert!(refused[1].as_ref().unwrap_err().contains("not in a cgroup"));
        assert_eq!(parent_of(&proc, 600), Ok(100));
        let _ = std::fs::remove_dir_all(&proc);
    }

    #[tokio::test]
    async fn a_peer_is_pinned_by_a_pidfd_while_it_is_looked_at() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let peer = Peer::of(&ours).unwrap();
        assert_eq!(peer.pid, i32::try_from(std::process::id()).ok());
        assert_eq!(peer.mount_namespace, Ok(namespace_of("self").unwrap()));
        let pidfd = peer_pidfd(&ours, peer.pid.unwrap()).unwrap();
        assert!(is_running(&pidfd));
    }

    #[test]
    fn the_socket_directory_is_made_owner_only_unless_shared() {
        let dir = std::env::temp_dir().join(format!("enforcer-owner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        owner_only(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        let tmp = std::fs::metadata("/tmp").unwrap().permissions().mode();
        owner_only(Path::new("/tmp")).unwrap();
        assert_eq!(std::fs::metadata("/tmp").unwrap().permissions().mode(), tmp);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_request_budget_refills_over_time() {
        let mut bucket = Bucket::new(1000.0, 3.0);
        assert!(bucket.take() && bucket.take() && bucket.take());
        assert!(!bucket.take());
        std::thread::sleep(Duration::from_millis(5));
        assert!(bucket.take());
    }

    #[test]
    fn requests_are_read_or_change_and_named_as_on_the_wire() {
        assert_eq!(Request::Status.access(), "read");
        assert_eq!(Request::VShields.access(), "read");
        assert_eq!(Request::Flush.access(), "change");
        let starting = Request::ContainerStarting(HookState {
            id: "x".to_owned(),
            pid: 1,
            annotations: std::collections::BTreeMap::new(),
        });
        assert_eq!(starting.access(), "change");
        for request in [Request::Status, Request::VShields, Request::Flush, starting] {
            let wire = serde_json::to_value(&request).unwrap();
            assert_eq!(wire["request"], request.name(), "{wire}");
        }
    }
}
