//! The pod watch against API responses in the API server's wire format
//! (`testdata/kubernetes`: the node's pod list, then watch events one at a
//! time), through kube-rs's client and watcher, into the registry, the
//! vShield scopes and the events' fields.

use std::{
    collections::{BTreeSet, VecDeque},
    convert::Infallible,
    os::unix::fs::MetadataExt as _,
    path::Path,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use bytes::Bytes;
use enforcer_common::scope;
use http_body::Frame;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{SharedPods, watch};
use crate::{
    audit::{
        decode::{AuditEvent, tests::drift_event},
        enrich::{BootClock, Enricher, PolicyNames},
    },
    container::{
        CgroupIndex,
        podman::PodmanStore,
        registry::{Catalog, Known, Registry},
    },
    policy::ContainerSelector,
    scopes::{Scopes, Selector},
};

const LIST: &str = include_str!("../../../testdata/kubernetes/pods-list.json");
const WATCH: &str = include_str!("../../../testdata/kubernetes/pods-watch.jsonl");

const RUNNER_POD: &str = "6f0c2b8e-1d3a-4c5b-9e7f-0a1b2c3d4e5f";
const WEB_POD: &str = "7a1d3c9f-2e4b-4d6c-8f8a-1b2c3d4e5f60";
const RUNNER: &str = "a3f1c9e0d2b4a59687c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6";
const WEB: &str = "b4e2d0f1e3c5b6a7988d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b";

type Body = BoxBody<Bytes, Infallible>;

/// Answers the list with the recorded list and the first watch with the
/// recorded events the test releases; later watches never answer.
fn replay(
    watch_events: mpsc::UnboundedReceiver<Bytes>,
    queries: Arc<Mutex<Vec<String>>>,
) -> kube::Client {
    let watches = Arc::new(Mutex::new(VecDeque::from([watch_events])));
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let query = request.uri().query().unwrap_or_default().to_owned();
        queries.lock().unwrap().push(query.clone());
        let watch = query.split('&').any(|pair| pair == "watch=true");
        let next = if watch {
            watches.lock().unwrap().pop_front()
        } else {
            None
        };
        async move {
            let body: Body = if !watch {
                Full::new(Bytes::from_static(LIST.as_bytes())).boxed()
            } else if let Some(events) = next {
                let frames = futures::stream::unfold(events, |mut events| async move {
                    let line = events.recv().await?;
                    Some((Ok::<_, Infallible>(Frame::data(line)), events))
                });
                StreamBody::new(frames).boxed()
            } else {
                std::future::pending::<()>().await;
                unreachable!("a pending future never completes")
            };
            Ok::<_, Infallible>(http::Response::new(body))
        }
    });
    kube::Client::new(service, "default")
}

fn mkdirs(root: &Path, path: &str) -> u64 {
    let dir = root.join(path);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::metadata(&dir).unwrap().ino()
}

struct Node {
    registry: Registry,
    enricher: Enricher,
    selectors: Vec<Selector>,
    known: std::collections::BTreeMap<String, Known>,
}

impl Node {
    fn take(&mut self, found: Vec<Known>) {
        for known in found {
            self.known.insert(known.info.id.clone(), known);
        }
    }

    /// The scope code of a group: `None` while undecided (the unknown scope).
    fn scope(&self, cgroup: u64) -> Option<u32> {
        let placement = Scopes::default().place(&self.selectors, self.known.values(), false);
        placement.by_cgroup.get(&cgroup).copied()
    }

    fn event(&self, cgroup: u64) -> Value {
        let mut event = drift_event("/tmp/dropped");
        event.cgroup_id = cgroup;
        serde_json::to_value(self.enricher.record(&AuditEvent::Decision(event))).unwrap()
    }
}

async fn next_change(changes: &mut mpsc::UnboundedReceiver<BTreeSet<String>>) -> BTreeSet<String> {
    tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .expect("the watch reports a change within 10 s")
        .expect("the watch runs")
}

/// A node with the runner pod's container (systemd cgroup driver) and the
/// web pod's (cgroupfs driver) running, and two vShield selectors: one for
/// CI runner pods, one for the shop's web pods. Returns the node, the pods
/// the watch fills, and the two containers' groups.
fn node(root: &Path) -> (Node, SharedPods, u64, u64) {
    let runner_group = mkdirs(
        root,
        &format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{RUNNER}.scope",
            RUNNER_POD.replace('-', "_")
        ),
    );
    let web_group = mkdirs(root, &format!("kubepods/besteffort/pod{WEB_POD}/{WEB}"));
    let cgroups = Arc::new(Mutex::new(CgroupIndex::new(Some(root.to_owned()))));
    let catalog = Catalog::default();
    let pods = SharedPods::default();
    let registry = Registry::new(
        cgroups.clone(),
        catalog.clone(),
        PodmanStore::new(&root.join("no-podman-here")),
    )
    .with_pods(pods.clone());
    let label = |key: &str, value: &str| [(key.to_owned(), value.to_owned())].into();
    let selectors = vec![
        // A vShield for CI runner pods...
        Selector::new(
            1,
            &ContainerSelector {
                pod_labels: label("app", "runner"),
                ..ContainerSelector::default()
            },
        )
        .unwrap(),
        // ...and one for the shop's web pods.
        Selector::new(
            2,
            &ContainerSelector {
                namespaces: vec!["shop".to_owned()],
                pod_labels: label("app", "web"),
                ..ContainerSelector::default()
            },
        )
        .unwrap(),
    ];
    let node = Node {
        registry,
        enricher: Enricher {
            clock: BootClock::with_offset(0),
            hostname: "node-1".to_owned(),
            policy: Arc::new(RwLock::new(PolicyNames::default())),
            cgroups,
            containers: catalog,
            proc_lineage: false,
            host_pid_ns: None,
            exe_cache: crate::audit::lineage::ExeCache::default(),
        },
        selectors,
        known: std::collections::BTreeMap::new(),
    };

    (node, pods, runner_group, web_group)
}

