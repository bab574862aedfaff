//! A process's ancestors up to its container's first process.
//!
//! The kernel programs record them when they decide ([`DecisionEvent`]):
//! the parent's name, up to [`LINEAGE_MAX`] ancestors that share the task's
//! mount namespace, and the entry leader, the topmost of them (ECS
//! `process.entry_leader`: its parent, the runtime's monitor, is outside the
//! container), with its pid in its own pid namespace. That holds after the
//! process has exited, which a refused program's process often has by the
//! time its event is written. `/proc` adds what the kernel does not copy,
//! best effort: the ancestors' executables while they still run, and the
//! ancestors beyond the recorded ones.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use enforcer_common::{COMM_LEN, DecisionEvent, LINEAGE_MAX, event_flags};
use serde::Serialize;

/// Ancestors listed at most (a fork bomb's depth is not worth reading).
const DEPTH_MAX: usize = 32;

/// How long an ancestor's executable read from `/proc` is reused for later
/// records naming the same pid and comm. A burst of records from one
/// process tree (a flood, a retrying workload) then reads `/proc` a few
/// times, not twice per ancestor per record. Short, because within it a pid
/// reused by a process of the same name, or an exec that keeps the name,
/// would be reported with the earlier program.
const EXE_TTL: Duration = Duration::from_millis(100);

/// Entries beyond which the expired ones are dropped.
const EXE_CACHE_MAX: usize = 4096;

/// Executables of recently seen ancestors, by pid and comm. Shared by the
/// clones of an [`super::enrich::Enricher`].
#[derive(Clone, Debug, Default)]
pub struct ExeCache(Arc<Mutex<HashMap<ProcessKey, ReadExe>>>);

/// A pid and the comm a record names it with.
type ProcessKey = (u32, [u8; COMM_LEN]);

/// An executable as read from `/proc` (`None`: gone), and when.
type ReadExe = (Option<String>, Instant);

impl ExeCache {
    /// [`executable`], reused for [`EXE_TTL`].
    fn executable(&self, proc: &Path, pid: u32, comm: &[u8; COMM_LEN]) -> Option<String> {
        let now = Instant::now();
        let mut entries = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((exe, at)) = entries.get(&(pid, *comm))
            && now.duration_since(*at) < EXE_TTL
        {
            return exe.clone();
        }
        if entries.len() >= EXE_CACHE_MAX {
            entries.retain(|_, (_, at)| now.duration_since(*at) < EXE_TTL);
        }
        let exe = executable(proc, pid, comm);
        // A full table of fresh entries (pids churning) is not worth keeping.
        if entries.len() < EXE_CACHE_MAX {
            entries.insert((pid, *comm), (exe.clone(), now));
        }
        exe
    }
}

/// One ancestor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ancestor {
    pub pid: u32,
    /// Its comm (empty when unknown).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The program it runs (`/proc/PID/exe`), as the container sees it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
}

/// How the process's session entered its container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Session {
    /// Under the container's first process (its entrypoint).
    Container,
    /// Under a process that entered the running container from outside:
    /// `kubectl exec`, `podman exec`, `docker exec`, a debug session.
    Exec,
}

impl Session {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Container => "container",
            Self::Exec => "exec",
        }
    }
}

/// What an event says of a process's ancestry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lineage {
    /// The parent's comm, wherever it runs.
    pub parent_name: Option<String>,
    /// The parent's program, when it is in the container and still runs.
    pub parent_executable: Option<String>,
    /// Ancestors in the process's mount namespace, nearest first.
    pub ancestors: Vec<Ancestor>,
    /// The topmost of the process and those ancestors, when found.
    pub leader: Option<Ancestor>,
    /// For a container process whose leader was found.
    pub session: Option<Session>,
}

/// Where a lineage comes from besides the event.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// The proc filesystem, for executables and ancestors the record does
    /// not hold, with the executables read lately; `None` to use the
    /// record alone.
    pub proc: Option<(&'a Path, &'a ExeCache)>,
    /// Whether the process is in a container (sessions are a container's).
    pub in_container: bool,
    /// The container's first process as its OCI hook reported it.
    pub init_pid: Option<u32>,
    /// The host's pid namespace, where pid 1 is not a container's.
    pub host_pid_ns: Option<u32>,
}

