//! Which container a process runs in, from the kernel's view: the cgroup v2
//! group of the task (its id is in every event) and the names container
//! runtimes give those groups.
//!
//! The naming schemes ([`from_cgroup_path`], pure):
//! - containerd (CRI, systemd driver): `.../kubepods-<qos>-pod<UID>.slice/cri-containerd-<ID>.scope`
//! - containerd (cgroupfs driver): `/kubepods/<qos>/pod<UID>/<ID>`
//! - CRI-O: `.../crio-<ID>.scope` (`crio-conmon-<ID>.scope` is its monitor, not the container)
//! - Docker: `/system.slice/docker-<ID>.scope`, `/docker/<ID>`
//! - Podman: `/machine.slice/libpod-<ID>.scope` (also rootless, under `user@UID.service`, and
//!   with a nested `container` group), `/libpod_parent/libpod-<ID>`
//!
//! [`CgroupIndex`] maps cgroup ids to paths by reading the cgroup v2 tree,
//! where a group's id is its directory's inode number.

pub mod cgroup_watch;
pub mod cri;
pub mod image;
pub mod kubernetes;
pub mod podman;
pub mod registry;

use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub use image::{ImageGlobs, ImageRef};

/// The container runtime that named a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
    /// Started through an OCI hook from a group no naming scheme matches.
    Unknown,
}

impl Runtime {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Docker => "docker",
            Self::Podman => "podman",
            Self::Unknown => "unknown",
        }
    }
}

/// A container as its cgroup names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupContainer {
    /// The runtime's container id (64 hex digits).
    pub id: String,
    pub runtime: Runtime,
    /// The Kubernetes pod's UID, when the group is under `kubepods`.
    pub pod_uid: Option<String>,
}

/// The Kubernetes pod a container belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
    /// The pod's labels, once the Kubernetes API reported the pod (OCI
    /// annotations do not carry them).
    pub labels: Option<BTreeMap<String, String>>,
    /// How the container came to be in the pod (from the API).
    pub kind: Option<kubernetes::ContainerKind>,
}

/// What the agent knows of a container beyond its cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: Option<String>,
    pub runtime: Runtime,
    pub image: Option<ImageRef>,
    pub pod: Option<PodRef>,
    /// The container's first process (host pid), when its OCI hook said.
    pub init_pid: Option<u32>,
}

/// What a Kubernetes runtime (containerd's CRI plugin, CRI-O) writes into a
/// container's OCI annotations, which its OCI hooks receive. `None` when
/// the annotations name no image (Podman's do not). Pure.
pub fn from_annotations(
    id: &str,
    runtime: Runtime,
    annotations: &BTreeMap<String, String>,
) -> Option<ContainerInfo> {
    let first = |keys: &[&str]| {
        keys.iter()
            .find_map(|key| annotations.get(*key).filter(|value| !value.is_empty()))
            .cloned()
    };
    let image = first(&[
        "io.kubernetes.cri.image-name",
        "io.kubernetes.cri-o.ImageName",
    ])?;
    let pod = PodRef {
        namespace: first(&[
            "io.kubernetes.cri.sandbox-namespace",
            "io.kubernetes.pod.namespace",
        ]),
        name: first(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"]),
        uid: first(&["io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid"]),
        labels: None,
        kind: None,
    };
    Some(ContainerInfo {
        id: id.to_owned(),
        name: first(&[
            "io.kubernetes.cri.container-name",
            "io.kubernetes.container.name",
        ]),
        runtime,
        image: ImageRef::parse(&image),
        pod: (pod != PodRef::default()).then_some(pod),
        init_pid: None,
    })
}

fn is_container_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// The container a cgroup v2 path (as in `/proc/PID/cgroup`, starting at
/// the hierarchy's root) belongs to, if a runtime named it. Pure.
pub fn from_cgroup_path(path: &str) -> Option<CgroupContainer> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let kubernetes = components
        .first()
        .is_some_and(|c| c.starts_with("kubepods"));
    // The innermost component that names a container: runtimes may nest
    // groups of their own under it (Podman's `container`, `init.scope`).
    let (index, id, runtime) =
        components
            .iter()
            .enumerate()
            .rev()
            .find_map(|(index, component)| {
                let (id, runtime) = container_component(component, kubernetes)?;
                Some((index, id, runtime))
            })?;
    let pod_uid = components[..index].iter().rev().find_map(|c| pod_uid(c));
    Some(CgroupContainer {
        id: id.to_owned(),
        runtime,
        pod_uid,
    })
}