#[tokio::test]
async fn pod_add_update_and_delete_change_the_selection_and_the_events() {
    let root = std::env::temp_dir().join(format!("enforcer-kubernetes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (mut node, pods, runner_group, web_group) = node(&root);
    // Both containers run before the API has said anything: their pods'
    // labels are not known, so no selector can tell (every vShield with a
    // selector applies, in the unknown scope).
    let found = node.registry.discover().found;
    assert_eq!(found.len(), 2);
    node.take(found);
    assert_eq!(node.scope(runner_group), None);
    assert_eq!(node.scope(web_group), None);
    let event = node.event(runner_group);
    assert_eq!(event["kubernetes"]["pod"]["uid"], RUNNER_POD);
    assert!(event["kubernetes"].get("labels").is_none());

    let (release, events) = mpsc::unbounded_channel();
    let queries = Arc::new(Mutex::new(Vec::new()));
    let client = replay(events, queries.clone());
    let (sender, mut changes) = mpsc::unbounded_channel();
    let watcher = tokio::spawn(watch(client, "node-1".to_owned(), pods.clone(), sender));
    let mut step = async |node: &mut Node, expected: &str| {
        let uids = next_change(&mut changes).await;
        assert_eq!(uids, [expected.to_owned()].into());
        let found = node.registry.pods_changed(&uids).found;
        node.take(found);
    };

    // The list: the runner pod, labelled app=runner, with its container.
    step(&mut node, RUNNER_POD).await;
    assert!(pods.lock().unwrap().synced());
    assert_eq!(node.scope(runner_group), Some(scope::FIRST_SELECTED));
    assert_eq!(node.scope(web_group), None);
    let event = node.event(runner_group);
    assert_eq!(event["kubernetes"]["namespace"], "ci");
    assert_eq!(event["kubernetes"]["pod"]["name"], "runner-5d8f7-x2k9q");
    assert_eq!(event["kubernetes"]["labels"]["app"], "runner");
    assert_eq!(event["kubernetes"]["container"]["kind"], "regular");
    assert_eq!(event["container"]["name"], "runner");
    assert_eq!(
        event["container"]["image"]["name"],
        "registry.local/ci/runner"
    );
    assert_eq!(event["container"]["image"]["tag"][0], "2");
    let digest = event["container"]["image"]["hash"]["all"][0]
        .as_str()
        .unwrap();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );

    let mut lines = WATCH.lines();
    let mut send = |release: &mpsc::UnboundedSender<Bytes>| {
        let line = lines.next().expect("a recorded watch event");
        release.send(Bytes::from(format!("{line}\n"))).unwrap();
    };

    // ADDED: the web pod, before its container has started (no container
    // id in its status yet): found by the pod UID of its cgroup.
    send(&release);
    step(&mut node, WEB_POD).await;
    assert_eq!(node.scope(web_group), Some(scope::FIRST_SELECTED + 1));
    let event = node.event(web_group);
    assert_eq!(event["kubernetes"]["namespace"], "shop");
    assert_eq!(event["kubernetes"]["labels"]["app"], "web");
    assert!(event["container"].get("name").is_none());

    // MODIFIED: the runner pod relabelled; no vShield selects it now.
    send(&release);
    step(&mut node, RUNNER_POD).await;
    assert_eq!(node.scope(runner_group), Some(scope::CONTAINERS));
    assert_eq!(
        node.event(runner_group)["kubernetes"]["labels"]["app"],
        "runner-retired"
    );

    // MODIFIED: the web container started; its status names it.
    send(&release);
    step(&mut node, WEB_POD).await;
    let event = node.event(web_group);
    assert_eq!(event["container"]["name"], "web");
    assert_eq!(
        event["container"]["image"]["name"],
        "docker.io/library/nginx"
    );

    // DELETED: the web pod is gone while its group still exists (its
    // container is being stopped): its labels are no longer known, so it
    // is undecided again rather than left in the old scope.
    send(&release);
    step(&mut node, WEB_POD).await;
    assert_eq!(node.scope(web_group), None);
    let event = node.event(web_group);
    assert_eq!(event["kubernetes"]["namespace"], "shop");
    assert!(event["kubernetes"].get("labels").is_none());

    // Every request asked for this node's pods only.
    let queries = queries.lock().unwrap().clone();
    assert!(queries.len() >= 2, "{queries:?}");
    for query in &queries {
        assert!(
            query.contains("fieldSelector=spec.nodeName%3Dnode-1"),
            "{query}"
        );
    }
    watcher.abort();
    let _ = std::fs::remove_dir_all(&root);
}
