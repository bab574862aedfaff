//! Kubernetes containers named and selected from the CRI API, without the
//! Kubernetes API: a real containerd (its CRI plugin) runs two pods as the
//! kubelet would run them, and the agent, reading containerd's CRI socket,
//! learns each container's name, image and pod (namespace, name, labels)
//! from it. A `DriftPolicy` for the CI namespaces' runner pods audits what
//! the runner's container builds and runs, a vShield for namespace `shop`
//! refuses the web pod's vulnerable program, and the built-in policy blocks
//! the web pod's drift; the events name container, image and pod. Drift as
//! a container's very first act, when the agent may not have placed it yet,
//! is decided by its own `DriftPolicy` or by the strictest of all, never by
//! a weaker one.
//!
//! Needs BPF LSM, containerd, Podman (to build the images) and cgroup v2:
//! the VMs of `cargo xtask test`.

use std::{fs, time::Duration};

use enforcer_tests::{
    container::{Image, Scratch},
    cri::{Containerd, Pod, Ran, SANDBOX_IMAGE},
    podman::Podman,
    require,
    scenario::start_lsm,
    serial,
};
use serde_json::Value;

const POLICY: &str = "apiVersion: enforcer.dev/v1alpha1
kind: DriftPolicy
metadata:
  name: ci-runners
spec:
  selector:
    namespaces: [ci-*]
    podLabels: {app: runner}
  mode: audit
---
apiVersion: enforcer.dev/v1alpha1
kind: VShield
metadata:
  name: shop-tool
spec:
  vulnerability: CVE-2099-4343
  selector:
    namespaces: [shop]
  mode: enforce
  files: [/opt/vuln/echo]
  operations: [exec]
";

const RUNNER: Pod<'static> = Pod {
    namespace: "ci-builds",
    name: "runner-0",
    uid: "6a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
    labels: &[("app", "runner")],
};

const WEB: Pod<'static> = Pod {
    namespace: "shop",
    name: "web-0",
    uid: "7b2c3d4e-5f6a-4b7c-9d8e-0f1a2b3c4d5e",
    labels: &[("app", "web")],
};

/// A dropped program as the container's first act (the agent may not have
/// placed the container yet), then, once it has (seconds later), a build's
/// output run and the vulnerable program run.
fn script() -> String {
    format!(
        "/bin/busybox mkdir /tmp/early /tmp/built
cp /bin/busybox /tmp/early/true && /tmp/early/true; echo early=$?
/bin/busybox sleep {}
cp /bin/busybox /tmp/built/true && /tmp/built/true; echo built=$?
/opt/vuln/echo shielded; echo vuln=$?",
        require::patience(Duration::from_secs(6)).as_secs()
    )
}

fn image() -> Image {
    let image = Image::busybox().expect("building the image");
    let root = image.root();
    for dir in ["opt/vuln", "etc", "proc", "sys", "dev"] {
        fs::create_dir_all(root.join(dir)).expect("creating the image's directories");
    }
    fs::copy(root.join("bin/busybox"), root.join("opt/vuln/echo")).expect("adding the program");
    image
}

fn value_of<'a>(log: &'a str, key: &str) -> Option<&'a str> {
    log.lines()
        .filter_map(|line| {
            line.split_once(&format!("{key}="))
                .map(|(_, value)| value.trim())
        })
        .next_back()
}

fn events_of<'a>(events: &'a [Value], ran: &Ran, path: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|event| event["container"]["id"] == ran.id.as_str())
        .filter(|event| event["file"]["path"] == path)
        .collect()
}

fn assert_names(event: &Value, pod: &Pod<'_>) {
    let container = &event["container"];
    assert_eq!(container["name"], "tool", "{event:#}");
    assert_eq!(container["runtime"], "containerd", "{event:#}");
    assert_eq!(container["image"]["name"], "localhost/app", "{event:#}");
    assert_eq!(container["image"]["tag"][0], "1", "{event:#}");
    let kubernetes = &event["kubernetes"];
    assert_eq!(kubernetes["namespace"], pod.namespace, "{event:#}");
    assert_eq!(kubernetes["pod"]["name"], pod.name, "{event:#}");
    assert_eq!(kubernetes["pod"]["uid"], pod.uid, "{event:#}");
    assert_eq!(kubernetes["labels"]["app"], pod.labels[0].1, "{event:#}");
    // The kubelet's own sandbox labels are not the pod's.
    assert!(
        kubernetes["labels"]["io.kubernetes.pod.name"].is_null(),
        "{event:#}"
    );
}

