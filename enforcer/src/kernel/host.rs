//! What "the host" is: the mount namespace and root directory that host
//! processes have. A process with another mount namespace *and* another root
//! is a container process.

use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// The process whose namespaces are the host's by default: init. Also right
/// when the agent runs in a container (a `DaemonSet` pod with `hostPID: true`).
pub const DEFAULT_HOST_PID: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a namespace file (inode {inode} does not fit a namespace id)")]
    NotANamespace { path: PathBuf, inode: u64 },
}

/// The host as the kernel programs recognise it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostIdentity {
    /// Mount namespace inode number, as the kernel's `ns_common.inum`.
    pub mnt_ns: u32,
    /// Root directory's device, kernel encoding (major << 20 | minor), as
    /// `super_block.s_dev`.
    pub root_dev: u32,
    /// Root directory's inode number.
    pub root_ino: u64,
    /// Pid namespace inode number, where known: pid 1 there is not a
    /// container's.
    pub pid_ns: Option<u32>,
    /// The `/proc/PID` directory this was read from.
    pub source: PathBuf,
    /// Set when the host PID's entries could not be read and the agent used
    /// its own instead; says why.
    pub fallback: Option<String>,
}

fn metadata(path: &Path) -> Result<std::fs::Metadata, HostError> {
    std::fs::metadata(path).map_err(|source| HostError::Read {
        path: path.to_owned(),
        source,
    })
}

/// `st_dev` (glibc's encoding) to the kernel's internal `dev_t` encoding.
pub fn kernel_dev(st_dev: u64) -> u32 {
    let major = libc::major(st_dev);
    let minor = libc::minor(st_dev);
    (major << 20) | (minor & 0xf_ffff)
}

/// A running process that is a container process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerProcess {
    pub pid: u32,
    /// Inode number of its mount namespace.
    pub mnt_ns: u32,
    /// `/proc/PID/root`: its root directory.
    pub root: PathBuf,
}

/// `PF_KTHREAD` in a task's flags.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Every running container process, in `/proc` order. Processes that exit
/// while they are looked at are skipped.
pub fn container_processes(host: &HostIdentity) -> impl Iterator<Item = ContainerProcess> + '_ {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| container_process(host, pid))
}

/// Process `pid`, if it is a container process: its mount namespace and its
/// root are not the host's.
pub fn container_process(host: &HostIdentity, pid: u32) -> Option<ContainerProcess> {
    let dir = Path::new("/proc").join(pid.to_string());
    // Kernel threads run no programs from files, and one of them, kdevtmpfs,
    // has a mount namespace of its own and devtmpfs as its root.
    if is_kernel_thread(&std::fs::read_to_string(dir.join("stat")).ok()?)? {
        return None;
    }
    let mnt_ns = u32::try_from(std::fs::metadata(dir.join("ns/mnt")).ok()?.ino()).ok()?;
    let root_path = dir.join("root");
    let root = std::fs::metadata(&root_path).ok()?;
    let host_root = kernel_dev(root.dev()) == host.root_dev && root.ino() == host.root_ino;
    if mnt_ns == host.mnt_ns || host_root {
        return None;
    }
    Some(ContainerProcess {
        pid,
        mnt_ns,
        root: root_path,
    })
}

/// A running container as the kernel programs measure its processes: its
/// cgroup and the root filesystem and mount namespace of its oldest process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningContainer {
    pub cgroup_id: u64,
    pub pid: u32,
    /// `s_dev` (kernel encoding) of its root filesystem.
    pub root_dev: u32,
    pub mnt_ns: u32,
}

/// The containers running now, one per cgroup v2 group (the root group
/// excepted), each as its oldest process sees it: the container's first
/// process, started by its runtime, before any process of the container
/// could have changed its own root. `cgroup2` is the host's cgroup v2 mount
/// and `cgroup2_root` its root as the agent's cgroup namespace names it.
pub fn running_containers(
    host: &HostIdentity,
    cgroup2: &Path,
    cgroup2_root: &str,
) -> Vec<RunningContainer> {
    let mut oldest: std::collections::BTreeMap<u64, (u64, RunningContainer)> =
        std::collections::BTreeMap::new();
    for process in container_processes(host) {
        let dir = Path::new("/proc").join(process.pid.to_string());
        let Some(started) = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|stat| start_time(&stat))
        else {
            continue;
        };
        let Some(cgroup_id) = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|text| cgroup_v2_path(&text).map(str::to_owned))
            .and_then(|path| in_mount(&path, cgroup2_root))
            .and_then(|path| std::fs::metadata(cgroup2.join(path)).ok())
            .map(|group| group.ino())
            .filter(|&id| id > ROOT_CGROUP_ID)
        else {
            continue;
        };
        let Ok(root) = std::fs::metadata(&process.root) else {
            continue;
        };
        let found = RunningContainer {
            cgroup_id,
            pid: process.pid,
            root_dev: kernel_dev(root.dev()),
            mnt_ns: process.mnt_ns,
        };
        match oldest.get(&cgroup_id) {
            Some((earlier, _)) if *earlier <= started => {}
            _ => {
                oldest.insert(cgroup_id, (started, found));
            }
        }
    }
    oldest.into_values().map(|(_, found)| found).collect()
}

/// The cgroup v2 root's id (its directory's inode number).
const ROOT_CGROUP_ID: u64 = 1;

/// The cgroup v2 path of `/proc/PID/cgroup` text (`0::/path`), relative to
/// the reader's cgroup namespace (`/../..` and up when the process is
/// outside it, as a node's containers are for an agent in a pod). Pure.
fn cgroup_v2_path(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .filter(|path| path.starts_with('/'))
}

