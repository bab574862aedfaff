//! The node's Kubernetes containers as their runtime knows them: the CRI API
//! (gRPC over the runtime's Unix socket) of containerd's CRI plugin and of
//! CRI-O, which the kubelet itself uses. For each container the agent keeps
//! its name, its image (the name the runtime resolved it to, with its
//! digest) and its pod: namespace, name, UID and labels, from the pod
//! sandbox, whose labels the kubelet sets to the pod's.
//!
//! The runtime is asked when the agent finds a group of a container it
//! does not know yet ([`CriHandle::look_up`]), and the list is read again
//! every [`RELIST_INTERVAL`] to catch what it missed and what is gone (the
//! status of a container already known is not read again). Until the
//! runtime answers, a container is an unknown one (the strictest
//! `DriftPolicy`, every image-selected vShield).

pub mod api;

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use tokio::{net::UnixStream, sync::mpsc};
use tonic::transport::{Channel, Endpoint};

use super::{ContainerInfo, ImageRef, PodRef, Runtime};

/// Where containerd and CRI-O serve the CRI API by default.
pub const DEFAULT_SOCKETS: &[&str] = &["/run/containerd/containerd.sock", "/run/crio/crio.sock"];

/// How often every container is listed again.
pub const RELIST_INTERVAL: Duration = Duration::from_secs(10);
/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a socket that is missing or refuses is tried again.
const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// The labels the kubelet adds to a pod sandbox's (the pod's own labels are
/// the rest).
const KUBELET_LABELS: &[&str] = &[
    "io.kubernetes.pod.name",
    "io.kubernetes.pod.namespace",
    "io.kubernetes.pod.uid",
];

/// A container as the CRI runtime reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CriContainer {
    pub id: String,
    pub runtime: Runtime,
    pub name: Option<String>,
    pub image: Option<ImageRef>,
    pub pod: Option<PodRef>,
}

impl CriContainer {
    /// Fills in what `info` does not say yet (what an OCI hook's
    /// annotations or another record said stays), and the pod's labels.
    pub fn fill(&self, info: &mut ContainerInfo) {
        if info.name.is_none() {
            info.name.clone_from(&self.name);
        }
        match (&mut info.image, &self.image) {
            (None, reported) => info.image.clone_from(reported),
            (Some(known), Some(reported)) if known.name == reported.name => {
                known.complete_from(reported);
            }
            _ => {}
        }
        let Some(reported) = &self.pod else {
            return;
        };
        let pod = info.pod.get_or_insert_with(PodRef::default);
        for (field, value) in [
            (&mut pod.namespace, &reported.namespace),
            (&mut pod.name, &reported.name),
            (&mut pod.uid, &reported.uid),
        ] {
            if field.is_none() {
                field.clone_from(value);
            }
        }
        pod.labels.clone_from(&reported.labels);
    }
}

/// Whether `text` is an image id rather than a name: `sha256:<hex>` or
/// bare hex, as runtimes report images that have no name.
fn is_image_id(text: &str) -> bool {
    // An image id has a container id's form: 64 hex digits.
    super::is_container_id(text.strip_prefix("sha256:").unwrap_or(text))
}

