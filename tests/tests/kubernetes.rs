//! The agent with the Kubernetes API: it watches this node's pods (a fake
//! API server answers with two pods); a vShield selected by namespace and
//! pod labels applies to the containers of the pod it selects only, and a
//! `DriftPolicy` for the CI namespaces only audits drift there while it is
//! blocked elsewhere, and there too once a reload removes that policy; a
//! `DriftPolicy` for init containers audits drift in the web pod's init
//! container only; a container of a pod the API does not report is under
//! the strictest of them; the events carry the pod's namespace, name and
//! labels and the `DriftPolicy` that decided.
//!
//! Needs BPF LSM and cgroup v2 (the VMs of `cargo xtask test`): the
//! containers' groups are named the way containerd names a pod's.

use std::{fs, path::Path, time::Duration};

use enforcer_tests::{
    agent::{Agent, Stopped},
    container::{Cgroup, Image, Root, Run, Scratch, run_in_group},
    kubernetes::{FakeApi, pod},
    require::{self, Requirement},
    scenario::start_lsm,
    serial,
};
use serde_json::{Value, json};

const RUNNER_POD: &str = "6f0c2b8e-1d3a-4c5b-9e7f-0a1b2c3d4e5f";
const WEB_POD: &str = "7a1d3c9f-2e4b-4d6c-8f8a-1b2c3d4e5f60";
/// A pod the API does not report (yet): its container cannot be told.
const UNLISTED_POD: &str = "8b2e4d0a-3f5c-4e7d-9a0b-2c3d4e5f6a71";

/// A vShield for the CI runner pods in `ci-*` namespaces, and a
/// `DriftPolicy` that only audits drift in those namespaces (CI jobs build
/// and run code); elsewhere the built-in policy blocks it.
const POLICY: &str = "apiVersion: enforcer.dev/v1alpha1
kind: VShield
metadata:
  name: runner-tool
spec:
  vulnerability: CVE-2099-4242
  mode: enforce
  selector:
    namespaces: [ci-*]
    podLabels: {app: runner}
  files: [/opt/vuln/bin/busybox]
  operations: [exec]
---
apiVersion: enforcer.dev/v1alpha1
kind: DriftPolicy
metadata:
  name: ci-runners
spec:
  selector:
    namespaces: [ci-*]
  mode: audit
---
apiVersion: enforcer.dev/v1alpha1
kind: DriftPolicy
metadata:
  name: init-setup
spec:
  selector:
    containerKinds: [init]
  mode: audit
";

const SCRIPT: &str = "/opt/vuln/bin/busybox echo exec-ran; echo after
    cp /bin/busybox /tmp/echo && /tmp/echo drift-ran";

/// The drift part of [`SCRIPT`].
const DRIFT: &str = "cp /bin/busybox /tmp/echo && /tmp/echo drift-ran";

/// Busybox with a vulnerable program.
fn image() -> Image {
    let image = Image::busybox().expect("building the image");
    let root = image.root();
    fs::create_dir_all(root.join("opt/vuln/bin")).expect("creating /opt/vuln/bin");
    fs::copy(root.join("bin/busybox"), root.join("opt/vuln/bin/busybox"))
        .expect("adding the program");
    image
}

/// The image the API reports for every started container.
const IMAGE: &str = "localhost/busybox:1";

/// `pod` with `group`'s container started as `name` in its
/// `statuses` (`containerStatuses`, `initContainerStatuses`), as the API
/// reports a started container.
fn started(mut pod: Value, statuses: &str, name: &str, group: &Cgroup) -> Value {
    let status = json!({
        "name": name,
        "containerID": format!("containerd://{}", group.container_id),
        "image": IMAGE,
        "imageID": "",
        "ready": true,
        "restartCount": 0,
    });
    match pod["status"][statuses].as_array_mut() {
        Some(list) => list.push(status),
        None => pod["status"][statuses] = json!([status]),
    }
    pod
}