/// Where the group at `path` is inside a cgroup v2 mount whose root is
/// `root`, both as the reader's cgroup namespace names them; `None` when
/// the group is not under that root. Pure.
fn in_mount(path: &str, root: &str) -> Option<String> {
    fn parts(text: &str) -> Vec<&str> {
        text.split('/').filter(|part| !part.is_empty()).collect()
    }
    let (path, root) = (parts(path), parts(root));
    let rest = path.strip_prefix(root.as_slice())?;
    (!rest.contains(&"..")).then(|| rest.join("/"))
}

/// `starttime` (the 22nd field) of `/proc/PID/stat` text. Pure.
fn start_time(stat: &str) -> Option<u64> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `/proc/PID/stat` text is a kernel thread's (`flags`, the ninth
/// field, counted after the command name, which may hold spaces and `)`).
fn is_kernel_thread(stat: &str) -> Option<bool> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    let flags: u64 = after_comm.split_whitespace().nth(6)?.parse().ok()?;
    Some(flags & PF_KTHREAD != 0)
}

fn read_identity(proc_dir: &Path) -> Result<HostIdentity, HostError> {
    let ns_path = proc_dir.join("ns/mnt");
    let ns_inode = metadata(&ns_path)?.ino();
    let mnt_ns = u32::try_from(ns_inode).map_err(|_| HostError::NotANamespace {
        path: ns_path,
        inode: ns_inode,
    })?;
    // `/proc/PID/root` resolves to that process's root directory, in its own
    // mount namespace.
    let root = metadata(&proc_dir.join("root"))?;
    Ok(HostIdentity {
        mnt_ns,
        root_dev: kernel_dev(root.dev()),
        root_ino: root.ino(),
        pid_ns: metadata(&proc_dir.join("ns/pid"))
            .ok()
            .and_then(|ns| u32::try_from(ns.ino()).ok()),
        source: proc_dir.to_owned(),
        fallback: None,
    })
}

/// The host identity of process `pid`; when its entries cannot be read (some
/// sandboxes hide PID 1 even from root), the agent's own, with the reason.
pub fn host_identity(pid: u32) -> Result<HostIdentity, HostError> {
    match read_identity(&Path::new("/proc").join(pid.to_string())) {
        Ok(identity) => Ok(identity),
        Err(error) => Ok(HostIdentity {
            fallback: Some(error.to_string()),
            ..read_identity(Path::new("/proc/self"))?
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn cgroup_paths_and_start_times_are_read_from_proc_text() {
        assert_eq!(
            cgroup_v2_path("0::/kubepods.slice/pod1/cri-containerd-a.scope\n"),
            Some("/kubepods.slice/pod1/cri-containerd-a.scope")
        );
        assert_eq!(
            cgroup_v2_path("1:name=systemd:/x\n0::/../../x\n"),
            Some("/../../x")
        );
        assert_eq!(cgroup_v2_path("1:cpu:/x\n"), None);
        // A host's tree seen from a pod's cgroup namespace.
        assert_eq!(
            in_mount("/../../kubepods/pod1/c", "/../.."),
            Some("kubepods/pod1/c".to_owned())
        );
        assert_eq!(
            in_mount("/kubepods/pod1/c", "/"),
            Some("kubepods/pod1/c".to_owned())
        );
        assert_eq!(in_mount("/../x", "/../.."), None);
        assert_eq!(in_mount("/../../../x", "/../.."), None);
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(start_time(stat), Some(98765));
    }

    #[test]
    fn own_identity_matches_proc_self() {
        let own = read_identity(Path::new("/proc/self")).unwrap();
        let link = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        assert_eq!(link.to_string_lossy(), format!("mnt:[{}]", own.mnt_ns));
        let root = std::fs::metadata("/").unwrap();
        assert_eq!(own.root_ino, root.ino());
        assert_eq!(own.root_dev, kernel_dev(root.dev()));
    }

    #[test]
    fn finds_no_container_for_this_process() {
        // The test process runs on the host: with its own namespace and root
        // as the host's, it is not a container process.
        let own = host_identity(std::process::id()).unwrap();
        assert_eq!(container_process(&own, std::process::id()), None);
    }

    #[test]
    fn tells_kernel_threads() {
        let kthread = "26 (kdevtmpfs) S 2 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 16";
        assert_eq!(is_kernel_thread(kthread), Some(true));
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert_eq!(is_kernel_thread(&own), Some(false));
        assert_eq!(
            is_kernel_thread("1 (a) b) S 0 1 1 0 -1 4194560 0"),
            Some(false)
        );
        assert_eq!(is_kernel_thread("garbage"), None);
    }

    #[test]
    fn resolution_always_yields_an_identity() {
        let host = host_identity(DEFAULT_HOST_PID).unwrap();
        assert_ne!(host.mnt_ns, 0);
        // Either PID 1 was readable, or the fallback says why not.
        assert_eq!(
            host.fallback.is_some(),
            host.source == Path::new("/proc/self")
        );
    }

    #[test]
    fn an_unreadable_pid_falls_back_with_the_reason() {
        // PID numbers stop well below this.
        let host = host_identity(u32::MAX).unwrap();
        assert_eq!(host.source, Path::new("/proc/self"));
        assert!(host.fallback.unwrap().contains("/proc/4294967295/ns/mnt"));
    }

    #[test]
    fn device_numbers_use_the_kernel_encoding() {
        // 8:1 (sda1) in glibc's encoding is 0x801; the kernel's is 8 << 20 | 1.
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        // Anonymous devices (overlay, tmpfs) have major 0 and large minors.
        assert_eq!(kernel_dev(libc::makedev(0, 300)), 300);
    }
}