fn container_component(component: &str, kubernetes: bool) -> Option<(&str, Runtime)> {
    let scoped = |prefix: &str| {
        component
            .strip_prefix(prefix)
            .map(|rest| rest.strip_suffix(".scope").unwrap_or(rest))
            .filter(|id| is_container_id(id))
    };
    if component.starts_with("crio-conmon-") {
        return None;
    }
    for (prefix, runtime) in [
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
    ] {
        if let Some(id) = scoped(prefix) {
            return Some((id, runtime));
        }
    }
    // cgroupfs drivers name the group by the bare id: containerd under
    // kubepods, Docker under /docker.
    if is_container_id(component) {
        let runtime = if kubernetes {
            Runtime::Containerd
        } else {
            Runtime::Docker
        };
        return Some((component, runtime));
    }
    None
}

/// `pod<UID>` (cgroupfs) or `kubepods-<qos>-pod<UID>.slice` (systemd, with
/// `_` for `-`).
fn pod_uid(component: &str) -> Option<String> {
    let name = component.strip_suffix(".slice").unwrap_or(component);
    let (_, uid) = name.rsplit_once("pod")?;
    let uid = uid.replace('_', "-");
    let valid = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, byte)| {
            matches!(i, 8 | 13 | 18 | 23) == (byte == b'-')
                && (byte == b'-' || byte.is_ascii_hexdigit())
        });
    valid.then_some(uid)
}

/// Groups the index holds before it starts over.
const INDEX_MAX: usize = 1 << 16;

/// Rescans of the cgroup tree for an unknown id are at most this frequent.
const RESCAN_INTERVAL: Duration = Duration::from_millis(500);

/// Cgroup ids to the containers their groups name, read from the cgroup v2
/// tree and refreshed when an unknown id shows up.
#[derive(Debug)]
pub struct CgroupIndex {
    mount: Option<PathBuf>,
    paths: HashMap<u64, String>,
    /// The last scan for an unknown id. The registry's periodic scans do not
    /// count: a group created just after one must still be found by its
    /// first event.
    last_miss_scan: Option<Instant>,
}

impl CgroupIndex {
    /// The index of the cgroup v2 tree mounted at `mount` (none: every
    /// lookup answers `None`).
    pub fn new(mount: Option<PathBuf>) -> Self {
        Self {
            mount,
            paths: HashMap::new(),
            last_miss_scan: None,
        }
    }

    /// The container of group `id`, if a runtime named the group. A group
    /// created since the last scan is found by a new scan; one removed before
    /// its events are read is not found.
    pub fn container(&mut self, id: u64) -> Option<CgroupContainer> {
        self.learn(id);
        self.paths.get(&id).and_then(|path| from_cgroup_path(path))
    }

    /// Makes sure group `id` is known while it still exists: reads the tree
    /// again when it is not (at most every [`RESCAN_INTERVAL`]).
    pub fn learn(&mut self, id: u64) {
        if id != 0
            && !self.paths.contains_key(&id)
            && self
                .last_miss_scan
                .is_none_or(|last| last.elapsed() >= RESCAN_INTERVAL)
        {
            self.last_miss_scan = Some(Instant::now());
            self.rescan();
        }
    }

    /// The cgroup v2 mount the index reads.
    pub fn mount(&self) -> Option<&Path> {
        self.mount.as_deref()
    }

    /// Learns the group at `dir`, a directory under the mount; returns its id
    /// and path in the tree (`None`: gone, or not under the mount).
    pub fn add(&mut self, dir: &Path) -> Option<(u64, String)> {
        let relative = dir.strip_prefix(self.mount.as_ref()?).ok()?;
        let metadata = std::fs::metadata(dir).ok()?;
        if !metadata.is_dir() {
            return None;
        }
        let path = format!("/{}", relative.display());
        self.paths.insert(metadata.ino(), path.clone());
        Some((metadata.ino(), path))
    }

    /// Reads the tree again and returns the groups that exist now, by id.
    pub fn rescan(&mut self) -> HashMap<u64, String> {
        let Some(mount) = self.mount.clone() else {
            return HashMap::new();
        };
        // Groups removed since stay known, so that the events of a container
        // that has exited still name it (cgroup v2 ids are not reused while
        // the machine runs); the index is bounded all the same, by
        // forgetting the groups that are gone (the oldest records' groups
        // were written long ago).
        let found = self.add_tree(&mount);
        if self.paths.len() > INDEX_MAX {
            self.paths.retain(|id, _| found.contains_key(id));
        }
        found
    }