/// The lineage of event `e`'s process.
pub fn of_event(e: &DecisionEvent, context: Context<'_>) -> Lineage {
    let recorded = (e.ancestors_len as usize).min(LINEAGE_MAX);
    let mut ancestors: Vec<Ancestor> = e.ancestor_pids[..recorded]
        .iter()
        .zip(&e.ancestor_comms)
        .map(|(&pid, comm)| Ancestor {
            pid,
            name: comm_string(comm),
            executable: context
                .proc
                .and_then(|(proc, cache)| cache.executable(proc, pid, comm)),
        })
        .collect();
    if let (Some((proc, _)), Some(last)) = (context.proc, ancestors.last())
        && e.flags & event_flags::ANCESTORS_TRUNCATED != 0
        && let Some((_, next)) = stat(proc, last.pid)
    {
        let more = ancestors_in(
            proc,
            next,
            Edge {
                leader: e.leader_tgid,
                mnt_ns: e.mnt_ns,
            },
            DEPTH_MAX - ancestors.len(),
        );
        ancestors.extend(more);
    }
    let leader = (e.leader_tgid != 0).then(|| {
        if e.leader_tgid == e.tgid {
            Ancestor {
                pid: e.tgid,
                name: comm_string(&e.comm),
                executable: context
                    .proc
                    .and_then(|(proc, cache)| cache.executable(proc, e.tgid, &e.comm)),
            }
        } else {
            ancestors
                .iter()
                .find(|ancestor| ancestor.pid == e.leader_tgid)
                .cloned()
                .unwrap_or(Ancestor {
                    pid: e.leader_tgid,
                    name: String::new(),
                    executable: None,
                })
        }
    });
    // The kernel told it itself when its decision depended on it.
    let session = if e.flags & event_flags::EXEC_SESSION != 0 {
        Some(Session::Exec)
    } else {
        (context.in_container && e.leader_tgid != 0)
            .then(|| session(e, context.init_pid, context.host_pid_ns))
            .flatten()
    };
    Lineage {
        parent_name: Some(comm_string(&e.parent_comm)).filter(|name| !name.is_empty()),
        parent_executable: ancestors
            .first()
            .filter(|parent| parent.pid == e.ppid)
            .and_then(|parent| parent.executable.clone()),
        ancestors,
        leader,
        session,
    }
}

/// The session of a container process whose entry leader the kernel found:
/// the container's own when the leader is its first process, known from the
/// OCI hook (`init_pid`) or, without one, being pid 1 of its pid namespace;
/// an exec session otherwise. `None` when the leader's pid namespace is the
/// host's, where pid 1 is not the container's.
///
/// A process orphaned by an exec session is adopted by the container's
/// first process (the reaper of its pid namespace) and counts as the
/// container's from then on, as it would in `/proc`.
fn session(e: &DecisionEvent, init_pid: Option<u32>, host_pid_ns: Option<u32>) -> Option<Session> {
    let first = match init_pid {
        Some(init) => init == e.leader_tgid,
        None if e.leader_pid_ns == 0 || Some(e.leader_pid_ns) == host_pid_ns => return None,
        None => e.leader_nspid == 1,
    };
    Some(if first {
        Session::Container
    } else {
        Session::Exec
    })
}

/// A NUL-padded comm as text.
fn comm_string(comm: &[u8; COMM_LEN]) -> String {
    let len = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(&comm[..len]).into_owned()
}

/// The program process `pid` runs, if it still runs as `comm` (a pid
/// reused since is another process).
fn executable(proc: &Path, pid: u32, comm: &[u8; COMM_LEN]) -> Option<String> {
    let (name, _) = stat(proc, pid)?;
    if name != comm_string(comm) {
        return None;
    }
    exe(proc, pid)
}

