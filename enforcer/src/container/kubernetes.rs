//! The pods of this node, from the Kubernetes API: a kube-rs watch of the
//! pods whose `spec.nodeName` is this node, kept as the little the agent
//! needs of each ([`PodMeta`]: namespace, name, labels, and the started
//! containers with their images).
//!
//! A container is tied to its pod by the pod UID in its cgroup path (known
//! from the container's first moment, before the API reports its container
//! id) or by the container id in the pod's status. The watch feeds policy
//! selection (namespaces and pod labels) and the events' `kubernetes.*`
//! fields; what the OCI annotations said is only a fallback.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::mpsc;

use super::ImageRef;

/// How a container of a pod came to be; also what a selector's
/// `containerKinds` names.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ContainerKind {
    /// `spec.containers`.
    Regular,
    /// `spec.initContainers`: runs to completion before the others.
    Init,
    /// `kubectl debug`: added to a running pod.
    Ephemeral,
}

impl ContainerKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Regular => "regular",
            Self::Init => "init",
            Self::Ephemeral => "ephemeral",
        }
    }
}

/// A started container, as the pod's status reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodContainer {
    pub name: String,
    pub kind: ContainerKind,
    /// `image` with the digest of `imageID`.
    pub image: Option<ImageRef>,
}

/// What the agent keeps of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Its started containers, by the runtime's container id (without the
    /// `containerd://` prefix).
    pub containers: BTreeMap<String, PodContainer>,
}

/// The runtime's container id of `containerd://ID`, `cri-o://ID`,
/// `docker://ID`.
fn container_id(status: &ContainerStatus) -> Option<String> {
    let id = status.container_id.as_deref()?;
    let (_, id) = id.split_once("://")?;
    (!id.is_empty()).then(|| id.to_owned())
}

/// `status.image` (what the runtime resolved the spec's image to) with the
/// digest (or image id) of `status.imageID`.
fn status_image(status: &ContainerStatus) -> Option<ImageRef> {
    ImageRef::with_reference(&status.image, &status.image_id)
}

/// What the agent keeps of `pod`; `None` for an object without a UID,
/// namespace or name (the API always sets them). Pure.
pub fn pod_meta(pod: &Pod) -> Option<PodMeta> {
    let metadata = &pod.metadata;
    let mut containers = BTreeMap::new();
    if let Some(status) = &pod.status {
        for (kind, statuses) in [
            (ContainerKind::Init, &status.init_container_statuses),
            (ContainerKind::Regular, &status.container_statuses),
            (
                ContainerKind::Ephemeral,
                &status.ephemeral_container_statuses,
            ),
        ] {
            for status in statuses.iter().flatten() {
                if let Some(id) = container_id(status) {
                    containers.insert(
                        id,
                        PodContainer {
                            name: status.name.clone(),
                            kind,
                            image: status_image(status),
                        },
                    );
                }
            }
        }
    }
    Some(PodMeta {
        uid: metadata.uid.clone().filter(|uid| !uid.is_empty())?,
        namespace: metadata.namespace.clone()?,
        name: metadata.name.clone()?,
        labels: metadata.labels.clone().unwrap_or_default(),
        containers,
    })
}

/// The node's pods, by UID.
#[derive(Debug, Default)]
pub struct Pods {
    by_uid: HashMap<String, PodMeta>,
    /// The pods listed since the watch (re)started, until the list is done:
    /// those not in it were deleted while the watch was down.
    relisted: Option<BTreeSet<String>>,
    synced: bool,
}

/// Shared between the watch task and the container registry.
pub type SharedPods = Arc<Mutex<Pods>>;

impl Pods {
    /// Applies one watch event; returns the UIDs of the pods whose
    /// metadata changed (added, modified in a field the agent keeps, or
    /// deleted). Pure.
    pub fn apply(&mut self, event: watcher::Event<Pod>) -> BTreeSet<String> {
        let mut changed = BTreeSet::new();
        match event {
            watcher::Event::Init => self.relisted = Some(BTreeSet::new()),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                if let Some(meta) = pod_meta(&pod) {
                    if let Some(relisted) = &mut self.relisted {
                        relisted.insert(meta.uid.clone());
                    }
                    if self.by_uid.get(&meta.uid) != Some(&meta) {
                        changed.insert(meta.uid.clone());
                        self.by_uid.insert(meta.uid.clone(), meta);
                    }
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid
                    && self.by_uid.remove(&uid).is_some()
                {
                    changed.insert(uid);
                }
            }
            watcher::Event::InitDone => {
                if let Some(relisted) = self.relisted.take() {
                    self.by_uid.retain(|uid, _| {
                        let listed = relisted.contains(uid);
                        if !listed {
                            changed.insert(uid.clone());
                        }
                        listed
                    });
                }
                self.synced = true;
            }
        }
        changed
    }

