//! The Kubernetes manifest in `deploy/kubernetes/enforcer.yaml`, checked
//! without a cluster: every document is a valid Kubernetes object (read
//! into the API's own types and written back unchanged, so a misspelt or
//! misplaced field fails), the agent accepts the container's arguments and
//! the `ConfigMap`'s policy, and what the arguments name is mounted.

use std::{collections::BTreeSet, path::PathBuf};

use clap::Parser as _;
use enforcer::cli::{Cli, Command};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Namespace, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

const MANIFEST: &str = include_str!("../../deploy/kubernetes/enforcer.yaml");

fn documents() -> Vec<Value> {
    serde_saphyr::from_multiple(MANIFEST).expect("the manifest is YAML")
}

fn document(kind: &str) -> Value {
    documents()
        .into_iter()
        .find(|document| document["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the manifest"))
}

/// `document` read as `T` and written back; what `T` does not know is lost.
fn round_trip<T: DeserializeOwned + Serialize>(document: &Value) -> Value {
    let typed: T = serde_json::from_value(document.clone()).expect("a valid object");
    serde_json::to_value(typed).expect("serialisable")
}

#[test]
fn every_document_is_a_kubernetes_object_with_only_known_fields() {
    let documents = documents();
    let kinds: Vec<&str> = documents
        .iter()
        .map(|document| document["kind"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "DaemonSet"
        ]
    );
    for document in &documents {
        let written = match document["kind"].as_str().unwrap_or_default() {
            "Namespace" => round_trip::<Namespace>(document),
            "ServiceAccount" => round_trip::<ServiceAccount>(document),
            "ClusterRole" => round_trip::<ClusterRole>(document),
            "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(document),
            "Role" => round_trip::<Role>(document),
            "RoleBinding" => round_trip::<RoleBinding>(document),
            "ConfigMap" => round_trip::<ConfigMap>(document),
            "DaemonSet" => round_trip::<DaemonSet>(document),
            other => panic!("unexpected kind {other}"),
        };
        assert_eq!(&written, document, "a field the API does not have");
    }
}

#[test]
fn the_agent_may_read_the_pods_of_its_node_and_nothing_else() {
    let role: ClusterRole = serde_json::from_value(document("ClusterRole")).expect("a role");
    let rules = role.rules.expect("rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["pods".to_owned()][..])
    );
    assert_eq!(
        rules[0].verbs,
        ["get".to_owned(), "list".to_owned(), "watch".to_owned()]
    );
}

#[test]
fn the_agent_accepts_its_arguments_and_what_they_name_is_mounted() {
    let daemon_set: DaemonSet = serde_json::from_value(document("DaemonSet")).expect("a DaemonSet");
    let pod = daemon_set
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec");
    assert_eq!(
        pod.host_pid,
        Some(true),
        "the host's /proc/1 names the host"
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("enforcer"));
    let container = &pod.containers[0];
    let env: Vec<&str> = container
        .env
        .iter()
        .flatten()
        .map(|var| var.name.as_str())
        .collect();
    assert!(
        env.contains(&"NODE_NAME"),
        "--kubernetes-node comes from NODE_NAME"
    );

    let args = container.args.clone().expect("args");
    let cli = Cli::try_parse_from(std::iter::once("enforcer".to_owned()).chain(args))
        .unwrap_or_else(|error| panic!("the agent refuses its arguments: {error}"));
    let Command::Run(run) = cli.command else {
        panic!("the container does not run the agent");
    };

    let mounts: BTreeSet<PathBuf> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|mount| PathBuf::from(&mount.mount_path))
        .collect();
    let mounted = |path: &std::path::Path| mounts.iter().any(|mount| path.starts_with(mount));
    for policy in &run.policy {
        assert!(mounted(policy), "{} is not mounted", policy.display());
    }
    assert!(mounted(run.control_socket.parent().expect("a directory")));
    for store in &run.image_store {
        assert!(
            mounted(std::path::Path::new(store)),
            "{store} is not mounted"
        );
    }
    for socket in &run.cri_socket {
        assert!(
            mounted(std::path::Path::new(socket)),
            "{socket} is not mounted"
        );
    }
    // The probes ask the agent's metrics endpoint.
    let port = run.metrics_address.expect("--metrics-address").port();
    let exposed = container
        .ports
        .iter()
        .flatten()
        .find(|exposed| exposed.name.as_deref() == Some("metrics"))
        .expect("a metrics port");
    assert_eq!(exposed.container_port, i32::from(port));
    for (probe, path) in [
        (&container.startup_probe, "/healthz"),
        (&container.liveness_probe, "/healthz"),
        (&container.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|probe| probe.http_get.as_ref())
            .unwrap_or_else(|| panic!("no probe of {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("metrics".to_owned())
        );
    }
    // Liveness alone would kill a start-up that outlasts its failures (30 s
    // here); the startup probe holds it off for minutes.
    let budget = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        let probe = probe.as_ref().expect("a probe");
        probe.period_seconds.unwrap_or(10) * probe.failure_threshold.unwrap_or(3)
    };
    assert!(
        budget(&container.startup_probe) >= 120,
        "the startup probe allows {} s",
        budget(&container.startup_probe)
    );
    for required in ["/host/cgroup", "/sys/kernel/security"] {
        assert!(mounts.contains(&PathBuf::from(required)), "{required}");
    }
    // Every mount has its volume.
    let volumes: BTreeSet<&str> = pod
        .volumes
        .iter()
        .flatten()
        .map(|volume| volume.name.as_str())
        .collect();
    for mount in container.volume_mounts.iter().flatten() {
        assert!(volumes.contains(mount.name.as_str()), "{}", mount.name);
    }
}

