//! A fake Kubernetes API server for the agent's pod watch: it answers the
//! list of pods with the pods it was given and holds every watch open
//! without events, as an API server does while nothing changes. The wire
//! format is the API server's (`PodList`, `Pod` in JSON); the requests'
//! query strings are kept for the test to check.

use std::{
    io::Read,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, mpsc},
    thread,
};

use anyhow::Context as _;
use serde_json::{Value, json};

/// A pod as the API server reports it, scheduled on `node`, with no
/// container started yet.
pub fn pod(uid: &str, namespace: &str, name: &str, labels: &Value, node: &str) -> Value {
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "resourceVersion": "1001",
            "creationTimestamp": "2026-11-20T09:12:03Z",
            "labels": labels,
        },
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "localhost/busybox:1"}]},
        "status": {"phase": "Pending", "qosClass": "BestEffort"},
    })
}

/// The server; stops (and ends every open watch) on drop.
pub struct FakeApi {
    server: Arc<tiny_http::Server>,
    queries: Arc<Mutex<Vec<String>>>,
    /// Dropped to end the open watches.
    watches: Arc<Mutex<Vec<mpsc::Sender<Vec<u8>>>>>,
    kubeconfig: PathBuf,
}

/// A watch response body: blocks until the server stops.
struct OpenWatch(mpsc::Receiver<Vec<u8>>);

impl Read for OpenWatch {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.recv() {
            Ok(bytes) => {
                let n = bytes.len().min(buf.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                Ok(n)
            }
            Err(_) => Ok(0),
        }
    }
}

impl std::fmt::Debug for FakeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApi")
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

impl FakeApi {
    /// Serves `pods` on a local port and writes a kubeconfig for it into
    /// `dir`.
    pub fn start(pods: &[Value], dir: &Path) -> anyhow::Result<Self> {
        let server = Arc::new(
            tiny_http::Server::http("127.0.0.1:0")
                .map_err(|error| anyhow::anyhow!("starting the fake API server: {error}"))?,
        );
        let port = server
            .server_addr()
            .to_ip()
            .context("the fake API server's address")?
            .port();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://127.0.0.1:{port}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
current-context: fake
users:
- name: fake
  user: {{}}
"
            ),
        )
        .context("writing the kubeconfig")?;
        let list = json!({
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "1002"},
            "items": pods,
        })
        .to_string();
        let api = Self {
            server: server.clone(),
            queries: Arc::default(),
            watches: Arc::default(),
            kubeconfig,
        };
        let (queries, watches) = (api.queries.clone(), api.watches.clone());
        thread::spawn(move || {
            for request in server.incoming_requests() {
                let query = request
                    .url()
                    .split_once('?')
                    .map(|(_, query)| query.to_owned())
                    .unwrap_or_default();
                queries
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(format!(
                        "{} {query}",
                        request.url().split('?').next().unwrap_or("")
                    ));
                let json = tiny_http::Header::from_bytes("Content-Type", "application/json")
                    .expect("a valid header");
                if query.split('&').any(|pair| pair == "watch=true") {
                    let (sender, receiver) = mpsc::channel();
                    watches
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(sender);
                    // Each open watch answers from its own thread.
                    thread::spawn(move || {
                        let response = tiny_http::Response::new(
                            tiny_http::StatusCode(200),
                            vec![json],
                            OpenWatch(receiver),
                            None,
                            None,
                        );
                        let _ = request.respond(response);
                    });
                } else {
                    let _ = request
                        .respond(tiny_http::Response::from_string(list.clone()).with_header(json));
                }
            }
        });
        Ok(api)
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `PATH QUERY` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.queries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.watches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.server.unblock();
    }
}
