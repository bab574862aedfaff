//! Real Podman containers from images built here (no registry), under the
//! agent with its OCI hook installed: vShields select containers by image
//! from their first exec, drift is refused in containers and in exec
//! sessions, and events name the container, its image, the process lineage
//! and the session; a `DriftPolicy` that audits exec sessions lets a
//! `podman exec` session run what it dropped, and not the container's own
//! processes, even when they leave their mount and pid namespaces to look
//! like a session.
//!
//! Needs BPF LSM, Podman and cgroup v2: the VMs of `cargo xtask test`.

use std::{fs, process::Output};

use enforcer_tests::{
    agent::{Agent, Stopped},
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
---
apiVersion: enforcer.dev/v1alpha1
kind: DriftPolicy
metadata:
  name: debuggable
spec:
  selector:
    images: [localhost/three:*]
  mode: enforce
  auditExecSessions: true
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

/// Podman with images one and two, and the agent (lsm) enforcing
/// [`POLICY`] with Podman's storage and the hook installed; `None` where
/// that cannot run (skip said).
fn setup(dir: &Scratch) -> Option<(Podman, Agent)> {
    let podman = Podman::new().expect("preparing Podman")?;
    podman
        .import(&image("one"), "localhost/one:1")
        .expect("importing image one");
    podman
        .import(&image("two"), "localhost/two:1")
        .expect("importing image two");
    podman
        .import(&image("three"), "localhost/three:1")
        .expect("importing image three");
    let policy = dir.path().join("vshield.yaml");
    fs::write(&policy, POLICY).expect("writing the policy");
    let storage = podman.storage().display().to_string();
    let layers = podman.layers();
    let agent = start_lsm(&[
        "--policy",
        &policy.display().to_string(),
        "--podman-storage",
        &storage,
        "--image-store",
        &layers,
    ])?;
    podman
        .install_hook(agent.control_socket())
        .expect("installing the OCI hook");
    Some((podman, agent))
}

/// What ran, each container's output.
struct Runs {
    one: Output,
    two: Output,
    drift: Output,
    exec: Output,
    /// Drift in an exec session into a container of image three.
    debug: Output,
    /// Drift by a container process of image three that made itself look
    /// like the first process of an exec session.
    disguised: Output,
}

const DROP_AND_RUN: &str = "cp /bin/busybox /tmp/dropped && /tmp/dropped echo ran; echo status=$?";

/// A dropped program that runs when allowed: busybox runs the applet it is
/// named after.
const DROP_ECHO: &str = "cp /bin/busybox /tmp/echo && /tmp/echo ran; echo status=$?";

/// [`DROP_AND_RUN`] from a process whose parent is in another mount and
/// pid namespace than its own, as an exec session's first process is (its
/// parent is Podman's monitor, outside the container), though it descends
/// from the container's first process: a pid namespace made in a user
/// namespace (`unshare`), entered (`nsenter`: the child is pid 2 there, not
/// pid 1), and a mount namespace of its own. Only the cgroup it shares with
/// its ancestors tells it from a session.
const DISGUISED: &str = r#"B=/bin/busybox
$B unshare -Urpfm $B sleep 600 &
U=$!
A=
for try in 1 2 3 4 5 6 7 8 9 10; do
  for d in /proc/[0-9]*; do
    read -r line 2>/dev/null < $d/stat || continue
    set -- $line
    [ "$4" = "$U" ] && A=$1
  done
  [ -n "$A" ] && break
  $B sleep 1
done
$B nsenter -t "$A" -U -p $B unshare -m $B sh -c 'cp /bin/busybox /tmp/dropped && /tmp/dropped echo ran; echo status=$?'
kill $U"#;

fn run_containers(podman: &Podman) -> Runs {
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
        .run("drifter", "localhost/two:1", &["sh", "-c", DROP_AND_RUN])
        .expect("running the drift container");
    // The same from an exec session into a running container.
    podman
        .start(
            "sleeper",
            "localhost/two:1",
            &["/bin/busybox", "sleep", "600"],
        )
        .expect("starting a long-running container");
    let exec = podman
        .exec("sleeper", &["sh", "-c", DROP_AND_RUN])
        .expect("running podman exec");
    // Image three's DriftPolicy audits drift in exec sessions.
    podman
        .start(
            "debugged",
            "localhost/three:1",
            &["/bin/busybox", "sleep", "600"],
        )
        .expect("starting a container of image three");
    let debug = podman
        .exec("debugged", &["sh", "-c", DROP_ECHO])
        .expect("running podman exec");
    // Kubernetes runs pods without a seccomp profile unless told to: user
    // namespaces can be made.
    let disguised = podman
        .run_with(
            "disguised",
            &["--security-opt", "seccomp=unconfined"],
            "localhost/three:1",
            &["sh", "-c", DISGUISED],
        )
        .expect("running the disguised container");
    Runs {
        one,
        two,
        drift,
        exec,
        debug,
        disguised,
    }
}

#[test]
fn image_vshields_decide_from_the_first_exec_and_events_name_container_image_and_session() {
    let _serial = serial();
    let dir = Scratch::new("podman-policy").expect("scratch directory");
    let Some((podman, agent)) = setup(&dir) else {
        return;
    };
    let runs = run_containers(&podman);
    let log = agent.log();
    let stopped = agent.stop().expect("stopping the agent");
    assert!(stopped.status.success(), "agent: {}", stopped.stderr);

    // The image vShield.
    assert!(
        !runs.one.status.success(),
        "image one's program ran: {}",
        describe(&runs.one)
    );
    assert!(
        !String::from_utf8_lossy(&runs.one.stdout).contains("ran"),
        "{}",
        describe(&runs.one)
    );
    assert!(
        runs.two.status.success(),
        "image two's program: {}",
        describe(&runs.two)
    );
    assert_eq!(String::from_utf8_lossy(&runs.two.stdout).trim(), "ran");
    assert!(
        log.contains("container announced by its OCI hook"),
        "the hook did not reach the agent:\n{log}"
    );
    let blocked = events_of(&stopped, "vulnerable");
    assert_eq!(blocked.len(), 1, "{blocked:#?}\nlog:\n{log}");
    assert_eq!(
        blocked[0]["rule"]["name"], "tool-in-one",
        "{:#}",
        blocked[0]
    );
    assert_eq!(
        blocked[0]["enforcer"]["decision"], "blocked",
        "{:#}",
        blocked[0]
    );
    assert_names_the_container(blocked[0], "vulnerable", "localhost/one");
    let unaffected = events_of(&stopped, "unaffected");
    assert!(unaffected.is_empty(), "{unaffected:#?}");

    // Drift, with its lineage: the container's shell, which is also its
    // first process (the shell's parent, Podman's monitor, is outside).
    check_drift(&runs.drift, &stopped, "drifter", "container");
    let process = &events_of(&stopped, "drifter")[0]["process"];
    assert_eq!(process["parent"]["name"], "sh", "{process:#}");
    assert_eq!(
        process["entry_leader"]["pid"], process["parent"]["pid"],
        "{process:#}"
    );
    // Drift in an exec session: refused too, and marked as such.
    check_drift(&runs.exec, &stopped, "sleeper", "exec");

    // Image three: drift in an exec session runs, and is reported.
    let stdout = String::from_utf8_lossy(&runs.debug.stdout);
    assert!(
        stdout.contains("ran") && stdout.contains("status=0"),
        "{}",
        describe(&runs.debug)
    );
    let events = events_of(&stopped, "debugged");
    assert_eq!(events.len(), 1, "{events:#?}\nlog:\n{log}");
    let event = events[0];
    assert_eq!(event["enforcer"]["decision"], "audit", "{event:#}");
    assert_eq!(event["enforcer"]["session"], "exec", "{event:#}");
    assert_eq!(event["enforcer"]["exemption"], "exec-session", "{event:#}");
    assert_eq!(event["rule"]["ruleset"], "debuggable", "{event:#}");
    assert_eq!(event["file"]["path"], "/tmp/echo", "{event:#}");
    // A container process of image three that looks like a session's first
    // process by its namespaces is still the container's: refused.
    let stdout = String::from_utf8_lossy(&runs.disguised.stdout);
    assert!(
        stdout.contains("status=126") && !stdout.contains("ran"),
        "{}",
        describe(&runs.disguised)
    );
    let events = events_of(&stopped, "disguised");
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = events[0];
    assert_eq!(event["enforcer"]["decision"], "blocked", "{event:#}");
    assert_eq!(event["enforcer"]["session"], "container", "{event:#}");
    assert!(event["enforcer"]["exemption"].is_null(), "{event:#}");
    assert_eq!(event["rule"]["ruleset"], "debuggable", "{event:#}");
}

/// One drift event for `container`'s dropped program, refused, naming the
/// container and image two, in `session`.
fn check_drift(output: &Output, stopped: &Stopped, container: &str, session: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("status=126") && !stdout.contains("ran"),
        "{}",
        describe(output)
    );
    let events = events_of(stopped, container);
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = events[0];
    assert_eq!(event["rule"]["name"], "drift-prevention", "{event:#}");
    assert_eq!(event["file"]["path"], "/tmp/dropped", "{event:#}");
    assert_names_the_container(event, container, "localhost/two");
    assert_eq!(event["enforcer"]["session"], session, "{event:#}");
    assert_eq!(event["process"]["entry_leader"]["name"], "sh", "{event:#}");
    let lineage = event["enforcer"]["lineage"].as_array();
    assert_eq!(lineage.map(Vec::len), Some(1), "{event:#}");
}