/// What the agent keeps of a container from its status and its pod
/// sandbox. Pure.
pub fn container(
    runtime: Runtime,
    status: &api::ContainerStatus,
    sandbox: Option<&api::PodSandbox>,
) -> CriContainer {
    let nonempty = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    let spec = status.image.as_ref();
    // A runtime names the image by its id when no name of it is left
    // (pulled by digest, untagged since): then the pod's own reference.
    let named = spec
        .map(|spec| spec.image.as_str())
        .filter(|image| !image.is_empty() && !is_image_id(image))
        .or_else(|| {
            spec.map(|spec| spec.user_specified_image.as_str())
                .filter(|image| !image.is_empty())
        });
    let mut image = named.and_then(|named| ImageRef::with_reference(named, &status.image_ref));
    if let Some(image) = &mut image
        && image.id.is_none()
        && let Some(id) = spec
            .map(|spec| spec.image.as_str())
            .filter(|image| is_image_id(image))
    {
        image.id = Some(id.to_owned());
    }
    let label = |key: &str| status.labels.get(key).and_then(|value| nonempty(value));
    let metadata = sandbox.and_then(|sandbox| sandbox.metadata.as_ref());
    let pod = PodRef {
        namespace: metadata
            .and_then(|m| nonempty(&m.namespace))
            .or_else(|| label("io.kubernetes.pod.namespace")),
        name: metadata
            .and_then(|m| nonempty(&m.name))
            .or_else(|| label("io.kubernetes.pod.name")),
        uid: metadata
            .and_then(|m| nonempty(&m.uid))
            .or_else(|| label("io.kubernetes.pod.uid")),
        labels: sandbox.map(|sandbox| {
            sandbox
                .labels
                .iter()
                .filter(|(key, _)| !KUBELET_LABELS.contains(&key.as_str()))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect()
        }),
        kind: None,
    };
    CriContainer {
        id: status.id.clone(),
        runtime,
        name: status
            .metadata
            .as_ref()
            .and_then(|metadata| nonempty(&metadata.name))
            .or_else(|| label("io.kubernetes.container.name")),
        image,
        pod: (pod != PodRef::default()).then_some(pod),
    }
}

/// The runtime of a `VersionResponse.runtime_name`.
fn runtime_named(name: &str) -> Runtime {
    match name {
        "containerd" => Runtime::Containerd,
        "cri-o" => Runtime::CriO,
        _ => Runtime::Unknown,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("the CRI endpoint for {socket}: {source}")]
    Endpoint {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("CRI {method} at {socket}: {source}")]
    Call {
        socket: PathBuf,
        method: &'static str,
        #[source]
        source: Box<tonic::Status>,
    },
    #[error("CRI {method} at {socket}: the connection: {source}")]
    Connection {
        socket: PathBuf,
        method: &'static str,
        #[source]
        source: tonic::transport::Error,
    },
}

/// A client of one runtime's CRI socket.
#[derive(Debug, Clone)]
pub struct CriClient {
    socket: PathBuf,
    grpc: tonic::client::Grpc<Channel>,
}

