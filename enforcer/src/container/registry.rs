//! The containers on this node, for policy selection and events: found
//! from their cgroups ([`Registry::discover`], every second and at start)
//! or announced by the runtime's OCI hook before their first exec
//! ([`Registry::starting`]), and named from what the runtime recorded
//! (Podman's storage, or the OCI annotations Kubernetes runtimes write) and
//! what the Kubernetes API says of their pods ([`Registry::pods_changed`]).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
};

use serde::{Deserialize, Serialize};

use super::{
    CgroupContainer, CgroupIndex, ContainerInfo, PodRef, Runtime, cgroup_watch::CgroupWatch,
    cri::CriHandle, from_annotations, from_cgroup_path, kubernetes::SharedPods,
    podman::PodmanStore,
};

/// Containers by id, shared with the event enricher.
pub type Catalog = Arc<Mutex<HashMap<String, ContainerInfo>>>;

/// Containers the catalog holds before those that are gone are dropped.
/// Gone ones are kept until then, so that their late events still name
/// them; a node that runs many short-lived containers does not grow it
/// without bound.
const CATALOG_MAX: usize = 4096;

/// What an OCI runtime hands its hooks on standard input (the runtime
/// spec's "state"), as far as the agent needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookState {
    pub id: String,
    /// The container's first process, in the runtime's (the host's) pid
    /// namespace.
    pub pid: u32,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A container to place in a vShield scope: its groups and what is known
/// of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    pub info: ContainerInfo,
    pub cgroups: BTreeSet<u64>,
}

/// What changed since the last look.
#[derive(Debug, Default)]
pub struct Discovery {
    /// New containers, new groups of known ones, and containers whose image
    /// became known: each with all its live groups.
    pub found: Vec<Known>,
    /// Groups that no longer exist.
    pub gone: Vec<u64>,
}

impl Discovery {
    /// Hands what changed to the vShields in force; logs each container
    /// placed with the scope it is in.
    ///
    /// # Errors
    /// The kernel maps could not be written.
    pub fn place(
        self,
        ebpf: &mut aya::Ebpf,
        active: &mut crate::active::ActiveVShields,
    ) -> Result<(), crate::active::ActiveError> {
        let placed: Vec<ContainerInfo> =
            self.found.iter().map(|known| known.info.clone()).collect();
        active.place(ebpf, self.found)?;
        active.forget(ebpf, &self.gone)?;
        for info in placed {
            let pod = info.pod.as_ref();
            let scope = active.scope_of(&info.id);
            tracing::info!(
                container.id = %info.id,
                container.image = %info.image.as_ref().map_or_else(|| "unknown".to_owned(), ToString::to_string),
                kubernetes.namespace = %pod.and_then(|pod| pod.namespace.as_deref()).unwrap_or(""),
                kubernetes.pod = %pod.and_then(|pod| pod.name.as_deref()).unwrap_or(""),
                scope = %scope.map_or_else(|| "unknown".to_owned(), |scope| scope.to_string()),
                "container placed"
            );
        }
        Ok(())
    }

    /// [`Self::place`], with a failure logged: the next look tries again.
    pub fn place_or_log(self, ebpf: &mut aya::Ebpf, active: &mut crate::active::ActiveVShields) {
        if let Err(error) = self.place(ebpf, active) {
            tracing::error!(error = %crate::error_chain(&error), "placing containers failed");
        }
    }
}