    /// Learns the groups at and under `dir`, a directory under the mount;
    /// returns them by id.
    pub fn add_tree(&mut self, dir: &Path) -> HashMap<u64, String> {
        let mut found = HashMap::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(dir) = pending.pop() {
            let Some((id, path)) = self.add(&dir) else {
                continue;
            };
            found.insert(id, path);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            pending.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
                    .map(|entry| entry.path()),
            );
        }
        found
    }
}

/// Where cgroup v2 is mounted, from `/proc/self/mountinfo` (see
/// [`topmost_cgroup2`]).
pub fn cgroup2_mount() -> Option<PathBuf> {
    topmost_cgroup2(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)
}

/// [`cgroup2_mount`] with its root, as this process's cgroup namespace
/// names it (`/` on a host, `/../..` for the host's tree in a pod).
pub fn cgroup2_mount_and_root() -> Option<(PathBuf, String)> {
    topmost_cgroup2_and_root(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)
}

/// The cgroup2 mount of `mountinfo` whose root is highest in the cgroup
/// tree; the first of those. Pure.
///
/// On a host there is one, at the root. In a pod with its own cgroup
/// namespace (the default on cgroup v2), the runtime mounts the agent's own
/// cgroup at `/sys/fs/cgroup`, whose root reads `/` (the namespace's root),
/// and the `DaemonSet` mounts the host's tree elsewhere, whose root reads
/// `/../..` (above the namespace's root): only that one shows every
/// container's cgroup, so the one with the most `..` wins.
pub fn topmost_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    topmost_cgroup2_and_root(mountinfo).map(|(mountpoint, _)| mountpoint)
}

