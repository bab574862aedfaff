//! Real Podman containers from images built here (no registry), under the
//! agent with its OCI hook installed: vShields select containers by image
//! from their first exec, and events name the container and its image.
//!
//! Needs BPF LSM, Podman and cgroup v2: the VMs of `cargo xtask test`.

use std::{fs, process::Output};

use enforcer_tests::{
    agent::Stopped,
    container::{Image, Scratch},
    podman::Podman,
    scenario::start_lsm,
    serial,
};
use serde_json::Value;

/// A busybox image with a vulnerable program (`/opt/vuln/echo`, busybox,
/// which runs the applet it is named after) and a file that makes each
/// image's layer its own.
fn image(name: &str) -> Image {
    let image = Image::busybox().expect("building the image");
    let root = image.root();
    for dir in ["opt/vuln", "etc", "proc", "sys", "dev"] {
        fs::create_dir_all(root.join(dir)).expect("creating the image's directories");
    }
    fs::copy(root.join("bin/busybox"), root.join("opt/vuln/echo")).expect("adding the program");
    fs::write(root.join("etc/image"), format!("{name}\n")).expect("adding /etc/image");
    image
}

const POLICY: &str = "apiVersion: enforcer.dev/v1alpha1
kind: VShield
metadata:
  name: tool-in-one
spec:
  vulnerability: CVE-2099-4242
  selector:
    images: [localhost/one:*]
  mode: enforce
  files: [/opt/vuln/echo]
  operations: [exec]
";

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn events_of<'a>(stopped: &'a Stopped, container: &str) -> Vec<&'a Value> {
    stopped
        .events
        .iter()
        .filter(|event| event["container"]["name"] == container)
        .collect()
}

fn assert_names_the_container(event: &Value, name: &str, image: &str) {
    let container = &event["container"];
    assert_eq!(container["name"], name, "{event:#}");
    assert_eq!(container["runtime"], "podman", "{event:#}");
    assert_eq!(container["image"]["name"], image, "{event:#}");
    assert_eq!(container["image"]["tag"][0], "1", "{event:#}");
    assert!(
        container["image"]["hash"]["all"][0]
            .as_str()
            .is_some_and(|digest| digest.starts_with("sha256:")),
        "{event:#}"
    );
    assert_eq!(
        container["id"].as_str().map(str::len),
        Some(64),
        "{event:#}"
    );
}

#[test]
fn an_image_vshield_blocks_its_image_from_the_first_exec_and_leaves_other_images_alone() {
    let _serial = serial();
    let Some(podman) = Podman::new().expect("preparing Podman") else {
        return;
    };
    podman
        .import(&image("one"), "localhost/one:1")
        .expect("importing image one");
    podman
        .import(&image("two"), "localhost/two:1")
        .expect("importing image two");
    let dir = Scratch::new("podman-policy").expect("scratch directory");
    let policy = dir.path().join("vshield.yaml");
    fs::write(&policy, POLICY).expect("writing the policy");
    let storage = podman.storage().display().to_string();
    let layers = podman.layers();
    let Some(agent) = start_lsm(&[
        "--policy",
        &policy.display().to_string(),
        "--podman-storage",
        &storage,
        "--image-store",
        &layers,
    ]) else {
        return;
    };
    podman
        .install_hook(agent.control_socket())
        .expect("installing the OCI hook");

    // Containers started after the agent: the program is each container's
    // first exec. Image one's is refused; image two's runs, which it could
    // not if the agent had not placed the container before that exec (an
    // unknown container is under every image's vShields).
    let one = podman
        .run("vulnerable", "localhost/one:1", &["/opt/vuln/echo", "ran"])
        .expect("running a container of image one");
    let two = podman
        .run("unaffected", "localhost/two:1", &["/opt/vuln/echo", "ran"])
        .expect("running a container of image two");
    // Drift in a Podman container: a copied program is refused.
    let drift = podman
        .run(
            "drifter",
            "localhost/two:1",
            &[
                "sh",
                "-c",
                "cp /bin/busybox /tmp/dropped && /tmp/dropped echo ran; echo status=$?",
            ],
        )
        .expect("running the drift container");
    let log = agent.log();
    let stopped = agent.stop().expect("stopping the agent");
    assert!(stopped.status.success(), "agent: {}", stopped.stderr);

    assert!(
        !one.status.success(),
        "image one's program ran: {}",
        describe(&one)
    );
    assert!(
        !String::from_utf8_lossy(&one.stdout).contains("ran"),
        "{}",
        describe(&one)
    );
    assert!(
        two.status.success(),
        "image two's program: {}",
        describe(&two)
    );
    assert_eq!(String::from_utf8_lossy(&two.stdout).trim(), "ran");
    assert!(
        log.contains("container announced by its OCI hook"),
        "the hook did not reach the agent:\n{log}"
    );

    let blocked = events_of(&stopped, "vulnerable");
    assert_eq!(blocked.len(), 1, "{blocked:#?}\nlog:\n{log}");
    let event = blocked[0];
    assert_eq!(event["rule"]["name"], "tool-in-one", "{event:#}");
    assert_eq!(event["enforcer"]["decision"], "blocked", "{event:#}");
    assert_names_the_container(event, "vulnerable", "localhost/one");
    assert!(
        events_of(&stopped, "unaffected").is_empty(),
        "{:#?}",
        events_of(&stopped, "unaffected")
    );

    let drift_stdout = String::from_utf8_lossy(&drift.stdout);
    assert!(
        drift_stdout.contains("status=126") && !drift_stdout.contains("ran"),
        "{}",
        describe(&drift)
    );
    let drifted = events_of(&stopped, "drifter");
    assert_eq!(drifted.len(), 1, "{drifted:#?}");
    assert_eq!(drifted[0]["rule"]["name"], "drift-prevention");
    assert_eq!(drifted[0]["file"]["path"], "/tmp/dropped");
    assert_names_the_container(drifted[0], "drifter", "localhost/two");
    // Its lineage: the container's shell, which is also its first process
    // (the shell's parent, Podman's monitor, is outside the container).
    let process = &drifted[0]["process"];
    assert_eq!(process["parent"]["name"], "sh", "{process:#}");
    assert_eq!(process["entry_leader"]["name"], "sh", "{process:#}");
    assert_eq!(
        process["entry_leader"]["pid"], process["parent"]["pid"],
        "{process:#}"
    );
    let lineage = drifted[0]["enforcer"]["lineage"].as_array();
    assert_eq!(lineage.map(Vec::len), Some(1), "{:#}", drifted[0]);
}