    /// Whether the first list of the node's pods is complete.
    pub const fn synced(&self) -> bool {
        self.synced
    }

    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }

    pub fn get(&self, uid: &str) -> Option<&PodMeta> {
        self.by_uid.get(uid)
    }

    /// The pod that reports container `id`, with the container.
    pub fn of_container(&self, id: &str) -> Option<(&PodMeta, &PodContainer)> {
        self.by_uid
            .values()
            .find_map(|pod| pod.containers.get(id).map(|container| (pod, container)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("reading the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes client configuration (in-cluster service account, $KUBECONFIG or ~/.kube/config): {0}"
    )]
    Infer(#[source] kube::config::InferConfigError),
    #[error("the Kubernetes client configuration: {0}")]
    Config(#[source] kube::config::KubeconfigError),
    #[error("the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// A client from `kubeconfig`, or else inferred: the pod's service account
/// in a cluster, `$KUBECONFIG` or `~/.kube/config` outside.
///
/// # Errors
/// No configuration, or one that does not make a client.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, KubernetesError> {
    let config = match kubeconfig {
        Some(path) => {
            let read =
                Kubeconfig::read_from(path).map_err(|source| KubernetesError::Kubeconfig {
                    path: path.to_owned(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(read, &KubeConfigOptions::default())
                .await
                .map_err(KubernetesError::Config)?
        }
        None => kube::Config::infer()
            .await
            .map_err(KubernetesError::Infer)?,
    };
    Client::try_from(config).map_err(KubernetesError::Client)
}

/// Whether the `DaemonSet` `namespace/name` (the agent's own) is being
/// uninstalled: gone, marked for deletion, or the agent's service account
/// gone with its namespace (the API rejects its token). A rolling update or
/// a deleted pod leaves the `DaemonSet` in place, and enforcement with it.
///
/// # Errors
/// Any other answer, or none: the caller keeps enforcement.
pub async fn daemonset_removed(
    client: Client,
    namespace: &str,
    name: &str,
) -> Result<Removed, kube::Error> {
    let api: Api<k8s_openapi::api::apps::v1::DaemonSet> = Api::namespaced(client, namespace);
    match api.get_opt(name).await {
        Ok(None) => Ok(Removed::Gone),
        Ok(Some(found)) if found.metadata.deletion_timestamp.is_some() => Ok(Removed::Deleting),
        Ok(Some(_)) => Ok(Removed::No),
        Err(kube::Error::Api(status)) if status.code == 401 => Ok(Removed::AccountGone),
        Err(error) => Err(error),
    }
}

/// What [`daemonset_removed`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removed {
    No,
    Gone,
    Deleting,
    AccountGone,
}

impl Removed {
    pub const fn is_removed(self) -> bool {
        !matches!(self, Self::No)
    }
}

/// Watches the pods of `node` into `pods` and sends the UIDs of those that
/// changed. Runs until `changed`'s receiver is gone. API errors are logged
/// and retried with backoff (the watcher lists again after a broken watch,
/// so nothing is missed, only late); the containers of pods not known yet
/// are selected as unknown containers meanwhile.
pub async fn watch(
    client: Client,
    node: String,
    pods: SharedPods,
    changed: mpsc::UnboundedSender<BTreeSet<String>>,
) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut failing = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                let done = matches!(event, watcher::Event::InitDone);
                let (uids, count) = {
                    let mut pods = pods.lock().unwrap_or_else(PoisonError::into_inner);
                    let uids = pods.apply(event);
                    (uids, pods.len())
                };
                if done {
                    tracing::info!(node = %node, pods = count, "Kubernetes: the node's pods are listed");
                }
                if failing {
                    tracing::info!(node = %node, "Kubernetes: the pod watch works again");
                    failing = false;
                }
                if !uids.is_empty() && changed.send(uids).is_err() {
                    return;
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(
                        node = %node,
                        error = %crate::error_chain(&error),
                        "Kubernetes: the pod watch failed; retrying with backoff (pod metadata may be stale, \
                         containers of new pods count as unknown until it works)"
                    );
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod replay;

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: &str) -> Pod {
        serde_json::from_str(json).unwrap()
    }

    const POD: &str = r#"{
        "metadata": {"name": "web-0", "namespace": "shop", "uid": "0d1f2e3c-4b5a-6978-8a9b-0c1d2e3f4a5b",
                     "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "nginx"}]},
        "status": {
            "initContainerStatuses": [{"name": "setup", "containerID": "containerd://aa", "image": "busybox:1.36",
                "imageID": "sha256:1111", "ready": false, "restartCount": 0}],
            "containerStatuses": [{"name": "nginx", "containerID": "containerd://bb",
                "image": "docker.io/library/nginx:1.25", "imageID": "docker.io/library/nginx@sha256:2222",
                "ready": true, "restartCount": 0},
                {"name": "sidecar", "image": "envoy:1", "imageID": "", "ready": false, "restartCount": 0}]
        }
    }"#;

    #[test]
    fn a_pod_is_kept_with_its_started_containers_and_their_digests() {
        let meta = pod_meta(&pod(POD)).unwrap();
        assert_eq!(
            (meta.namespace.as_str(), meta.name.as_str()),
            ("shop", "web-0")
        );
        assert_eq!(meta.labels["app"], "web");
        // The sidecar has not started: no container id yet.
        assert_eq!(meta.containers.keys().collect::<Vec<_>>(), ["aa", "bb"]);
        let init = &meta.containers["aa"];
        assert_eq!(init.kind, ContainerKind::Init);
        assert_eq!(
            init.image.as_ref().unwrap().id.as_deref(),
            Some("sha256:1111")
        );
        let nginx = &meta.containers["bb"];
        assert_eq!(nginx.kind, ContainerKind::Regular);
        let image = nginx.image.as_ref().unwrap();
        assert_eq!(image.name, "docker.io/library/nginx");
        assert_eq!(image.tag.as_deref(), Some("1.25"));
        assert_eq!(image.digest.as_deref(), Some("sha256:2222"));
    }

    #[test]
    fn a_relist_drops_the_pods_deleted_meanwhile_and_only_changes_count() {
        let mut pods = Pods::default();
        let uid = "0d1f2e3c-4b5a-6978-8a9b-0c1d2e3f4a5b";
        let other = POD.replace(uid, "11111111-2222-3333-4444-555555555555");
        assert!(pods.apply(watcher::Event::Init).is_empty());
        assert_eq!(
            pods.apply(watcher::Event::InitApply(pod(POD))),
            [uid.to_owned()].into()
        );
        pods.apply(watcher::Event::InitApply(pod(&other)));
        assert!(!pods.synced());
        assert!(pods.apply(watcher::Event::InitDone).is_empty());
        assert!(pods.synced());
        assert_eq!(pods.len(), 2);
        // The same pod again (a status heartbeat): nothing the agent keeps changed.
        assert!(pods.apply(watcher::Event::Apply(pod(POD))).is_empty());
        assert_eq!(pods.of_container("bb").unwrap().1.name, "nginx");
        // The watch restarts and the other pod is gone from the list.
        pods.apply(watcher::Event::Init);
        pods.apply(watcher::Event::InitApply(pod(POD)));
        assert_eq!(
            pods.apply(watcher::Event::InitDone),
            ["11111111-2222-3333-4444-555555555555".to_owned()].into()
        );
        assert_eq!(
            pods.apply(watcher::Event::Delete(pod(POD))),
            [uid.to_owned()].into()
        );
        assert!(pods.is_empty());
    }

    /// A client whose API answers every request with `status` and `body`,
    /// and the paths it was asked.
    fn answering(status: u16, body: &'static str) -> (Client, Arc<Mutex<Vec<String>>>) {
        use http_body_util::{BodyExt as _, Full};
        let asked = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&asked);
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            seen.lock().unwrap().push(request.uri().path().to_owned());
            async move {
                let mut response = http::Response::new(
                    Full::new(bytes::Bytes::from_static(body.as_bytes())).boxed(),
                );
                *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        (Client::new(service, "default"), asked)
    }

    const DAEMONSET: &str = r#"{"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "enforcer", "namespace": "enforcer-system"}}"#;
    const DELETING: &str = r#"{"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "enforcer", "namespace": "enforcer-system",
                     "deletionTimestamp": "2026-12-07T22:00:00Z"}}"#;
    const NOT_FOUND: &str = r#"{"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "daemonsets.apps \"enforcer\" not found", "reason": "NotFound", "code": 404}"#;
    const UNAUTHORIZED: &str = r#"{"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "Unauthorized", "reason": "Unauthorized", "code": 401}"#;
    const FORBIDDEN: &str = r#"{"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "forbidden", "reason": "Forbidden", "code": 403}"#;

    #[tokio::test]
    async fn an_uninstall_is_told_from_a_rolling_update() {
        for (status, body, expected) in [
            (200, DAEMONSET, Some(Removed::No)),
            (200, DELETING, Some(Removed::Deleting)),
            (404, NOT_FOUND, Some(Removed::Gone)),
            (401, UNAUTHORIZED, Some(Removed::AccountGone)),
            // Anything else keeps enforcement.
            (403, FORBIDDEN, None),
            (500, "oops", None),
        ] {
            let (client, asked) = answering(status, body);
            let found = daemonset_removed(client, "enforcer-system", "enforcer")
                .await
                .ok();
            assert_eq!(found, expected, "{status} {body}");
            assert_eq!(
                asked.lock().unwrap().as_slice(),
                ["/apis/apps/v1/namespaces/enforcer-system/daemonsets/enforcer"]
            );
        }
        assert!(!Removed::No.is_removed());
        assert!(Removed::Gone.is_removed());
    }
}