/// Enforcement is pinned in the host's BPF filesystem, so that it outlives
/// the pod, and removing this very `DaemonSet` unloads it.
#[test]
fn enforcement_outlives_the_pod_until_the_daemon_set_goes() {
    let daemon_set: DaemonSet = serde_json::from_value(document("DaemonSet")).expect("a DaemonSet");
    let pod = daemon_set
        .spec
        .clone()
        .expect("spec")
        .template
        .spec
        .expect("pod spec");
    let container = &pod.containers[0];
    let args = container.args.clone().expect("args");
    let cli = Cli::try_parse_from(std::iter::once("enforcer".to_owned()).chain(args))
        .unwrap_or_else(|error| panic!("the agent refuses its arguments: {error}"));
    let Command::Run(run) = cli.command else {
        panic!("the container does not run the agent");
    };
    let bpffs = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|mount| run.pin_dir.starts_with(&mount.mount_path))
        .expect("the pin directory is mounted");
    assert_eq!(bpffs.mount_propagation.as_deref(), Some("Bidirectional"));
    let host_path = pod
        .volumes
        .iter()
        .flatten()
        .find(|volume| volume.name == bpffs.name)
        .and_then(|volume| volume.host_path.as_ref())
        .expect("a hostPath");
    assert_eq!(host_path.path, "/sys/fs/bpf");
    let metadata = &daemon_set.metadata;
    let owner = run.daemonset.as_ref().expect("--daemonset");
    assert_eq!(Some(&owner.namespace), metadata.namespace.as_ref());
    assert_eq!(Some(&owner.name), metadata.name.as_ref());
    let role: Role = serde_json::from_value(document("Role")).expect("a role");
    let rules = role.rules.expect("rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["daemonsets".to_owned()][..])
    );
    assert_eq!(
        rules[0].resource_names.as_deref(),
        Some(&[owner.name.clone()][..])
    );
    assert_eq!(rules[0].verbs, ["get".to_owned()]);
}

#[test]
fn the_config_map_holds_a_valid_policy() {
    let config_map: ConfigMap = serde_json::from_value(document("ConfigMap")).expect("a ConfigMap");
    let dir = std::env::temp_dir().join(format!("enforcer-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a directory");
    for (name, text) in config_map.data.expect("data") {
        std::fs::write(dir.join(name), text).expect("writing the policy");
    }
    let loaded = enforcer::policy::load::load(std::slice::from_ref(&dir));
    let _ = std::fs::remove_dir_all(&dir);
    let set = loaded.unwrap_or_else(|diagnostics| {
        panic!(
            "{}",
            diagnostics
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert_eq!(set.drift.len(), 2);
}