/// What a source of container metadata reported as changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The Kubernetes API: these pods (by UID).
    Pods(BTreeSet<String>),
    /// A CRI runtime: these containers (by id).
    Containers(BTreeSet<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("container {id}: reading /proc/{pid}/cgroup: {source}")]
    ProcCgroup {
        id: String,
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("container {id}: process {pid} is in no cgroup v2 group ({line:?})")]
    NoGroup { id: String, pid: u32, line: String },
    #[error("container {id}: no cgroup v2 tree is mounted where the agent can see it")]
    NoCgroup2 { id: String },
    #[error("container {id}: its group {path}: {source}")]
    Group {
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct Registry {
    cgroups: Arc<Mutex<CgroupIndex>>,
    catalog: Catalog,
    podman: PodmanStore,
    /// Live groups already handed out, with their container's id.
    groups: HashMap<u64, String>,
    /// Containers handed out without an image, looked up again when
    /// Podman's storage changes.
    unnamed: BTreeSet<String>,
    /// The node's pods, when the agent watches the Kubernetes API.
    pods: Option<SharedPods>,
    /// The CRI runtimes' containers, when the agent reads their sockets.
    cri: Option<CriHandle>,
    /// Containers handed out without an image that the CRI runtimes were
    /// asked about.
    asked: BTreeSet<String>,
    /// Tells the cgroup index of groups as they are created.
    cgroup_watch: Option<CgroupWatch>,
}

impl Registry {
    pub fn new(cgroups: Arc<Mutex<CgroupIndex>>, catalog: Catalog, podman: PodmanStore) -> Self {
        Self {
            cgroups,
            catalog,
            podman,
            groups: HashMap::new(),
            unnamed: BTreeSet::new(),
            pods: None,
            cri: None,
            asked: BTreeSet::new(),
            cgroup_watch: None,
        }
    }

    /// Names Kubernetes containers from what their CRI runtime reports.
    #[must_use]
    pub fn with_cri(mut self, cri: CriHandle) -> Self {
        self.cri = Some(cri);
        self
    }

    /// Keeps `watch` running as long as the registry.
    #[must_use]
    pub fn with_cgroup_watch(mut self, watch: CgroupWatch) -> Self {
        self.cgroup_watch = Some(watch);
        self
    }

    /// Names containers from the pods the Kubernetes API reports as well.
    #[must_use]
    pub fn with_pods(mut self, pods: SharedPods) -> Self {
        self.pods = Some(pods);
        self
    }

    /// The containers `change` concerns, described again.
    pub fn changed(&mut self, change: &Change) -> Discovery {
        match change {
            Change::Pods(uids) => self.pods_changed(uids),
            Change::Containers(ids) => self.containers_changed(ids),
        }
    }

    /// The Kubernetes API reported changes to the pods `uids` (added,
    /// relabelled, a container started, deleted): their running containers,
    /// described again, with all their live groups.
    pub fn pods_changed(&mut self, uids: &BTreeSet<String>) -> Discovery {
        let pods = self.pods.clone();
        self.describe_again(|id, info| {
            let pod_uid = info.pod.as_ref().and_then(|pod| pod.uid.as_ref());
            let pods = pods
                .as_ref()
                .map(|pods| pods.lock().unwrap_or_else(PoisonError::into_inner));
            let reported = pods
                .as_ref()
                .and_then(|pods| pods.of_container(id))
                .map(|(pod, _)| &pod.uid);
            [pod_uid, reported]
                .into_iter()
                .flatten()
                .any(|uid| uids.contains(uid))
        })
    }

    /// A CRI runtime reported changes to the containers `ids`: those that
    /// run, described again, with all their live groups.
    pub fn containers_changed(&mut self, ids: &BTreeSet<String>) -> Discovery {
        self.describe_again(|id, _| ids.contains(id))
    }

    /// The running containers `affected` picks (by id and what is known of
    /// them), described again, with all their live groups.
    fn describe_again(&mut self, affected: impl Fn(&str, &ContainerInfo) -> bool) -> Discovery {
        let mut live: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for (cgroup, id) in &self.groups {
            live.entry(id.clone()).or_default().insert(*cgroup);
        }
        let affected: Vec<(CgroupContainer, BTreeSet<u64>)> = {
            let catalog = self.catalog.lock().unwrap_or_else(PoisonError::into_inner);
            live.into_iter()
                .filter_map(|(id, cgroups)| {
                    let info = catalog.get(&id)?;
                    affected(&id, info).then(|| {
                        let container = CgroupContainer {
                            runtime: info.runtime,
                            pod_uid: info.pod.as_ref().and_then(|pod| pod.uid.clone()),
                            id,
                        };
                        (container, cgroups)
                    })
                })
                .collect()
        };
        let mut discovery = Discovery::default();
        for (container, cgroups) in affected {
            let info = self.describe(&container);
            discovery.found.push(self.record(info, cgroups));
        }
        discovery
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Reads the cgroup tree and reports what changed.
    pub fn discover(&mut self) -> Discovery {
        let live = self
            .cgroups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .rescan();
        let store_changed = self.podman.changed();
        let mut by_container: BTreeMap<String, (CgroupContainer, BTreeSet<u64>, bool)> =
            BTreeMap::new();
        for (cgroup, path) in &live {
            let Some(container) = from_cgroup_path(path) else {
                continue;
            };
            let new = !self.groups.contains_key(cgroup);
            let entry = by_container
                .entry(container.id.clone())
                .or_insert_with(|| (container, BTreeSet::new(), false));
            entry.1.insert(*cgroup);
            entry.2 |= new;
        }
        let mut discovery = Discovery::default();
        for (id, (container, cgroups, new)) in by_container {
            if !(new || store_changed && self.unnamed.contains(&id)) {
                continue;
            }
            let info = self.describe(&container);
            if !new && info.image.is_none() {
                continue;
            }
            discovery.found.push(self.record(info, cgroups));
        }
        let gone: Vec<u64> = self
            .groups
            .keys()
            .filter(|cgroup| !live.contains_key(cgroup))
            .copied()
            .collect();
        for cgroup in &gone {
            self.groups.remove(cgroup);
        }
        let ids: BTreeSet<&String> = self.groups.values().collect();
        self.unnamed.retain(|id| ids.contains(id));
        self.asked.retain(|id| ids.contains(id));
        let mut catalog = self.catalog.lock().unwrap_or_else(PoisonError::into_inner);
        if catalog.len() > CATALOG_MAX {
            catalog.retain(|id, _| ids.contains(id));
        }
        drop(catalog);
        discovery.gone = gone;
        discovery
    }

    /// A container the runtime is about to start (its OCI hook ran): its
    /// group, read from its first process, and what is known of it.
    ///
    /// # Errors
    /// The process's group cannot be read.
    pub fn starting(&mut self, state: &HookState) -> Result<Known, RegistryError> {
        let id = &state.id;
        let proc_path = format!("/proc/{}/cgroup", state.pid);
        let text =
            std::fs::read_to_string(&proc_path).map_err(|source| RegistryError::ProcCgroup {
                id: id.clone(),
                pid: state.pid,
                source,
            })?;
        let path = text
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .ok_or_else(|| RegistryError::NoGroup {
                id: id.clone(),
                pid: state.pid,
                line: text.trim().to_owned(),
            })?;
        let mount = self
            .cgroups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .mount()
            .map(PathBuf::from)
            .ok_or_else(|| RegistryError::NoCgroup2 { id: id.clone() })?;
        let dir = mount.join(path.trim_start_matches('/'));
        let cgroup = std::fs::metadata(&dir)
            .map_err(|source| RegistryError::Group {
                id: id.clone(),
                path: dir.clone(),
                source,
            })?
            .ino();
        let runtime = from_cgroup_path(path).map_or_else(
            || runtime_of(&state.annotations),
            |container| container.runtime,
        );
        let mut info = match from_annotations(id, runtime, &state.annotations) {
            Some(claimed) => self.confirmed(claimed),
            // `describe` adds the pod as well.
            None => self.describe(&CgroupContainer {
                id: id.clone(),
                runtime,
                pod_uid: None,
            }),
        };
        info.init_pid = Some(state.pid);
        let mut cgroups: BTreeSet<u64> = self
            .groups
            .iter()
            .filter(|(_, owner)| *owner == id)
            .map(|(cgroup, _)| *cgroup)
            .collect();
        cgroups.insert(cgroup);
        Ok(self.record(info, cgroups))
    }

    fn record(&mut self, info: ContainerInfo, cgroups: BTreeSet<u64>) -> Known {
        for cgroup in &cgroups {
            self.groups.insert(*cgroup, info.id.clone());
        }
        if info.image.is_none() {
            // A Kubernetes runtime is asked first; the warning comes when it
            // has answered without naming the image.
            let ask = self.cri.as_ref().filter(|_| {
                matches!(info.runtime, Runtime::Containerd | Runtime::CriO)
                    && !self.asked.contains(&info.id)
            });
            if let Some(cri) = ask {
                cri.look_up(&info.id);
                self.asked.insert(info.id.clone());
            } else if self.unnamed.insert(info.id.clone()) {
                tracing::warn!(
                    container.id = %info.id,
                    container.runtime = info.runtime.as_str(),
                    "container image not known (no runtime record found): every vShield with an image \
                     selector applies to it"
                );
            }
        } else {
            self.unnamed.remove(&info.id);
        }
        self.catalog
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(info.id.clone(), info.clone());
        Known { info, cgroups }
    }

    /// What the runtime recorded about a container its group names, and
    /// what the Kubernetes API says of its pod.
    fn describe(&mut self, container: &CgroupContainer) -> ContainerInfo {
        let mut info = self.recorded(container);
        self.add_cri(&mut info);
        self.add_pod(&mut info);
        info
    }

    /// What the container's CRI runtime reported fills in what the other
    /// records do not say, and names the pod's labels.
    fn add_cri(&self, info: &mut ContainerInfo) -> bool {
        let found = self.cri.as_ref().and_then(|cri| cri.get(&info.id));
        if let Some(found) = &found {
            found.fill(info);
        }
        found.is_some()
    }

    /// What an OCI hook's annotations claim (`claimed`: image, pod), taken
    /// only as the CRI runtime or the Kubernetes API says it: the hook's
    /// message could come from any process that reaches the socket and
    /// forks a child into the container's cgroup. Until one of them knows
    /// the container, no selector can tell whether it selects it, and the
    /// container is under the strictest policy of all (`UNKNOWN`) and
    /// every vShield with an image selector: claims only ever make it
    /// stricter. Pure but for the lookups.
    fn confirmed(&self, claimed: ContainerInfo) -> ContainerInfo {
        let mut info = ContainerInfo {
            id: claimed.id.clone(),
            name: None,
            runtime: claimed.runtime,
            image: None,
            pod: None,
            init_pid: None,
        };
        let by_cri = self.add_cri(&mut info);
        let by_api = self.add_pod(&mut info);
        if !by_cri && !by_api {
            tracing::info!(
                container.id = %claimed.id,
                claimed.image = claimed.image.as_ref().map(ToString::to_string).unwrap_or_default(),
                claimed.namespace = claimed.pod.as_ref().and_then(|pod| pod.namespace.clone()).unwrap_or_default(),
                "what the OCI hook claims waits for the CRI runtime or the Kubernetes API to confirm it: \
                 the strictest policy applies to the container until then"
            );
            info.name = claimed.name;
            info.pod = Some(PodRef::default());
        }
        info
    }

    /// What the Kubernetes API says of the pod of `info`'s container (found
    /// by the container's id in the pod's status, or by the pod UID of its
    /// cgroup or annotations) overrides the annotations. The labels are
    /// only kept while the API reports the pod: a deleted pod's containers
    /// are no longer selected by them.
    fn add_pod(&self, info: &mut ContainerInfo) -> bool {
        let Some(pods) = &self.pods else {
            return false;
        };
        let pods = pods.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pod) = info.pod.as_mut() {
            pod.labels = None;
            pod.kind = None;
        }
        if let Some((pod, container)) = pods.of_container(&info.id) {
            info.pod = Some(pod_ref(pod, Some(container.kind)));
            info.name = Some(container.name.clone());
            match (&mut info.image, &container.image) {
                (None, reported) => info.image.clone_from(reported),
                (Some(known), Some(reported)) => known.complete_from(reported),
                (Some(_), None) => {}
            }
            true
        } else if let Some(pod) = info
            .pod
            .as_ref()
            .and_then(|pod| pod.uid.as_deref())
            .and_then(|uid| pods.get(uid))
        {
            info.pod = Some(pod_ref(pod, None));
            true
        } else {
            false
        }
    }

    /// What the runtime recorded about a container its group names.
    fn recorded(&mut self, container: &CgroupContainer) -> ContainerInfo {
        let announced = self
            .catalog
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&container.id)
            .cloned();
        if let Some(info) = announced.as_ref().filter(|info| info.image.is_some()) {
            return info.clone();
        }
        let stored = match self.podman.get(&container.id) {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "reading Podman's storage");
                None
            }
        };
        let mut info = stored.unwrap_or_else(|| ContainerInfo {
            id: container.id.clone(),
            name: None,
            runtime: container.runtime,
            image: None,
            pod: None,
            init_pid: None,
        });
        info.runtime = container.runtime;
        info.init_pid = announced.and_then(|info| info.init_pid);
        if let Some(uid) = &container.pod_uid {
            info.pod.get_or_insert_with(Default::default).uid = Some(uid.clone());
        }
        info
    }
}

