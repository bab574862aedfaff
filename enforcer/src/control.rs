//! The running agent's local control socket: a Unix socket, owner-only,
//! one JSON request line and one JSON reply line per connection. The agent's
//! main loop answers ([`Query`]), since it owns the kernel object; the socket
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

use crate::{active::Listed, container::registry::HookState};

/// Where `enforcer run` listens and the other commands ask by default.
pub const DEFAULT_SOCKET: &str = "/run/enforcer/control.sock";

/// A request longer than this is refused (an OCI hook's request carries
/// the container's annotations).
const MAX_REQUEST: u64 = 256 * 1024;
/// A client that sends nothing for this long is dropped; the client gives
/// up on an agent that does not answer within it.
const TIMEOUT: Duration = Duration::from_secs(5);

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

/// A request for the main loop, with where its answer goes.
#[derive(Debug)]
pub struct Query {
    pub request: Request,
    pub reply: oneshot::Sender<Reply>,
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
    fn of(stream: &UnixStream) -> Result<Self, Refusal> {
        let cred = stream.peer_cred().map_err(|error| Refusal::Unreadable {
            pid: 0,
            reason: error.to_string(),
        })?;
        let pid = cred.pid();
        Ok(Self {
            uid: cred.uid(),
            pid,
            mount_namespace: pid.map_or_else(
                || Err("no pid".to_owned()),
                |pid| namespace_of(&pid.to_string()).map_err(|error| error.to_string()),
            ),
        })
    }
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
    ) -> Result<(Self, mpsc::Receiver<Query>), ControlError> {
        let io = |source| ControlError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
            && !parent.exists()
        {
            std::fs::create_dir_all(parent).map_err(io)?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
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

async fn accept_loop(listener: UnixListener, queries: mpsc::Sender<Query>, trusted: Trusted) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let admitted = Peer::of(&stream).and_then(|peer| {
                    trusted.admit(&peer).inspect_err(|refusal| {
                        tracing::warn!(
                            uid = peer.uid,
                            pid = peer.pid,
                            %refusal,
                            "control socket: request refused"
                        );
                    })
                });
                tokio::spawn(serve(stream, queries.clone(), admitted));
            }
            Err(error) => {
                tracing::warn!(%error, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve(stream: UnixStream, queries: mpsc::Sender<Query>, admitted: Result<(), Refusal>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut limited = tokio::io::BufReader::new(read.take(MAX_REQUEST));
    let received = tokio::time::timeout(TIMEOUT, limited.read_line(&mut line)).await;
    // A refused peer's request is read (and never parsed) before the
    // answer: closing on a client still writing would give it EPIPE in
    // place of the reason.
    if let Err(refusal) = admitted {
        let reply = Reply::Error(format!("refused: {refusal}"));
        if let Ok(mut text) = serde_json::to_vec(&reply) {
            text.push(b'\n');
            // A client that went away does not need its answer.
            let _ = write.write_all(&text).await;
        }
        return;
    }
    let reply = match received {
        Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim_end()) {
            Ok(request) => ask_main_loop(request, &queries).await,
            Err(error) => Reply::Error(format!("invalid request {:?}: {error}", line.trim_end())),
        },
        Ok(Err(error)) => Reply::Error(format!("reading the request: {error}")),
        Err(_) => Reply::Error("no request within 5 s".to_owned()),
    };
    let Ok(mut text) = serde_json::to_vec(&reply) else {
        return;
    };
    text.push(b'\n');
    // A client that went away does not need its answer.
    let _ = write.write_all(&text).await;
}

async fn ask_main_loop(request: Request, queries: &mpsc::Sender<Query>) -> Reply {
    let (reply, answer) = oneshot::channel();
    if queries.send(Query { request, reply }).await.is_err() {
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
            let query = queries.recv().await.unwrap();
            assert_eq!(query.request, Request::VShields);
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
}