impl CriClient {
    /// A client of `socket`; connects on the first call (and again after a
    /// broken connection).
    ///
    /// # Errors
    /// The endpoint cannot be made (it does not depend on the socket).
    pub fn new(socket: &Path) -> Result<Self, CriError> {
        let path = socket.to_owned();
        // The URI only fills the requests' `:authority`; the connector
        // reaches the socket.
        let channel = Endpoint::try_from("http://localhost")
            .map_err(|source| CriError::Endpoint {
                socket: socket.to_owned(),
                source,
            })?
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                let path = path.clone();
                async move { UnixStream::connect(path).await.map(TokioIo::new) }
            }));
        Ok(Self {
            socket: socket.to_owned(),
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn call<Request, Response>(
        &mut self,
        method: &'static str,
        request: Request,
    ) -> Result<Response, CriError>
    where
        Request: prost::Message + Send + Sync + 'static,
        Response: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|source| CriError::Connection {
                socket: self.socket.clone(),
                method,
                source,
            })?;
        let path = http::uri::PathAndQuery::from_static(method);
        let codec = tonic_prost::ProstCodec::<Request, Response>::default();
        self.grpc
            .unary(tonic::Request::new(request), path, codec)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| CriError::Call {
                socket: self.socket.clone(),
                method,
                source: Box::new(status),
            })
    }

    /// The runtime's name and version.
    ///
    /// # Errors
    /// The runtime does not answer.
    pub async fn version(&mut self) -> Result<api::VersionResponse, CriError> {
        self.call(
            api::VERSION,
            api::VersionRequest {
                version: "v1".to_owned(),
            },
        )
        .await
    }

    /// Every container the runtime has (running, created and exited).
    ///
    /// # Errors
    /// The runtime does not answer.
    pub async fn containers(&mut self) -> Result<Vec<api::Container>, CriError> {
        let response: api::ListContainersResponse = self
            .call(api::LIST_CONTAINERS, api::ListContainersRequest {})
            .await?;
        Ok(response.containers)
    }

    /// One container's status; `None` when the runtime says it has none.
    ///
    /// # Errors
    /// The runtime does not answer.
    pub async fn status(&mut self, id: &str) -> Result<Option<api::ContainerStatus>, CriError> {
        let request = api::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        };
        match self.call(api::CONTAINER_STATUS, request).await {
            Ok(api::ContainerStatusResponse { status }) => Ok(status),
            Err(CriError::Call { source, .. }) if source.code() == tonic::Code::NotFound => {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Every pod sandbox, by id.
    ///
    /// # Errors
    /// The runtime does not answer.
    pub async fn sandboxes(&mut self) -> Result<HashMap<String, api::PodSandbox>, CriError> {
        let response: api::ListPodSandboxResponse = self
            .call(api::LIST_POD_SANDBOX, api::ListPodSandboxRequest {})
            .await?;
        Ok(response
            .items
            .into_iter()
            .map(|sandbox| (sandbox.id.clone(), sandbox))
            .collect())
    }
}

/// The containers the CRI runtimes reported, by id.
#[derive(Debug, Default)]
pub struct CriContainers {
    by_id: HashMap<String, CriContainer>,
}

impl CriContainers {
    pub fn get(&self, id: &str) -> Option<&CriContainer> {
        self.by_id.get(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Replaces what one runtime (`runtime`) reported with `now`; returns
    /// the ids whose record changed (new, changed or gone). Pure.
    pub fn replace(
        &mut self,
        runtime: Runtime,
        now: HashMap<String, CriContainer>,
    ) -> BTreeSet<String> {
        let mut changed = BTreeSet::new();
        self.by_id.retain(|id, known| {
            let kept = known.runtime != runtime || now.contains_key(id);
            if !kept {
                changed.insert(id.clone());
            }
            kept
        });
        for (id, container) in now {
            if self.by_id.get(&id) != Some(&container) {
                changed.insert(id.clone());
                self.by_id.insert(id, container);
            }
        }
        changed
    }
}

/// Shared between the CRI tasks and the container registry.
pub type SharedCri = Arc<Mutex<CriContainers>>;

/// The registry's side of the CRI tasks: what they reported, and a way to
/// ask them about a container.
#[derive(Debug, Clone)]
pub struct CriHandle {
    pub containers: SharedCri,
    asks: Vec<mpsc::UnboundedSender<String>>,
}

impl CriHandle {
    /// A handle whose questions arrive at the returned receiver, for tests
    /// of what uses it.
    #[cfg(test)]
    pub fn answered_by_test() -> (Self, mpsc::UnboundedReceiver<String>) {
        let (ask, asked) = mpsc::unbounded_channel();
        let handle = Self {
            containers: SharedCri::default(),
            asks: vec![ask],
        };
        (handle, asked)
    }

    /// Asks the runtimes about container `id`, which the agent found and
    /// they have not reported (yet).
    pub fn look_up(&self, id: &str) {
        for ask in &self.asks {
            // A task that ended has logged why.
            let _ = ask.send(id.to_owned());
        }
    }

    pub fn get(&self, id: &str) -> Option<CriContainer> {
        self.containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }
}

/// Starts a task per socket that keeps the containers it reports up to
/// date and sends the ids of those whose record changed; `None` without
/// sockets.
///
/// # Errors
/// A socket's client cannot be made.
pub fn start(
    sockets: &[PathBuf],
    changed: &mpsc::UnboundedSender<BTreeSet<String>>,
) -> Result<Option<CriHandle>, CriError> {
    if sockets.is_empty() {
        return Ok(None);
    }
    let containers = SharedCri::default();
    let mut asks = Vec::new();
    for socket in sockets {
        let client = CriClient::new(socket)?;
        let (ask, asked) = mpsc::unbounded_channel();
        asks.push(ask);
        tokio::spawn(watch(client, containers.clone(), asked, changed.clone()));
    }
    Ok(Some(CriHandle { containers, asks }))
}

/// One runtime's containers, read whole.
async fn read_all(
    client: &mut CriClient,
    runtime: Runtime,
    known: &SharedCri,
) -> Result<HashMap<String, CriContainer>, CriError> {
    let listed = client.containers().await?;
    let sandboxes = client.sandboxes().await?;
    let mut now = HashMap::new();
    for listed in listed {
        // A container's name, image and pod do not change: only new ones,
        // and running ones whose image had no name, are asked about. An
        // exited one is kept while the runtime keeps it (late events still
        // name it).
        let kept = known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&listed.id)
            .filter(|kept| {
                kept.runtime == runtime
                    && (kept.image.is_some() || listed.state == api::CONTAINER_EXITED)
            })
            .cloned();
        if let Some(kept) = kept {
            now.insert(listed.id.clone(), kept);
            continue;
        }
        let Some(status) = client.status(&listed.id).await? else {
            continue;
        };
        let container = container(runtime, &status, sandboxes.get(&listed.pod_sandbox_id));
        now.insert(container.id.clone(), container);
    }
    Ok(now)
}

/// Keeps one runtime's containers in `known`: reads them all at start,
/// when asked about a container, and every [`RELIST_INTERVAL`]. A socket
/// that is missing or does not answer is tried again every
/// [`RETRY_INTERVAL`], logged once per failing streak.
async fn watch(
    mut client: CriClient,
    known: SharedCri,
    mut asked: mpsc::UnboundedReceiver<String>,
    changed: mpsc::UnboundedSender<BTreeSet<String>>,
) {
    let socket = client.socket().display().to_string();
    let mut runtime = None;
    let mut failing = false;
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    loop {
        let result = async {
            let runtime = if let Some(runtime) = runtime {
                runtime
            } else {
                let version = client.version().await?;
                tracing::info!(
                    socket = %socket,
                    runtime = %version.runtime_name,
                    version = %version.runtime_version,
                    api = %version.runtime_api_version,
                    "CRI: reading the runtime's containers"
                );
                runtime_named(&version.runtime_name)
            };
            let now = read_all(&mut client, runtime, &known).await?;
            Ok::<_, CriError>((runtime, now))
        }
        .await;
        let wait = match result {
            Ok((found, now)) => {
                runtime = Some(found);
                if failing {
                    tracing::info!(socket = %socket, "CRI: the runtime answers again");
                    failing = false;
                }
                let mut ids = known
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .replace(found, now);
                // Asked about and not found: the registry says so then.
                ids.append(&mut wanted);
                if !ids.is_empty() && changed.send(ids).is_err() {
                    return;
                }
                RELIST_INTERVAL
            }
            Err(error) => {
                // A socket that is not there is a runtime this node does not
                // run (or one not started yet): said once, at debug level
                // after that.
                let missing = !Path::new(&socket).exists();
                if !failing {
                    if missing {
                        tracing::info!(socket = %socket, "CRI: no runtime serves this socket (yet); looking again every 5 s");
                    } else {
                        tracing::warn!(
                            socket = %socket,
                            error = %crate::error_chain(&error),
                            "CRI: the runtime does not answer; retrying (its containers count as unknown \
                             until it does, unless an OCI hook or the Kubernetes API names them)"
                        );
                    }
                }
                failing = true;
                runtime = None;
                // Asked again when the registry finds them again; a runtime
                // that never answers must not collect every container's id.
                wanted.clear();
                RETRY_INTERVAL
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            id = asked.recv() => {
                let Some(id) = id else { return };
                wanted.insert(id);
                // What else was asked meanwhile is answered by the same read.
                while let Ok(id) = asked.try_recv() {
                    wanted.insert(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const ID: &str = "3f1c9e0d2b4a59687c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b";
    const IMAGE_ID: &str =
        "sha256:1f2e3d4c5b6a79880f1e2d3c4b5a69788f9e0d1c2b3a4f5e6d7c8b9a0f1e2d3c";

    const POD_UID: &str = "0d1f2e3c-4b5a-6978-8a9b-0c1d2e3f4a5b";

    /// The kubelet's labels of the web pod's sandbox and containers, and
    /// `more`.
    fn labels(more: &[(&str, &str)]) -> BTreeMap<String, String> {
        [
            ("io.kubernetes.pod.name", "web-0"),
            ("io.kubernetes.pod.namespace", "shop"),
            ("io.kubernetes.pod.uid", POD_UID),
        ]
        .iter()
        .chain(more)
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
    }

    fn status(image: &str, image_ref: &str) -> api::ContainerStatus {
        api::ContainerStatus {
            id: ID.to_owned(),
            metadata: Some(api::ContainerMetadata {
                name: "nginx".to_owned(),
                attempt: 0,
            }),
            state: 1,
            image: Some(api::ImageSpec {
                image: image.to_owned(),
                user_specified_image: String::new(),
            }),
            image_ref: image_ref.to_owned(),
            labels: labels(&[("io.kubernetes.container.name", "nginx")]),
            annotations: BTreeMap::new(),
        }
    }

    fn sandbox() -> api::PodSandbox {
        api::PodSandbox {
            id: "sandbox".to_owned(),
            metadata: Some(api::PodSandboxMetadata {
                name: "web-0".to_owned(),
                uid: POD_UID.to_owned(),
                namespace: "shop".to_owned(),
                attempt: 0,
            }),
            labels: labels(&[("app", "web")]),
        }
    }

    #[test]
    fn a_container_is_named_with_its_image_digest_and_its_pods_labels() {
        // CRI-O and containerd with a repository digest.
        let digest = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
        let found = container(
            Runtime::CriO,
            &status(
                "docker.io/library/nginx:1.25",
                &format!("docker.io/library/nginx@{digest}"),
            ),
            Some(&sandbox()),
        );
        assert_eq!(found.name.as_deref(), Some("nginx"));
        let image = found.image.unwrap();
        assert_eq!(
            image.to_string(),
            format!("docker.io/library/nginx:1.25@{digest}")
        );
        let pod = found.pod.unwrap();
        assert_eq!(pod.namespace.as_deref(), Some("shop"));
        assert_eq!(pod.name.as_deref(), Some("web-0"));
        // The pod's labels, not the kubelet's.
        assert_eq!(
            pod.labels,
            Some([("app".to_owned(), "web".to_owned())].into())
        );
        assert_eq!(pod.kind, None);
    }

    #[test]
    fn an_image_known_by_its_id_only_keeps_the_id_and_the_pods_reference() {
        // containerd, an image imported without a repository digest: the
        // image's id is its reference.
        let local = container(
            Runtime::Containerd,
            &status("localhost/one:1", IMAGE_ID),
            None,
        );
        let image = local.image.unwrap();
        assert_eq!(image.to_string(), "localhost/one:1");
        assert_eq!(image.id.as_deref(), Some(IMAGE_ID));
        // Without a sandbox the pod is named from the kubelet's labels.
        let pod = local.pod.unwrap();
        assert_eq!(
            pod.uid.as_deref(),
            Some("0d1f2e3c-4b5a-6978-8a9b-0c1d2e3f4a5b")
        );
        assert_eq!(pod.labels, None);
        // No name left: the id is not taken for a name.
        let mut nameless = status(IMAGE_ID, IMAGE_ID);
        assert_eq!(container(Runtime::Containerd, &nameless, None).image, None);
        nameless.image.as_mut().unwrap().user_specified_image = "quay.io/app:2".to_owned();
        let image = container(Runtime::Containerd, &nameless, None)
            .image
            .unwrap();
        assert_eq!(image.to_string(), "quay.io/app:2");
        assert_eq!(image.id.as_deref(), Some(IMAGE_ID));
    }

    #[test]
    fn what_an_oci_hook_said_stays_and_the_rest_is_filled_in() {
        let cri = container(
            Runtime::Containerd,
            &status("localhost/one:1", IMAGE_ID),
            Some(&sandbox()),
        );
        let mut info = ContainerInfo {
            id: ID.to_owned(),
            name: Some("from-the-hook".to_owned()),
            runtime: Runtime::Containerd,
            image: ImageRef::parse("localhost/one:1"),
            pod: None,
            init_pid: Some(42),
        };
        cri.fill(&mut info);
        assert_eq!(info.name.as_deref(), Some("from-the-hook"));
        assert_eq!(info.image.as_ref().unwrap().id.as_deref(), Some(IMAGE_ID));
        assert_eq!(info.init_pid, Some(42));
        let pod = info.pod.unwrap();
        assert_eq!(pod.namespace.as_deref(), Some("shop"));
        assert_eq!(pod.labels.unwrap()["app"], "web");
    }

    #[test]
    fn a_runtimes_list_replaces_only_its_own_containers() {
        let mut known = CriContainers::default();
        let one = container(
            Runtime::Containerd,
            &status("localhost/one:1", IMAGE_ID),
            None,
        );
        let mut other = one.clone();
        other.id = "other".to_owned();
        other.runtime = Runtime::CriO;
        let now: HashMap<_, _> = [(one.id.clone(), one.clone())].into();
        assert_eq!(
            known.replace(Runtime::Containerd, now.clone()),
            [ID.to_owned()].into()
        );
        assert!(known.replace(Runtime::Containerd, now).is_empty());
        known.replace(Runtime::CriO, [(other.id.clone(), other)].into());
        // containerd's container is gone; CRI-O's stays.
        assert_eq!(
            known.replace(Runtime::Containerd, HashMap::new()),
            [ID.to_owned()].into()
        );
        assert_eq!(known.len(), 1);
        assert!(known.get("other").is_some());
    }

    #[test]
    fn messages_decode_fields_in_the_apis_numbering() {
        use prost::Message as _;
        // ListPodSandboxResponse { items: [PodSandbox { id: "s",
        // metadata: { name: "p", uid: "u", namespace: "n" }, state: READY,
        // labels: { "a": "b" } }] }, as the API's definition numbers them,
        // with a field the agent does not read (created_at = 4).
        let sandbox = [
            0x0a, 0x01, b's', // id = 1
            0x12, 0x09, 0x0a, 0x01, b'p', 0x12, 0x01, b'u', 0x1a, 0x01, b'n', // metadata = 2
            0x18, 0x00, // state = 3
            0x20, 0x07, // created_at = 4
            0x2a, 0x06, 0x0a, 0x01, b'a', 0x12, 0x01, b'b', // labels = 5
        ];
        let mut response = vec![0x0a, sandbox.len() as u8];
        response.extend_from_slice(&sandbox);
        let decoded = api::ListPodSandboxResponse::decode(response.as_slice()).unwrap();
        let item = &decoded.items[0];
        assert_eq!(item.id, "s");
        let metadata = item.metadata.as_ref().unwrap();
        assert_eq!(
            (
                metadata.name.as_str(),
                metadata.uid.as_str(),
                metadata.namespace.as_str()
            ),
            ("p", "u", "n")
        );
        assert_eq!(item.labels["a"], "b");
    }
}