/// Waits until the agent has placed `group`'s container with its pod's
/// namespace and name, which only the API reports (the group's name only
/// carries the pod's UID).
fn wait_placed(agent: &Agent, group: &Cgroup, namespace: &str, pod: &str) {
    let placed = format!(
        "container.id={} container.image={IMAGE} kubernetes.namespace={namespace} kubernetes.pod={pod}",
        group.container_id
    );
    assert!(
        agent.wait_for_log(&placed, 1, Duration::from_secs(30)),
        "container {} was not placed in its pod:\n{}",
        group.container_id,
        agent.log()
    );
}

/// The events of the rule named `name`.
fn by_rule<'a>(stopped: &'a Stopped, name: &str) -> Vec<&'a Value> {
    stopped
        .events
        .iter()
        .filter(|event| event["rule"]["name"] == name)
        .collect()
}

/// Drops the `DriftPolicy`s (the CI namespaces', the init containers') from
/// the policy file and, once
/// the reload is in force (the runner's group pointed at the settings that
/// now apply to it), runs the drift part of the script in `group` again.
fn reload_without_ci_policy(agent: &Agent, policy: &Path, image: &Image, group: &Cgroup) -> Run {
    let vshield_only = POLICY.split("---\n").next().expect("the vShield document");
    fs::write(policy, vshield_only).expect("rewriting the policy");
    assert!(
        agent.wait_for_log("trigger=\"watch\"", 1, Duration::from_secs(30)),
        "the changed policy was not put in force:\n{}",
        agent.log()
    );
    run_in_group(&Root::Overlay(image), Some(group), &[], DRIFT).expect("running the runner again")
}

/// One drift event per run, decided by the `DriftPolicy` selected.
fn check_drift_events(stopped: &Stopped, ids: [u64; 4]) {
    let [runner_id, web_id, setup_id, unlisted_id] = ids;
    let drift = by_rule(stopped, "drift-prevention");
    assert_eq!(drift.len(), 5, "{drift:#?}\n{}", stopped.stderr);
    for (event, cgroup, decision, ruleset) in [
        (drift[0], runner_id, "audit", "ci-runners"),
        (drift[1], web_id, "blocked", "builtin-default"),
        (drift[2], setup_id, "audit", "init-setup"),
        // Its namespace unknown: the strictest of all DriftPolicies, not
        // the audit of a CI namespace it might be in.
        (drift[3], unlisted_id, "blocked", "unknown-container"),
        // After the reload that removed the CI namespaces' DriftPolicy.
        (drift[4], runner_id, "blocked", "builtin-default"),
    ] {
        assert_eq!(event["enforcer"]["cgroup_id"], cgroup, "{event:#}");
        assert_eq!(event["enforcer"]["decision"], decision, "{event:#}");
        assert_eq!(event["rule"]["ruleset"], ruleset, "{event:#}");
        assert_eq!(event["file"]["path"], "/tmp/echo", "{event:#}");
    }
}

/// The runner pod with its container started, and the web pod with its
/// container and its init container started.
fn pods(runner: &Cgroup, web: &Cgroup, setup: &Cgroup) -> Vec<Value> {
    vec![
        started(
            pod(
                RUNNER_POD,
                "ci-main",
                "runner-0",
                &json!({"app": "runner"}),
                "node-1",
            ),
            "containerStatuses",
            "main",
            runner,
        ),
        started(
            started(
                pod(WEB_POD, "shop", "web-0", &json!({"app": "web"}), "node-1"),
                "initContainerStatuses",
                "setup",
                setup,
            ),
            "containerStatuses",
            "main",
            web,
        ),
    ]
}