#[test]
fn pods_from_the_cri_api_select_policies_and_name_events() {
    let _serial = serial();
    let Some(podman) = Podman::new().expect("preparing Podman") else {
        return;
    };
    let Some(mut containerd) = Containerd::start().expect("starting containerd") else {
        return;
    };
    let image = image();
    podman
        .import(&image, "localhost/app:1")
        .expect("building the image");
    podman
        .import_with(
            &image,
            SANDBOX_IMAGE,
            &[r#"CMD ["/bin/busybox", "sleep", "86400"]"#],
        )
        .expect("building the sandbox image");
    for reference in ["localhost/app:1", SANDBOX_IMAGE] {
        containerd
            .import(&podman, reference)
            .unwrap_or_else(|error| panic!("{error:#}\n{}", containerd.log()));
    }
    let dir = Scratch::new("cri").expect("scratch directory");
    let policy = dir.path().join("policy.yaml");
    fs::write(&policy, POLICY).expect("writing the policy");
    let socket = containerd.socket().display().to_string();
    let layers = containerd.layers();
    let Some(agent) = start_lsm(&[
        "--policy",
        &policy.display().to_string(),
        "--cri-socket",
        &socket,
        "--image-store",
        &layers,
    ]) else {
        return;
    };
    assert!(
        agent.wait_for_log(
            "CRI: reading the runtime's containers",
            1,
            Duration::from_secs(30)
        ),
        "the agent did not reach containerd's CRI socket:\n{}",
        agent.log()
    );
    let mark = agent.flush().expect("flushing");
    let script = script();
    let mut run = |pod: &Pod<'_>| {
        containerd
            .run(
                pod,
                "tool",
                "localhost/app:1",
                &["sh", "-c", &script],
                require::patience(Duration::from_mins(2)),
            )
            .unwrap_or_else(|error| {
                panic!("running pod {}: {error:#}\n{}", pod.name, containerd.log())
            })
    };
    let runner = run(&RUNNER);
    let web = run(&WEB);
    agent.flush().expect("flushing");
    let events = agent.events_since(mark).expect("reading the events");
    let log = agent.log();
    let stopped = agent.stop().expect("stopping the agent");
    assert!(
        stopped.status.success(),
        "agent: {:?}\n{log}",
        stopped.status
    );

    for (ran, pod) in [(&runner, &RUNNER), (&web, &WEB)] {
        assert_eq!(ran.exit_code, 0, "pod {}: {}", pod.name, ran.log);
    }
    check_first_acts(&events, &runner, &web, &log);
    check_runner(&events, &runner, &log);
    check_web(&events, &web, &log);
}

/// The runner's pod, placed from what the CRI API said: its `DriftPolicy`
/// audits the build's output, and the shop's vShield is not for it.
fn check_runner(events: &[Value], runner: &Ran, log: &str) {
    assert_eq!(value_of(&runner.log, "built"), Some("0"), "{}", runner.log);
    assert_eq!(value_of(&runner.log, "vuln"), Some("0"), "{}", runner.log);
    let built = events_of(events, runner, "/tmp/built/true");
    assert_eq!(built.len(), 1, "{built:#?}\n{log}");
    assert_eq!(built[0]["enforcer"]["decision"], "audit", "{:#}", built[0]);
    assert_eq!(built[0]["rule"]["ruleset"], "ci-runners", "{:#}", built[0]);
    assert_names(built[0], &RUNNER);
    assert!(
        events_of(events, runner, "/opt/vuln/echo").is_empty(),
        "{events:#?}"
    );
}

/// The web pod: the built-in policy blocks its drift, the vShield for
/// namespace shop refuses its vulnerable program.
fn check_web(events: &[Value], web: &Ran, log: &str) {
    assert_eq!(value_of(&web.log, "built"), Some("126"), "{}", web.log);
    assert_eq!(value_of(&web.log, "vuln"), Some("126"), "{}", web.log);
    let built = events_of(events, web, "/tmp/built/true");
    assert_eq!(built.len(), 1, "{built:#?}\n{log}");
    assert_eq!(
        built[0]["enforcer"]["decision"], "blocked",
        "{:#}",
        built[0]
    );
    assert_names(built[0], &WEB);
    let shielded = events_of(events, web, "/opt/vuln/echo");
    assert_eq!(shielded.len(), 1, "{shielded:#?}\n{log}");
    assert_eq!(
        shielded[0]["enforcer"]["decision"], "blocked",
        "{:#}",
        shielded[0]
    );
    assert_eq!(
        shielded[0]["rule"]["name"], "shop-tool",
        "{:#}",
        shielded[0]
    );
    assert_names(shielded[0], &WEB);
}

/// The containers' first act: under its own `DriftPolicy` once placed,
/// under the strictest of all (which enforces) before that; never under a
/// weaker one. Which of the two depends on how fast the agent was.
fn check_first_acts(events: &[Value], runner: &Ran, web: &Ran, log: &str) {
    let early = events_of(events, runner, "/tmp/early/true");
    assert_eq!(early.len(), 1, "{early:#?}\n{log}");
    let decided = (
        early[0]["enforcer"]["decision"].as_str(),
        early[0]["rule"]["ruleset"].as_str(),
    );
    let ran = value_of(&runner.log, "early");
    assert!(
        matches!(
            (decided, ran),
            ((Some("audit"), Some("ci-runners")), Some("0"))
                | ((Some("blocked"), Some("unknown-container")), Some("126"))
        ),
        "{:#}\n{}",
        early[0],
        runner.log
    );
    let early = events_of(events, web, "/tmp/early/true");
    assert_eq!(early.len(), 1, "{early:#?}\n{log}");
    assert_eq!(
        early[0]["enforcer"]["decision"], "blocked",
        "{:#}",
        early[0]
    );
    assert_eq!(value_of(&web.log, "early"), Some("126"), "{}", web.log);
}