/// The target of `/proc/PID/exe`: the program process `pid` runs.
fn exe(proc: &Path, pid: u32) -> Option<String> {
    std::fs::read_link(proc.join(pid.to_string()).join("exe"))
        .ok()
        .map(|path| path.to_string_lossy().into_owned())
}

/// Process `pid`'s comm and parent, from `/proc/PID/stat`.
fn stat(proc: &Path, pid: u32) -> Option<(String, u32)> {
    std::fs::read_to_string(proc.join(pid.to_string()).join("stat"))
        .ok()
        .and_then(|stat| parse_stat(&stat))
}

/// Up to `max` ancestors from `parent` up, nearest first, as far as the
/// container's `edge`, read from the proc filesystem at `proc`; an ancestor
/// that has exited ends the walk.
fn ancestors_in(proc: &Path, parent: u32, edge: Edge, max: usize) -> Vec<Ancestor> {
    let mut out = Vec::new();
    let mut pid = parent;
    while pid != 0 && out.len() < max {
        if edge.leader == 0 && namespace(proc, pid, "mnt") != Some(edge.mnt_ns) {
            break;
        }
        let Some((name, next)) = stat(proc, pid) else {
            break;
        };
        out.push(Ancestor {
            pid,
            name,
            executable: exe(proc, pid),
        });
        if pid == edge.leader {
            break;
        }
        pid = next;
    }
    out
}

/// Where the container's part of a process tree ends, for the walk through
/// `/proc`.
#[derive(Clone, Copy)]
struct Edge {
    /// The entry leader the kernel found (it also follows ancestors that
    /// left the mount namespace: see the kernel's walk), 0 when it found
    /// none within its reach.
    leader: u32,
    /// Without a leader: the mount namespace the ancestors share.
    mnt_ns: u32,
}

/// The inode of process `pid`'s namespace of `kind` (`mnt`, `pid`).
fn namespace(proc: &Path, pid: u32, kind: &str) -> Option<u32> {
    std::fs::read_link(proc.join(pid.to_string()).join("ns").join(kind))
        .ok()
        .and_then(|link| namespace_inode(&link.to_string_lossy()))
}

/// `mnt:[4026531841]` -> 4026531841.
fn namespace_inode(link: &str) -> Option<u32> {
    link.split_once(":[")?.1.strip_suffix(']')?.parse().ok()
}

