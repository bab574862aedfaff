//! A process's ancestors up to its container's first process, read from
//! `/proc` when its event is written.
//!
//! The kernel event carries the parent's pid; the walk goes up from there
//! while the ancestors share the event's mount namespace, so it ends at the
//! container's first process (ECS `process.entry_leader`; its parent is the
//! runtime's monitor, outside the container). It is best effort by nature:
//! an ancestor that has exited by the time the event is written ends the
//! walk there (the parent of a refused exec is usually a shell still waiting
//! for it).

use std::path::Path;

use serde::Serialize;

/// Ancestors listed at most (a fork bomb's depth is not worth reading).
const DEPTH_MAX: usize = 32;

/// One ancestor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ancestor {
    pub pid: u32,
    /// Its comm.
    pub name: String,
    /// The program it runs (`/proc/PID/exe`), as the container sees it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
}

/// The ancestors of a process whose parent is `parent`, nearest first, that
/// are in mount namespace `mnt_ns`, read from the proc filesystem at `proc`.
pub fn ancestors(proc: &Path, parent: u32, mnt_ns: u32) -> Vec<Ancestor> {
    let mut out = Vec::new();
    let mut pid = parent;
    while pid != 0 && out.len() < DEPTH_MAX {
        if namespace(proc, pid, "mnt") != Some(mnt_ns) {
            break;
        }
        let dir = proc.join(pid.to_string());
        let Some((name, next)) = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|stat| parse_stat(&stat))
        else {
            break;
        };
        let executable = std::fs::read_link(dir.join("exe"))
            .ok()
            .map(|path| path.to_string_lossy().into_owned());
        out.push(Ancestor {
            pid,
            name,
            executable,
        });
        pid = next;
    }
    out
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

/// The session of a process whose topmost ancestor in its container is
/// `leader`: the container's own when `leader` is its first process, known
/// from the OCI hook (`init_pid`) or, without one, being pid 1 of its pid
/// namespace; an exec session otherwise. `None` when the leader's pid
/// namespace is the host's (`host_pid_ns`), where pid 1 is not the
/// container's, or its status cannot be read.
pub fn session(
    proc: &Path,
    leader: u32,
    init_pid: Option<u32>,
    host_pid_ns: Option<u32>,
) -> Option<Session> {
    if let Some(init) = init_pid {
        return Some(if init == leader {
            Session::Container
        } else {
            Session::Exec
        });
    }
    let pid_ns = pid_namespace(proc, leader)?;
    if Some(pid_ns) == host_pid_ns {
        return None;
    }
    let status = std::fs::read_to_string(proc.join(leader.to_string()).join("status")).ok()?;
    // "NSpid:\t4242\t1": the pid in each nested namespace, innermost last.
    let innermost = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?;
    Some(if innermost == "1" {
        Session::Container
    } else {
        Session::Exec
    })
}

/// The pid namespace of process `pid` (the host's, for the host pid).
pub fn pid_namespace(proc: &Path, pid: u32) -> Option<u32> {
    namespace(proc, pid, "pid")
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

    #[test]
    fn the_walk_stops_where_the_mount_namespace_changes() {
        let proc = std::env::temp_dir().join(format!("enforcer-lineage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&proc);
        // 30 (sh) -> 20 (sh, the container's first process) -> 10 (conmon,
        // on the host).
        for (pid, name, ppid, ns, exe) in [
            (30, "sh", 20, 7, "/bin/busybox"),
            (20, "sh", 10, 7, "/bin/busybox"),
            (10, "conmon", 1, 1, "/usr/bin/conmon"),
        ] {
            let dir = proc.join(pid.to_string());
            std::fs::create_dir_all(dir.join("ns")).unwrap();
            std::fs::write(dir.join("stat"), format!("{pid} ({name}) S {ppid} 0 0")).unwrap();
            symlink(format!("mnt:[{ns}]"), dir.join("ns/mnt")).unwrap();
            symlink(exe, dir.join("exe")).unwrap();
        }
        let lineage = ancestors(&proc, 30, 7);
        let pids: Vec<u32> = lineage.iter().map(|a| a.pid).collect();
        assert_eq!(pids, [30, 20]);
        // The hook named the first process: the leader's session is the
        // container's; another leader's is an exec session.
        assert_eq!(session(&proc, 20, Some(20), None), Some(Session::Container));
        assert_eq!(session(&proc, 30, Some(20), None), Some(Session::Exec));
        // Without a hook, pid 1 of the leader's pid namespace.
        for (pid, nspid, ns) in [(20, "20\t1", 9), (30, "30\t5", 9), (10, "10", 1)] {
            let dir = proc.join(pid.to_string());
            std::fs::write(dir.join("status"), format!("Name:\tx\nNSpid:\t{nspid}\n")).unwrap();
            symlink(format!("pid:[{ns}]"), dir.join("ns/pid")).unwrap();
        }
        assert_eq!(session(&proc, 20, None, Some(1)), Some(Session::Container));
        assert_eq!(session(&proc, 30, None, Some(1)), Some(Session::Exec));
        // In the host's pid namespace there is no telling.
        assert_eq!(session(&proc, 10, None, Some(1)), None);
        assert_eq!(pid_namespace(&proc, 20), Some(9));
        assert_eq!(lineage[1].executable.as_deref(), Some("/bin/busybox"));
        // A parent that has exited ends the walk.
        assert!(ancestors(&proc, 99, 7).is_empty());
        let _ = std::fs::remove_dir_all(&proc);
    }
}
