//! Policy hot reload and `enforcer vshield list`: the policy directory (laid
//! out as a mounted `ConfigMap`) is changed while the agent runs (valid and
//! invalid `ConfigMap` updates, an editor's save, then SIGHUP), and containers
//! run between the changes show what is in force.
//!
//! Runs with the backend the kernel allows (`auto`): exec vShields are
//! decided by both, so the test runs on the host (signal) and in the VMs
//! (lsm).

use std::{
    fs,
    os::unix::fs::symlink,
    path::Path,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use enforcer_tests::{
    agent::{self, Agent, Stopped},
    container::{self, Image, Scratch},
    require,
    scenario::start,
    serial,
};
use serde_json::Value;

/// How long a change may take to be in force here. The target is 1 s
/// (150 ms of quiet, then the diff); QEMU's software emulation in the VM
/// tests is several times slower than hardware.
const IN_FORCE_WITHIN: Duration = Duration::from_secs(10);

/// The agent's log line after it looked vShield files up in new layers.
const LOOKED_UP: &str = "vShield files looked up again";

fn vshield(name: &str, mode: &str, file: &str) -> String {
    format!(
        "apiVersion: enforcer.dev/v1alpha1
kind: VShield
metadata:
  name: {name}
spec:
  vulnerability: CVE-2099-{number}
  mode: {mode}
  files: [{file}]
  operations: [exec]
",
        number = 2000 + name.len()
    )
}

/// Replaces the policy file the way editors and config map updates do: a
/// new file renamed over the old one.
fn replace(dir: &Path, text: &str) {
    let temporary = dir.join(".policy.tmp");
    fs::write(&temporary, text).expect("writing the new policy");
    fs::rename(&temporary, dir.join("policy.yaml")).expect("renaming the new policy into place");
}

/// Replaces the policy the way the kubelet updates a mounted `ConfigMap`: the
/// files live in a directory of their own, `..data` points at it and each
/// name in the mount is a symlink through `..data`; an update writes a new
/// directory and swaps `..data` by rename (no file the agent reads is ever
/// half written, and its name does not change).
fn replace_like_kubelet(dir: &Path, text: &str) {
    static VERSION: AtomicU32 = AtomicU32::new(0);
    let version = format!("..2026_11_24_v{}", VERSION.fetch_add(1, Ordering::Relaxed));
    fs::create_dir(dir.join(&version)).expect("creating the version directory");
    fs::write(dir.join(&version).join("policy.yaml"), text).expect("writing the new policy");
    let old = fs::read_link(dir.join("..data")).ok();
    symlink(&version, dir.join("..data_tmp")).expect("linking the new version");
    fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swapping ..data");
    let name = dir.join("policy.yaml");
    if fs::symlink_metadata(&name).is_err() {
        symlink("..data/policy.yaml", &name).expect("linking the policy name");
    }
    if let Some(old) = old {
        fs::remove_dir_all(dir.join(old)).expect("removing the old version");
    }
}

/// Waits for the `count`th line with `text` in the agent's log.
fn wait(agent: &Agent, text: &str, count: usize) -> Duration {
    let started = Instant::now();
    assert!(
        agent.wait_for_log(text, count, IN_FORCE_WITHIN),
        "no {count}th {text:?} within {:?}; log:\n{}",
        require::patience(IN_FORCE_WITHIN),
        agent.log()
    );
    started.elapsed()
}

/// Runs both programs in a container; which of them ran.
fn run_both(image: &Image) -> (bool, bool) {
    let run = container::run(
        image,
        "/opt/first/busybox echo first-ran; /opt/second/busybox echo second-ran; true",
    )
    .expect("running the container");
    (
        run.stdout.lines().any(|line| line == "first-ran"),
        run.stdout.lines().any(|line| line == "second-ran"),
    )
}

/// `enforcer vshield list --json` against the agent.
fn list(agent: &Agent) -> Value {
    let output = Command::new(agent::binary())
        .args(["vshield", "list", "--json", "--socket"])
        .arg(agent.control_socket())
        .output()
        .expect("running enforcer vshield list");
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("vshield list --json prints JSON")
}

#[test]
fn policy_changes_are_applied_live_and_an_invalid_change_leaves_the_policy_in_force() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let image = Image::busybox().expect("building the image");
    for dir in ["opt/first", "opt/second"] {
        let dir = image.root().join(dir);
        fs::create_dir_all(&dir).expect("creating a program directory");
        // Named busybox, which picks its applet from the name it runs under.
        fs::copy(image.root().join("bin/busybox"), dir.join("busybox")).expect("adding a program");
    }
    let scratch = Scratch::new("reload").expect("scratch");
    let policies = scratch.path().join("policies");
    fs::create_dir_all(&policies).expect("creating the policy directory");
    // A `ConfigMap`'s mount, as a `DaemonSet` gives the agent its policy.
    replace_like_kubelet(
        &policies,
        &vshield("first", "enforce", "/opt/first/busybox"),
    );
    let store = image.root().display().to_string();
    let agent = start(&[
        "--policy",
        &policies.display().to_string(),
        "--image-store",
        &store,
    ]);

    // Generation 1: `first` is shielded.
    assert_eq!(run_both(&image), (false, true), "{}", agent.log());
    let listed = list(&agent);
    assert_eq!(listed["generation"], 1, "{listed:#}");
    assert_eq!(listed["vshields"][0]["name"], "first", "{listed:#}");
    assert_eq!(listed["vshields"][0]["mode"], "enforce", "{listed:#}");
    assert_eq!(listed["vshields"][0]["files"], 1, "{listed:#}");
    assert_eq!(listed["vshields"][0]["hits"], 1, "{listed:#}");

    // Generation 2: `first` goes, `second` comes, by a ConfigMap update.
    replace_like_kubelet(
        &policies,
        &vshield("second", "enforce", "/opt/second/busybox"),
    );
    let took = wait(&agent, "policy in force", 2);
    assert_eq!(run_both(&image), (true, false), "{}", agent.log());
    let listed = list(&agent);
    assert_eq!(listed["generation"], 2, "{listed:#}");
    assert_eq!(listed["vshields"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["vshields"][0]["name"], "second", "{listed:#}");
    assert_eq!(listed["vshields"][0]["hits"], 1, "{listed:#}");

    // An invalid change (a misspelt field) is refused; `second` stays.
    replace_like_kubelet(
        &policies,
        &vshield("second", "enforce", "/opt/second/busybox").replace("files:", "filez:"),
    );
    wait(&agent, "policy change refused", 1);
    assert_eq!(run_both(&image), (true, false), "{}", agent.log());
    assert_eq!(list(&agent)["generation"], 2);

    // Generation 3: valid again, both, `first` in audit mode, by an editor
    // (a new file renamed over the old name).
    replace(
        &policies,
        &[
            vshield("second", "enforce", "/opt/second/busybox"),
            vshield("first", "audit", "/opt/first/busybox"),
        ]
        .join("---\n"),
    );
    wait(&agent, "policy in force", 3);
    assert_eq!(run_both(&image), (true, false), "{}", agent.log());
    let listed = list(&agent);
    // `second` kept its counter across the reloads.
    assert_eq!(listed["vshields"][0]["hits"], 3, "{listed:#}");
    assert_eq!(listed["vshields"][1]["mode"], "audit", "{listed:#}");

    // Generation 4: SIGHUP applies the same policy again.
    let pid = libc::pid_t::try_from(agent.pid()).expect("pid");
    // SAFETY: kill(2) on our own child, which has not been reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    wait(&agent, "policy in force", 4);
    assert_eq!(list(&agent)["generation"], 4);

    let stopped = agent.stop().expect("stopping the agent");
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_policy_records(&stopped);
    assert_decisions(&stopped);
    eprintln!("a valid change was in force {took:?} after the file was replaced");
}

/// One audit record per change, the refused one with its errors.
fn assert_policy_records(stopped: &Stopped) {
    let changes: Vec<(&str, &str, u64)> = stopped
        .policy_events
        .iter()
        .map(|event| {
            (
                event["event"]["action"].as_str().unwrap_or_default(),
                event["enforcer"]["policy"]["trigger"]
                    .as_str()
                    .unwrap_or_default(),
                event["enforcer"]["policy"]["generation"]
                    .as_u64()
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("policy-applied", "start", 1),
            ("policy-applied", "watch", 2),
            ("policy-rejected", "watch", 2),
            ("policy-applied", "watch", 3),
            ("policy-applied", "sighup", 4),
        ],
        "{:#?}",
        stopped.policy_events
    );
    let rejected = &stopped.policy_events[2];
    let message = rejected["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("policy.yaml:") && message.contains("filez"),
        "the error names the file, line and field: {rejected:#}"
    );
}

/// What the containers run between the changes were refused or allowed.
fn assert_decisions(stopped: &Stopped) {
    let decisions: Vec<(&str, &str)> = stopped
        .events
        .iter()
        .map(|event| {
            (
                event["rule"]["name"].as_str().unwrap_or_default(),
                event["enforcer"]["decision"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let enforced = if stopped.stderr.contains("backend=lsm") {
        "blocked"
    } else {
        "killed"
    };
    assert_eq!(
        decisions,
        [
            ("first", enforced),
            ("second", enforced),
            ("second", enforced),
            ("first", "audit"),
            ("second", enforced),
        ],
        "{:#?}",
        stopped.events
    );
}

#[test]
fn vshields_cover_images_that_appear_after_the_agent_started() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let scratch = Scratch::new("late-image").expect("scratch");
    let policy = scratch.path().join("policy.yaml");
    fs::write(&policy, vshield("late", "enforce", "/opt/late/busybox"))
        .expect("writing the policy");
    // Where the harness builds images (see `Scratch`), as an image store.
    let store = std::env::temp_dir()
        .join(format!("enforcer-test-{}-image-*", std::process::id()))
        .display()
        .to_string();
    let agent = start(&[
        "--policy",
        &policy.display().to_string(),
        "--image-store",
        &store,
    ]);
    assert!(
        agent.log().contains("vShield matches no file yet"),
        "{}",
        agent.log()
    );
    let before = agent.log().matches(LOOKED_UP).count();
    // An image pulled after the agent started.
    let image = Image::busybox().expect("building the image");
    let dir = image.root().join("opt/late");
    fs::create_dir_all(&dir).expect("creating /opt/late");
    fs::copy(image.root().join("bin/busybox"), dir.join("busybox")).expect("adding the program");
    wait(&agent, LOOKED_UP, before + 1);
    // The store is watched, not each layer: on a loaded machine the program
    // may land after the first look, and the second look (30 s later) finds
    // it.
    assert!(
        agent.wait_for_log("vShield in force", 1, Duration::from_secs(45)),
        "the late image's program was not found; log:\n{}",
        agent.log()
    );
    let run = container::run(&image, "/opt/late/busybox echo late-ran; true")
        .expect("running the container");
    let stopped = agent.stop().expect("stopping the agent");
    assert!(!run.stdout.contains("late-ran"), "{}", stopped.stderr);
    let names: Vec<&str> = stopped
        .events
        .iter()
        .filter_map(|event| event["rule"]["name"].as_str())
        .collect();
    assert_eq!(names, ["late"], "{:#?}", stopped.events);
}