/// [`topmost_cgroup2`], with the mount's root. Pure.
pub fn topmost_cgroup2_and_root(mountinfo: &str) -> Option<(PathBuf, String)> {
    // Fields: id parent maj:min root mountpoint options ... - fstype source superopts
    let depth = |root: &str| {
        root.split('/')
            .filter(|part| !part.is_empty())
            .map(|part| if part == ".." { -1 } else { 1 })
            .sum::<i32>()
    };
    let mut best: Option<(i32, PathBuf, String)> = None;
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        if after.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let mut fields = before.split_whitespace().skip(3);
        let (Some(root), Some(mountpoint)) = (fields.next(), fields.next()) else {
            continue;
        };
        let depth = depth(root);
        if best.as_ref().is_none_or(|(best, _, _)| depth < *best) {
            best = Some((depth, PathBuf::from(mountpoint), root.to_owned()));
        }
    }
    best.map(|(_, mountpoint, root)| (mountpoint, root))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c9e0d2b4a59687c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b";

    fn parse(path: &str) -> Option<(String, Runtime, Option<String>)> {
        from_cgroup_path(path).map(|c| (c.id, c.runtime, c.pod_uid))
    }

    #[test]
    fn the_host_cgroup_tree_is_chosen_over_a_pods_own() {
        // A pod with a private cgroup namespace and the host's tree mounted
        // at /host/cgroup (hostPath), as the DaemonSet does.
        let pod = "\
1208 1100 0:25 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw
1300 1100 0:25 /../../.. /host/cgroup rw,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate
1301 1100 0:5 / /proc rw - proc proc rw";
        assert_eq!(topmost_cgroup2(pod), Some(PathBuf::from("/host/cgroup")));
        let host = "\
25 1 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
26 1 0:22 /system.slice /mnt/slice rw - cgroup2 cgroup2 rw";
        assert_eq!(topmost_cgroup2(host), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(topmost_cgroup2("1 0 0:5 / /proc rw - proc proc rw"), None);
    }

    #[test]
    fn kubernetes_runtimes_annotations_name_the_image_and_pod() {
        let containerd: BTreeMap<String, String> = [
            ("io.kubernetes.cri.container-type", "container"),
            ("io.kubernetes.cri.container-name", "web"),
            (
                "io.kubernetes.cri.image-name",
                "docker.io/library/nginx:1.25",
            ),
            ("io.kubernetes.cri.sandbox-name", "web-7d4b9"),
            ("io.kubernetes.cri.sandbox-namespace", "shop"),
            (
                "io.kubernetes.cri.sandbox-uid",
                "0d1f2e3c-4b5a-6978-8a9b-0c1d2e3f4a5b",
            ),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
        let info = from_annotations(ID, Runtime::Containerd, &containerd).unwrap();
        assert_eq!(info.name.as_deref(), Some("web"));
        let image = info.image.unwrap();
        assert_eq!(
            (image.name.as_str(), image.tag.as_deref()),
            ("docker.io/library/nginx", Some("1.25"))
        );
        let pod = info.pod.unwrap();
        assert_eq!(pod.namespace.as_deref(), Some("shop"));
        assert_eq!(pod.name.as_deref(), Some("web-7d4b9"));
        let crio: BTreeMap<String, String> = [
            ("io.kubernetes.cri-o.ImageName", "quay.io/app/api:2"),
            ("io.kubernetes.container.name", "api"),
            ("io.kubernetes.pod.namespace", "ci"),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
        let info = from_annotations(ID, Runtime::CriO, &crio).unwrap();
        assert_eq!(info.image.unwrap().name, "quay.io/app/api");
        assert_eq!(info.pod.unwrap().namespace.as_deref(), Some("ci"));
        // Podman's annotations name no image.
        let podman: BTreeMap<String, String> =
            [("io.container.manager".to_owned(), "libpod".to_owned())].into();
        assert_eq!(from_annotations(ID, Runtime::Podman, &podman), None);
    }

    #[test]
    fn every_runtime_naming_scheme_names_its_container() {
        let uid = "0d1f2e3c-4b5a-6978-8a9b-0c1d2e3f4a5b";
        let systemd_uid = uid.replace('-', "_");
        let cases = [
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{systemd_uid}.slice/cri-containerd-{ID}.scope"
                ),
                Runtime::Containerd,
                Some(uid),
            ),
            (
                format!("/kubepods/besteffort/pod{uid}/{ID}"),
                Runtime::Containerd,
                Some(uid),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{systemd_uid}.slice/crio-{ID}.scope"),
                Runtime::CriO,
                Some(uid),
            ),
            (
                format!("/system.slice/docker-{ID}.scope"),
                Runtime::Docker,
                None,
            ),
            (format!("/docker/{ID}"), Runtime::Docker, None),
            (
                format!("/machine.slice/libpod-{ID}.scope"),
                Runtime::Podman,
                None,
            ),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                Runtime::Podman,
                None,
            ),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
                ),
                Runtime::Podman,
                None,
            ),
            (format!("/libpod_parent/libpod-{ID}"), Runtime::Podman, None),
        ];
        for (path, runtime, pod) in cases {
            assert_eq!(
                parse(&path),
                Some((ID.to_owned(), runtime, pod.map(str::to_owned))),
                "{path}"
            );
        }
    }

    #[test]
    fn groups_that_are_not_containers_name_none() {
        for path in [
            "/",
            "/system.slice/sshd.service",
            "/user.slice/user-1000.slice/session-3.scope",
            &format!("/system.slice/crio-conmon-{ID}.scope"),
            "/machine.slice/libpod-conmon-abc.scope",
            "/docker/not-an-id",
        ] {
            assert_eq!(parse(path), None, "{path}");
        }
    }

    #[test]
    fn the_index_finds_groups_by_inode_number() {
        let root = std::env::temp_dir().join(format!("enforcer-cgroups-{}", std::process::id()));
        let group = root.join(format!("machine.slice/libpod-{ID}.scope"));
        std::fs::create_dir_all(&group).unwrap();
        let id = std::fs::metadata(&group).unwrap().ino();
        let mut index = CgroupIndex::new(Some(root.clone()));
        let container = index.container(id).unwrap();
        assert_eq!(container.id, ID);
        assert_eq!(container.runtime, Runtime::Podman);
        assert_eq!(index.container(0), None);
        // A group made just after a periodic scan is found by its first
        // event all the same.
        let mut index = CgroupIndex::new(Some(root.clone()));
        let live = index.rescan();
        assert!(live.contains_key(&id));
        let later = root.join(format!("machine.slice/libpod-{}0.scope", &ID[..63]));
        std::fs::create_dir_all(&later).unwrap();
        let later_id = std::fs::metadata(&later).unwrap().ino();
        assert!(index.container(later_id).is_some());
        // Past its bound, the index forgets the groups that are gone, not
        // the ones that exist.
        let removed = (1..=INDEX_MAX as u64).map(|n| (u64::MAX - n, format!("/gone/{n}")));
        index.paths.extend(removed);
        let live = index.rescan();
        assert!(live.contains_key(&id) && live.contains_key(&later_id));
        assert_eq!(index.paths.len(), live.len());
        assert!(index.container(id).is_some());
        let _ = std::fs::remove_dir_all(&root);
    }
}