fn pod_ref(
    pod: &super::kubernetes::PodMeta,
    kind: Option<super::kubernetes::ContainerKind>,
) -> PodRef {
    PodRef {
        namespace: Some(pod.namespace.clone()),
        name: Some(pod.name.clone()),
        uid: Some(pod.uid.clone()),
        labels: Some(pod.labels.clone()),
        kind,
    }
}

/// The runtime, from annotations, for a group no runtime naming scheme
/// matches (a custom cgroup parent).
fn runtime_of(annotations: &BTreeMap<String, String>) -> Runtime {
    if annotations.get("io.container.manager").map(String::as_str) == Some("libpod") {
        Runtime::Podman
    } else if annotations
        .keys()
        .any(|key| key.starts_with("io.kubernetes.cri-o."))
    {
        Runtime::CriO
    } else if annotations
        .keys()
        .any(|key| key.starts_with("io.kubernetes.cri."))
    {
        Runtime::Containerd
    } else {
        Runtime::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c9e0d2b4a59687c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b";

    /// An OCI hook's claims, which neither the CRI nor the API confirms:
    /// no selector can tell (the strictest policy, every image-selected
    /// vShield), whatever namespace the annotations name.
    #[test]
    fn unconfirmed_hook_claims_select_nothing() {
        use crate::{policy::ContainerSelector, scopes::Selector};
        let root = std::env::temp_dir().join(format!("enforcer-claims-{}", std::process::id()));
        let registry = Registry::new(
            Arc::new(Mutex::new(CgroupIndex::new(Some(root.clone())))),
            Catalog::default(),
            PodmanStore::new(&root.join("no-podman-here")),
        );
        let annotations: BTreeMap<String, String> = [
            ("io.kubernetes.cri.image-name", "docker.io/library/nginx:1"),
            ("io.kubernetes.cri.sandbox-namespace", "ci-evil"),
            ("io.kubernetes.cri.container-name", "web"),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
        let claimed = from_annotations(ID, Runtime::Containerd, &annotations).unwrap();
        assert!(claimed.image.is_some());
        let info = registry.confirmed(claimed);
        assert_eq!(info.image, None);
        assert_eq!(info.pod, Some(PodRef::default()));
        let namespaces = ContainerSelector {
            namespaces: vec!["ci-*".to_owned()],
            ..ContainerSelector::default()
        };
        for selector in [
            namespaces,
            ContainerSelector::images(&["docker.io/library/*"]),
        ] {
            let selector = Selector::new(1, &selector).unwrap();
            assert_eq!(selector.selects(&info), None, "{selector:?}");
        }
    }

    #[test]
    fn containers_are_found_gone_and_dropped_from_a_full_catalog() {
        let root = std::env::temp_dir().join(format!("enforcer-registry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let group = root.join(format!("machine.slice/libpod-{ID}.scope"));
        std::fs::create_dir_all(&group).unwrap();
        let cgroup = std::fs::metadata(&group).unwrap().ino();
        let index = Arc::new(Mutex::new(CgroupIndex::new(Some(root.clone()))));
        let catalog = Catalog::default();
        let mut registry = Registry::new(
            index,
            catalog.clone(),
            PodmanStore::new(&root.join("no-podman-here")),
        );
        let found = registry.discover();
        assert_eq!(found.found.len(), 1);
        assert_eq!(found.found[0].info.id, ID);
        assert_eq!(found.found[0].cgroups, [cgroup].into());
        assert_eq!(found.found[0].info.image, None);
        // Nothing new the second time.
        let again = registry.discover();
        assert!(again.found.is_empty() && again.gone.is_empty());
        // The container exits: its group is gone, its record stays...
        std::fs::remove_dir(&group).unwrap();
        assert_eq!(registry.discover().gone, [cgroup]);
        assert!(catalog.lock().unwrap().contains_key(ID));
        // ...until the catalog is full.
        {
            let mut full = catalog.lock().unwrap();
            for n in 0..CATALOG_MAX {
                let mut info = full[ID].clone();
                info.id = format!("{n:064x}");
                full.insert(info.id.clone(), info);
            }
        }
        registry.discover();
        assert!(catalog.lock().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_container_the_cri_runtime_names_is_described_again_with_its_pod() {
        use crate::container::cri::{self, CriHandle};

        let root =
            std::env::temp_dir().join(format!("enforcer-registry-cri-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let uid = "0d1f2e3c-4b5a-6978-8a9b-0c1d2e3f4a5b";
        let group = root.join(format!("kubepods/besteffort/pod{uid}/{ID}"));
        std::fs::create_dir_all(&group).unwrap();
        let index = Arc::new(Mutex::new(CgroupIndex::new(Some(root.clone()))));
        let (handle, mut asked) = CriHandle::answered_by_test();
        let containers = handle.containers.clone();
        let mut registry = Registry::new(
            index,
            Catalog::default(),
            PodmanStore::new(&root.join("no-podman-here")),
        )
        .with_cri(handle);
        // Found from its cgroup: only its id and pod UID are known, and the
        // runtime is asked about it, once.
        let found = registry.discover();
        assert_eq!(found.found.len(), 1);
        assert_eq!(found.found[0].info.image, None);
        assert_eq!(asked.try_recv().unwrap(), ID);
        assert!(registry.discover().found.is_empty());
        assert!(asked.try_recv().is_err());
        // The runtime reports it.
        let status = cri::api::ContainerStatus {
            id: ID.to_owned(),
            metadata: Some(cri::api::ContainerMetadata {
                name: "nginx".to_owned(),
                attempt: 0,
            }),
            image: Some(cri::api::ImageSpec {
                image: "docker.io/library/nginx:1.25".to_owned(),
                user_specified_image: String::new(),
            }),
            ..Default::default()
        };
        let sandbox = cri::api::PodSandbox {
            id: "sandbox".to_owned(),
            metadata: Some(cri::api::PodSandboxMetadata {
                name: "web-0".to_owned(),
                uid: uid.to_owned(),
                namespace: "shop".to_owned(),
                attempt: 0,
            }),
            labels: [("app".to_owned(), "web".to_owned())].into(),
        };
        let reported = cri::container(Runtime::Containerd, &status, Some(&sandbox));
        let ids = containers
            .lock()
            .unwrap()
            .replace(Runtime::Containerd, [(ID.to_owned(), reported)].into());
        let again = registry.changed(&Change::Containers(ids));
        assert_eq!(again.found.len(), 1);
        let info = &again.found[0].info;
        assert_eq!(info.name.as_deref(), Some("nginx"));
        assert_eq!(
            info.image.as_ref().unwrap().to_string(),
            "docker.io/library/nginx:1.25"
        );
        let pod = info.pod.as_ref().unwrap();
        assert_eq!(
            (pod.namespace.as_deref(), pod.uid.as_deref()),
            (Some("shop"), Some(uid))
        );
        assert_eq!(pod.labels.as_ref().unwrap()["app"], "web");
        // A change of another container leaves this one alone.
        assert!(
            registry
                .changed(&Change::Containers(["other".to_owned()].into()))
                .found
                .is_empty()
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