#[test]
fn pod_namespaces_and_labels_select_vshields_and_drift_policies() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let runner_group = Cgroup::in_pod(RUNNER_POD).expect("creating a cgroup");
    let web_group = Cgroup::in_pod(WEB_POD).expect("creating a cgroup");
    // The web pod's init container.
    let setup_group = Cgroup::in_pod(WEB_POD).expect("creating a cgroup");
    let unlisted_group = Cgroup::in_pod(UNLISTED_POD).expect("creating a cgroup");
    let (Some(runner_group), Some(web_group), Some(setup_group), Some(unlisted_group)) =
        (runner_group, web_group, setup_group, unlisted_group)
    else {
        require::unavailable(Requirement::Cgroup2, "no cgroup v2 hierarchy is mounted");
        return;
    };
    let image = image();
    let root = image.root();
    let dir = Scratch::new("kubernetes").expect("scratch");
    let api = FakeApi::start(&pods(&runner_group, &web_group, &setup_group), dir.path())
        .expect("starting the fake API server");
    let policy = dir.path().join("policy.yaml");
    fs::write(&policy, POLICY).expect("writing the policy");
    let path = |path: &Path| path.display().to_string();
    let Some(agent) = start_lsm(&[
        "--policy",
        &path(&policy),
        "--image-store",
        &path(root),
        "--kubernetes-node",
        "node-1",
        "--kubeconfig",
        &path(api.kubeconfig()),
    ]) else {
        return;
    };
    assert!(
        agent.wait_for_log("the node's pods are listed", 1, Duration::from_mins(1)),
        "the agent did not list the pods:\n{}",
        agent.log()
    );
    // Each container's group exists before its first process: the agent
    // places it again once the pod list names its pod (namespace and
    // labels), before it runs anything.
    wait_placed(&agent, &runner_group, "ci-main", "runner-0");
    wait_placed(&agent, &web_group, "shop", "web-0");
    wait_placed(&agent, &setup_group, "shop", "web-0");
    let runner_id = runner_group.id().expect("the runner's cgroup id");
    let web_id = web_group.id().expect("the web cgroup id");
    let setup_id = setup_group.id().expect("the init container's cgroup id");
    let runner = run_in_group(&Root::Overlay(&image), Some(&runner_group), &[], SCRIPT)
        .expect("running the runner container");
    let web = run_in_group(&Root::Overlay(&image), Some(&web_group), &[], SCRIPT)
        .expect("running the web container");
    let setup = run_in_group(&Root::Overlay(&image), Some(&setup_group), &[], DRIFT)
        .expect("running the init container");
    let unlisted = run_in_group(&Root::Overlay(&image), Some(&unlisted_group), &[], DRIFT)
        .expect("running the unlisted pod's container");
    let unlisted_id = unlisted_group.id().expect("the unlisted pod's cgroup id");
    let again = reload_without_ci_policy(&agent, &policy, &image, &runner_group);
    assert!(!again.stdout.contains("drift-ran"), "{again:?}");
    let stopped = agent.stop().expect("stopping the agent");
    assert!(stopped.status.success(), "agent log:\n{}", stopped.stderr);

    assert!(!runner.stdout.contains("exec-ran"), "{runner:?}");
    assert!(runner.stdout.contains("after"), "{runner:?}");
    assert!(
        web.stdout.contains("exec-ran"),
        "{web:?}\n{}",
        stopped.stderr
    );
    let shielded = by_rule(&stopped, "runner-tool");
    assert_eq!(shielded.len(), 1, "{shielded:#?}\n{}", stopped.stderr);
    let event = shielded[0];
    assert_eq!(event["enforcer"]["cgroup_id"], runner_id);
    assert_ne!(event["enforcer"]["cgroup_id"], web_id);
    assert_eq!(event["enforcer"]["decision"], "blocked");
    assert_eq!(event["kubernetes"]["namespace"], "ci-main");
    assert_eq!(event["kubernetes"]["pod"]["name"], "runner-0");
    assert_eq!(event["kubernetes"]["pod"]["uid"], RUNNER_POD);
    assert_eq!(event["kubernetes"]["labels"]["app"], "runner");
    assert_eq!(event["container"]["runtime"], "containerd");
    // Drift: audited under the CI namespaces' DriftPolicy, blocked under
    // the built-in one elsewhere.
    assert!(runner.stdout.contains("drift-ran"), "{runner:?}");
    assert!(!web.stdout.contains("drift-ran"), "{web:?}");
    assert!(setup.stdout.contains("drift-ran"), "{setup:?}");
    assert!(!unlisted.stdout.contains("drift-ran"), "{unlisted:?}");
    check_drift_events(&stopped, [runner_id, web_id, setup_id, unlisted_id]);
    // The watch asked for this node's pods only.
    let requests = api.requests();
    assert!(requests.len() >= 2, "{requests:?}");
    for request in &requests {
        assert!(request.starts_with("/api/v1/pods "), "{request}");
        assert!(
            request.contains("fieldSelector=spec.nodeName%3Dnode-1"),
            "{request}"
        );
    }
}