/// The comm and parent pid from `/proc/PID/stat`. Pure. The comm is in
/// parentheses and may itself hold spaces and parentheses: the fields after
/// it start after the last `)`.
fn parse_stat(stat: &str) -> Option<(String, u32)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((name, ppid))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::audit::decode::tests::drift_event;

    fn comm(name: &str) -> [u8; COMM_LEN] {
        let mut comm = [0; COMM_LEN];
        comm[..name.len()].copy_from_slice(name.as_bytes());
        comm
    }

    /// A drift event of process 30 (`sh`) under `ancestors` (pid, comm),
    /// nearest first, the last of them the leader.
    fn event(ancestors: &[(u32, &str)], nspid: u32, pid_ns: u32) -> DecisionEvent {
        let mut e = drift_event("/tmp/dropped");
        e.tgid = 30;
        e.pid = 30;
        e.mnt_ns = 7;
        e.ppid = ancestors.first().map_or(10, |(pid, _)| *pid);
        e.parent_comm = comm(ancestors.first().map_or("conmon", |(_, name)| name));
        for (i, (pid, name)) in ancestors.iter().enumerate() {
            e.ancestor_pids[i] = *pid;
            e.ancestor_comms[i] = comm(name);
        }
        e.ancestors_len = ancestors.len() as u32;
        e.leader_tgid = ancestors.last().map_or(30, |(pid, _)| *pid);
        e.leader_nspid = nspid;
        e.leader_pid_ns = pid_ns;
        e
    }

    const RECORD_ONLY: Context<'static> = Context {
        proc: None,
        in_container: true,
        init_pid: None,
        host_pid_ns: Some(HOST_PID_NS),
    };
    const HOST_PID_NS: u32 = 4_026_531_836;

    #[test]
    fn the_record_alone_names_ancestors_leader_and_session() {
        // 30 under 20, pid 1 of its pid namespace: the container's session.
        let e = event(&[(20, "sh")], 1, 1);
        let lineage = of_event(&e, RECORD_ONLY);
        assert_eq!(lineage.parent_name.as_deref(), Some("sh"));
        assert_eq!(lineage.ancestors.len(), 1);
        assert_eq!(lineage.leader.as_ref().map(|a| a.pid), Some(20));
        assert_eq!(lineage.session, Some(Session::Container));
        // A leader that is not pid 1: an exec session.
        let e = event(&[(25, "sh"), (22, "sh")], 7, 1);
        let lineage = of_event(&e, RECORD_ONLY);
        assert_eq!(
            lineage.leader.map(|a| (a.pid, a.name)),
            Some((22, "sh".to_owned()))
        );
        assert_eq!(lineage.session, Some(Session::Exec));
        // The hook named the container's first process: that decides.
        let hooked = |init| Context {
            init_pid: Some(init),
            ..RECORD_ONLY
        };
        assert_eq!(of_event(&e, hooked(22)).session, Some(Session::Container));
        assert_eq!(of_event(&e, hooked(5)).session, Some(Session::Exec));
        // The process is its own leader (`kubectl exec POD -- /tmp/x`): its
        // parent runs outside the container.
        let e = event(&[], 9, 1);
        let lineage = of_event(&e, RECORD_ONLY);
        assert!(lineage.ancestors.is_empty());
        assert_eq!(lineage.parent_name.as_deref(), Some("conmon"));
        assert_eq!(
            lineage.leader.map(|a| (a.pid, a.name)),
            Some((30, "sh".to_owned()))
        );
        assert_eq!(lineage.session, Some(Session::Exec));
        // In the host's pid namespace there is no telling; nor for a host
        // process, nor without a leader.
        assert_eq!(
            of_event(&event(&[(20, "sh")], 20, HOST_PID_NS), RECORD_ONLY).session,
            None
        );
        let host = Context {
            in_container: false,
            ..RECORD_ONLY
        };
        assert_eq!(of_event(&event(&[(20, "sh")], 1, 1), host).session, None);
        let mut e = event(&[(20, "sh")], 1, 1);
        e.leader_tgid = 0;
        let lineage = of_event(&e, RECORD_ONLY);
        assert_eq!((lineage.leader, lineage.session), (None, None));
    }

    #[test]
    fn the_kernels_own_finding_of_an_exec_session_stands() {
        // The kernel audited drift because it found an exec session: that
        // is what the record says, whatever the hook named.
        let mut e = event(&[(20, "sh")], 1, 1);
        e.flags |= event_flags::EXEC_SESSION;
        let hooked = Context {
            init_pid: Some(20),
            ..RECORD_ONLY
        };
        assert_eq!(of_event(&e, hooked).session, Some(Session::Exec));
    }

    #[test]
    fn proc_adds_executables_and_the_ancestors_beyond_the_record() {
        let proc = std::env::temp_dir().join(format!("enforcer-lineage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&proc);
        // 30 (sh) -> 20 (sh) -> 15 (sh) -> 12 (sh, the container's first
        // process) -> 10 (conmon, on the host). 20 has been replaced by
        // another process of the same pid.
        for (pid, name, ppid, ns, exe) in [
            (20, "other", 15, 7, "/bin/other"),
            (15, "sh", 12, 7, "/bin/busybox"),
            (12, "sh", 10, 7, "/bin/busybox"),
            (10, "conmon", 1, 1, "/usr/bin/conmon"),
        ] {
            let dir = proc.join(pid.to_string());
            std::fs::create_dir_all(dir.join("ns")).unwrap();
            std::fs::write(dir.join("stat"), format!("{pid} ({name}) S {ppid} 0 0")).unwrap();
            symlink(format!("mnt:[{ns}]"), dir.join("ns/mnt")).unwrap();
            symlink(exe, dir.join("exe")).unwrap();
        }
        let cache = ExeCache::default();
        let context = Context {
            proc: Some((&proc, &cache)),
            ..RECORD_ONLY
        };
        let e = event(&[(20, "sh"), (15, "sh"), (12, "sh")], 1, 1);
        let lineage = of_event(&e, context);
        let executables: Vec<_> = lineage
            .ancestors
            .iter()
            .map(|a| a.executable.as_deref())
            .collect();
        assert_eq!(
            executables,
            [None, Some("/bin/busybox"), Some("/bin/busybox")]
        );
        assert_eq!(
            lineage.leader.and_then(|a| a.executable).as_deref(),
            Some("/bin/busybox")
        );
        // The record names 20 alone and says there is more: the walk
        // through /proc goes on from 20's parent to the namespace's edge.
        let mut e = event(&[(20, "other")], 1, 1);
        e.flags |= event_flags::ANCESTORS_TRUNCATED;
        e.leader_tgid = 12;
        let lineage = of_event(&e, context);
        let pids: Vec<u32> = lineage.ancestors.iter().map(|a| a.pid).collect();
        assert_eq!(pids, [20, 15, 12]);
        assert_eq!(lineage.leader.map(|a| a.name).as_deref(), Some("sh"));
        // 15 left the mount namespace (`unshare -m`): the kernel's leader
        // still says where the container ends.
        std::fs::remove_file(proc.join("15/ns/mnt")).unwrap();
        symlink("mnt:[9]", proc.join("15/ns/mnt")).unwrap();
        let pids: Vec<u32> = of_event(&e, context)
            .ancestors
            .iter()
            .map(|a| a.pid)
            .collect();
        assert_eq!(pids, [20, 15, 12]);
        // Without one (a tree deeper than the kernel walks), the mount
        // namespace does.
        e.leader_tgid = 0;
        let pids: Vec<u32> = of_event(&e, context)
            .ancestors
            .iter()
            .map(|a| a.pid)
            .collect();
        assert_eq!(pids, [20]);
        let _ = std::fs::remove_dir_all(&proc);
    }

    #[test]
    fn executables_are_reused_briefly_for_the_same_pid_and_name() {
        let proc = std::env::temp_dir().join(format!("enforcer-exe-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&proc);
        let dir = proc.join("40");
        std::fs::create_dir_all(&dir).unwrap();
        let set = |name: &str, exe: &str| {
            std::fs::write(dir.join("stat"), format!("40 ({name}) S 1 0 0")).unwrap();
            let _ = std::fs::remove_file(dir.join("exe"));
            symlink(exe, dir.join("exe")).unwrap();
        };
        let cache = ExeCache::default();
        set("sh", "/bin/busybox");
        assert_eq!(
            cache.executable(&proc, 40, &comm("sh")).as_deref(),
            Some("/bin/busybox")
        );
        // Within the window a process of the same pid and name is taken to
        // be the same one; another name is read again.
        set("sh", "/tmp/other");
        assert_eq!(
            cache.executable(&proc, 40, &comm("sh")).as_deref(),
            Some("/bin/busybox")
        );
        set("python3", "/usr/bin/python3");
        assert_eq!(
            cache.executable(&proc, 40, &comm("python3")).as_deref(),
            Some("/usr/bin/python3")
        );
        set("sh", "/tmp/other");
        std::thread::sleep(EXE_TTL);
        assert_eq!(
            cache.executable(&proc, 40, &comm("sh")).as_deref(),
            Some("/tmp/other")
        );
        std::fs::remove_dir_all(&proc).unwrap();
    }

    #[test]
    fn stat_lines_with_odd_names_parse() {
        assert_eq!(
            parse_stat("42 (sh) S 7 42 42 0 -1"),
            Some(("sh".to_owned(), 7))
        );
        assert_eq!(
            parse_stat("43 (a) b (c)) R 42 1"),
            Some(("a) b (c)".to_owned(), 42))
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(namespace_inode("mnt:[4026531841]"), Some(4_026_531_841));
        assert_eq!(namespace_inode("mnt"), None);
    }
}
