//! A real containerd with its CRI plugin, driven as the kubelet drives it:
//! pod sandboxes and containers created over the CRI API on containerd's
//! socket. Its root and state on a fresh tmpfs (the overlayfs snapshotter
//! needs an upper layer that is not itself on overlayfs), images imported
//! from Podman (`podman save`, then `ctr images import`: no registry), the
//! cgroupfs driver under `/kubepods/besteffort/pod<UID>` as the kubelet's
//! cgroupfs driver names a pod's group, and the host's network (no CNI).

use std::{
    collections::BTreeMap,
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use crate::{
    container::{Scratch, tmpfs_scratch},
    podman::Podman,
    require::{self, Requirement},
    succeeded,
};

/// The kubelet's side of the CRI API (`runtime.v1`): the messages it sends
/// to create, start and remove pods and containers, with the field numbers
/// of the API's protocol definition.
mod api {
    use std::collections::BTreeMap;

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub(super) struct PodSandboxMetadata {
        #[prost(string, tag = "1")]
        pub(super) name: String,
        #[prost(string, tag = "2")]
        pub(super) uid: String,
        #[prost(string, tag = "3")]
        pub(super) namespace: String,
        #[prost(uint32, tag = "4")]
        pub(super) attempt: u32,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub(super) struct NamespaceOption {
        /// `NamespaceMode`: `NODE` = 2, the host's.
        #[prost(int32, tag = "1")]
        pub(super) network: i32,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub(super) struct LinuxSandboxSecurityContext {
        #[prost(message, optional, tag = "1")]
        pub(super) namespace_options: Option<NamespaceOption>,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub(super) struct LinuxPodSandboxConfig {
        #[prost(string, tag = "1")]
        pub(super) cgroup_parent: String,
        #[prost(message, optional, tag = "2")]
        pub(super) security_context: Option<LinuxSandboxSecurityContext>,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub(super) struct PodSandboxConfig {
        #[prost(message, optional, tag = "1")]
        pub(super) metadata: Option<PodSandboxMetadata>,
        /// Where the containers' logs go (their `log_path` is relative).
        #[prost(string, tag = "3")]
        pub(super) log_directory: String,
        #[prost(btree_map = "string, string", tag = "6")]
        pub(super) labels: BTreeMap<String, String>,
        #[prost(message, optional, tag = "8")]
        pub(super) linux: Option<LinuxPodSandboxConfig>,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub(super) struct RunPodSandboxRequest {
        #[prost(message, optional, tag = "1")]
        pub(super) config: Option<PodSandboxConfig>,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub(super) struct RunPodSandboxResponse {
        #[prost(string, tag = "1")]
        pub(super) pod_sandbox_id: String,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub(super) struct PodSandboxIdRequest {
        /// `StopPodSandboxRequest` and `RemovePodSandboxRequest`.
        #[prost(string, tag = "1")]
        pub(super) pod_sandbox_id: String,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub(super) struct Empty {}

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub(super) struct ContainerMetadata {
        #[prost(string, tag = "1")]
        pub(super) name: String,
        #[prost(uint32, tag = "2")]
        pub(super) attempt: u32,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub(super) struct ImageSpec {
        #[prost(string, tag = "1")]
        pub(super) image: String,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub(super) struct ContainerConfig {
        #[prost(message, optional, tag = "1")]
        pub(super) metadata: Option<ContainerMetadata>,
        #[prost(message, optional, tag = "2")]
        pub(super) image: Option<ImageSpec>,
        #[prost(string, repeated, tag = "3")]
        pub(super) command: Vec<String>,
        #[prost(string, repeated, tag = "4")]
        pub(super) args: Vec<String>,
        #[prost(btree_map = "string, string", tag = "9")]
        pub(super) labels: BTreeMap<String, String>,
        #[prost(string, tag = "11")]
        pub(super) log_path: String,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub(super) struct CreateContainerRequest {
        #[prost(string, tag = "1")]
        pub(super) pod_sandbox_id: String,
        #[prost(message, optional, tag = "2")]
        pub(super) config: Option<ContainerConfig>,
        #[prost(message, optional, tag = "3")]
        pub(super) sandbox_config: Option<PodSandboxConfig>,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub(super) struct CreateContainerResponse {
        #[prost(string, tag = "1")]
        pub(super) container_id: String,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub(super) struct ContainerIdRequest {
        /// `StartContainerRequest` and `ContainerStatusRequest`.
        #[prost(string, tag = "1")]
        pub(super) container_id: String,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub(super) struct ContainerStatus {
        #[prost(int32, tag = "3")]
        pub(super) state: i32,
        #[prost(int32, tag = "7")]
        pub(super) exit_code: i32,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub(super) struct ContainerStatusResponse {
        #[prost(message, optional, tag = "1")]
        pub(super) status: Option<ContainerStatus>,
    }
}

const SERVICE: &str = "/runtime.v1.RuntimeService/";
/// `ContainerState.CONTAINER_EXITED`.
const EXITED: i32 = 2;
/// `NamespaceMode.NODE`.
const NODE: i32 = 2;
/// The pod sandboxes' image (containerd's `sandbox_image`).
pub const SANDBOX_IMAGE: &str = "localhost/pause:1";

/// A pod to run: its namespace, name, UID and labels.
#[derive(Clone, Debug)]
pub struct Pod<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
}

/// A container that ran to its end.
#[derive(Debug)]
pub struct Ran {
    pub id: String,
    pub exit_code: i32,
    /// What it wrote (stdout and stderr, as containerd's CRI log lines).
    pub log: String,
}

#[derive(Debug)]
pub struct Containerd {
    dir: Scratch,
    daemon: Child,
    runtime: tokio::runtime::Runtime,
    grpc: tonic::client::Grpc<Channel>,
    sandboxes: Vec<String>,
}

impl Containerd {
    /// A running containerd with a root of its own, or `None` (with the skip
    /// said) where it cannot run containers: not installed, or no cgroup v2.
    pub fn start() -> anyhow::Result<Option<Self>> {
        if !require::runtime(Requirement::Containerd, "/usr/bin/containerd", "containerd") {
            return Ok(None);
        }
        let dir = tmpfs_scratch("containerd")?;
        let root = dir.path();
        let config = root.join("config.toml");
        fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}/root"
state = "{root}/state"
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{root}/cni/bin"
    conf_dir = "{root}/cni/conf"
"#,
                root = root.display()
            ),
        )?;
        let log = fs::File::create(root.join("containerd.log"))?;
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let socket = root.join("containerd.sock");
        let path = socket.clone();
        let channel = {
            let _entered = runtime.enter();
            Endpoint::try_from("http://localhost")?
                .timeout(require::patience(Duration::from_mins(1)))
                .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                    let path = path.clone();
                    async move { UnixStream::connect(path).await.map(TokioIo::new) }
                }))
        };
        let mut containerd = Self {
            grpc: tonic::client::Grpc::new(channel),
            dir,
            daemon,
            runtime,
            sandboxes: Vec::new(),
        };
        let started = Instant::now();
        while !socket.exists() {
            if started.elapsed() > require::patience(Duration::from_mins(1)) {
                bail!("containerd did not listen in time:\n{}", containerd.log());
            }
            if let Some(status) = containerd.daemon.try_wait()? {
                bail!("containerd exited ({status}):\n{}", containerd.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Some(containerd))
    }

    /// containerd's CRI socket (the agent's `--cri-socket`).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// Where the overlayfs snapshotter unpacks image layers (the agent's
    /// `--image-store`).
    pub fn layers(&self) -> String {
        format!(
            "{}/root/io.containerd.snapshotter.v1.overlayfs/snapshots/*/fs",
            self.dir.path().display()
        )
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Imports Podman's image `reference` into the namespace the CRI plugin
    /// uses (`k8s.io`), unpacked for its snapshotter. The pod sandboxes'
    /// image is [`SANDBOX_IMAGE`]: one whose command runs until stopped.
    pub fn import(&self, podman: &Podman, reference: &str) -> anyhow::Result<()> {
        let archive = self.dir.path().join("image.tar");
        podman.save(reference, &archive)?;
        let imported = succeeded(
            Command::new("ctr")
                .arg("--address")
                .arg(self.socket())
                .args(["--namespace", "k8s.io", "images", "import"])
                .arg(&archive),
            &format!("ctr images import {reference}"),
        );
        let _ = fs::remove_file(&archive);
        imported.map(drop)
    }

    fn call<Request, Response>(
        &mut self,
        method: &str,
        request: Request,
    ) -> anyhow::Result<Response>
    where
        Request: prost::Message + Send + Sync + 'static,
        Response: prost::Message + Default + Send + Sync + 'static,
    {
        let path: http::uri::PathAndQuery = format!("{SERVICE}{method}").parse()?;
        let grpc = &mut self.grpc;
        let response = self.runtime.block_on(async {
            grpc.ready().await?;
            let codec = tonic_prost::ProstCodec::<Request, Response>::default();
            let response = grpc
                .unary(tonic::Request::new(request), path, codec)
                .await?;
            anyhow::Ok(response.into_inner())
        });
        response.with_context(|| format!("CRI {method}"))
    }

    fn sandbox_config(&self, pod: &Pod<'_>) -> api::PodSandboxConfig {
        // The kubelet's labels of a pod sandbox: the pod's, and its names.
        let mut labels: BTreeMap<String, String> = pod
            .labels
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        for (key, value) in [
            ("io.kubernetes.pod.name", pod.name),
            ("io.kubernetes.pod.namespace", pod.namespace),
            ("io.kubernetes.pod.uid", pod.uid),
        ] {
            labels.insert(key.to_owned(), value.to_owned());
        }
        api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: pod.name.to_owned(),
                uid: pod.uid.to_owned(),
                namespace: pod.namespace.to_owned(),
                attempt: 0,
            }),
            log_directory: self.dir.path().join("logs").display().to_string(),
            labels,
            linux: Some(api::LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/besteffort/pod{}", pod.uid),
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(api::NamespaceOption { network: NODE }),
                }),
            }),
        }
    }

    /// Runs `pod`'s sandbox and in it a container `name` of `image` running
    /// `command`, to its end (at most `timeout`), as the kubelet would.
    pub fn run(
        &mut self,
        pod: &Pod<'_>,
        name: &str,
        image: &str,
        command: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<Ran> {
        let config = self.sandbox_config(pod);
        let sandbox: api::RunPodSandboxResponse = self.call(
            "RunPodSandbox",
            api::RunPodSandboxRequest {
                config: Some(config.clone()),
            },
        )?;
        let sandbox_id = sandbox.pod_sandbox_id;
        self.sandboxes.push(sandbox_id.clone());
        let log_name = format!("{}-{name}.log", pod.name);
        let labels = [
            ("io.kubernetes.container.name", name),
            ("io.kubernetes.pod.name", pod.name),
            ("io.kubernetes.pod.namespace", pod.namespace),
            ("io.kubernetes.pod.uid", pod.uid),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
        let created: api::CreateContainerResponse = self.call(
            "CreateContainer",
            api::CreateContainerRequest {
                pod_sandbox_id: sandbox_id,
                config: Some(api::ContainerConfig {
                    metadata: Some(api::ContainerMetadata {
                        name: name.to_owned(),
                        attempt: 0,
                    }),
                    image: Some(api::ImageSpec {
                        image: image.to_owned(),
                    }),
                    command: command.iter().map(|word| (*word).to_owned()).collect(),
                    args: Vec::new(),
                    labels,
                    log_path: log_name.clone(),
                }),
                sandbox_config: Some(config),
            },
        )?;
        let id = created.container_id;
        let _: api::Empty = self.call(
            "StartContainer",
            api::ContainerIdRequest {
                container_id: id.clone(),
            },
        )?;
        let started = Instant::now();
        let exit_code = loop {
            let status: api::ContainerStatusResponse = self.call(
                "ContainerStatus",
                api::ContainerIdRequest {
                    container_id: id.clone(),
                },
            )?;
            let status = status.status.context("ContainerStatus without a status")?;
            if status.state == EXITED {
                break status.exit_code;
            }
            if started.elapsed() > timeout {
                bail!(
                    "container {name} of pod {} still runs after {timeout:?}",
                    pod.name
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        Ok(Ran {
            id,
            exit_code,
            log: fs::read_to_string(self.dir.path().join("logs").join(&log_name))
                .unwrap_or_default(),
        })
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for sandbox in std::mem::take(&mut self.sandboxes) {
            for method in ["StopPodSandbox", "RemovePodSandbox"] {
                let _: anyhow::Result<api::Empty> = self.call(
                    method,
                    api::PodSandboxIdRequest {
                        pod_sandbox_id: sandbox.clone(),
                    },
                );
            }
        }
        // SAFETY: signalling a child process this value owns.
        unsafe {
            libc::kill(self.daemon.id().cast_signed(), libc::SIGTERM);
        }
        let _ = self.daemon.wait();
        // The shims' and snapshots' mounts, lazily, all of them.
        let _ = Command::new("umount")
            .arg("-R")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
