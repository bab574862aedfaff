//! Drift prevention end to end: the real agent, the real kernel, a real
//! overlayfs container. Runs on the host kernel (signal backend) and, through
//! `cargo xtask test`, inside VMs booted with BPF LSM (lsm backend).

use std::{
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::Path,
    process::Command,
};

use enforcer_tests::{
    agent::{Agent, Stopped},
    container::{self, Image, Run, Scratch},
    require::{self, Requirement},
    scenario::{drift_events, single_drift_event, start, start_lsm},
    serial,
};
use serde_json::Value;

const DROPPED: &str = "/tmp/busybox-dropped";

/// An image binary runs; a copy of it is dropped into the container (so it
/// lives in the upper layer) and executed; image binaries run afterwards.
/// The copy's name starts with "busybox" so that, if it ever runs, busybox
/// treats its first argument as the applet and prints `dropped-ran`.
const SCENARIO: &str = r#"
/bin/echo image-ok
cp /bin/busybox /tmp/busybox-dropped
echo "dropped-ino=$(stat -c %i /tmp/busybox-dropped)"
/tmp/busybox-dropped echo dropped-ran
echo "dropped-rc=$?"
/bin/echo image-still-ok
"#;

fn assert_image_binaries_ran(run: &Run) {
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines.contains(&"image-ok"),
        "image binary did not run: {run:#?}"
    );
    assert!(
        lines.contains(&"image-still-ok"),
        "image binary did not run after the drift: {run:#?}"
    );
}

fn own_mount_ns() -> u64 {
    fs::metadata("/proc/self/ns/mnt")
        .expect("own mount namespace")
        .ino()
}

/// The event names the dropped file, the process and the container.
fn assert_event_describes_the_drift(event: &Value, run: &Run) {
    assert_eq!(event["file"]["path"], DROPPED, "{event:#}");
    assert_eq!(event["process"]["executable"], DROPPED, "{event:#}");
    assert_eq!(
        event["file"]["inode"].as_str(),
        run.value("dropped-ino"),
        "inode in the event vs stat in the container: {event:#}"
    );
    assert_eq!(event["enforcer"]["reason"], "drift");
    assert_eq!(event["enforcer"]["layer"], "overlay-upper");
    assert_eq!(event["event"]["kind"], "alert");
    assert_eq!(event["user"]["id"], "0");
    assert!(
        event["process"]["pid"].as_u64().is_some_and(|pid| pid > 1),
        "{event:#}"
    );
    assert!(
        event["process"]["parent"]["pid"]
            .as_u64()
            .is_some_and(|pid| pid > 0),
        "{event:#}"
    );
    assert!(
        !event["process"]["name"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{event:#}"
    );
    // The kernel recorded the lineage while the exec was decided: the
    // script's shell, the first process of the container's mount namespace
    // (its parent, this test, is outside). The harness shares the host's pid
    // namespace, where pid 1 is not the container's: no session is claimed.
    let process = &event["process"];
    assert_eq!(process["parent"]["name"], "sh", "{event:#}");
    assert_eq!(
        process["entry_leader"]["pid"], process["parent"]["pid"],
        "{event:#}"
    );
    assert_eq!(
        event["enforcer"]["lineage"].as_array().map(Vec::len),
        Some(1),
        "{event:#}"
    );
    assert!(event["enforcer"]["session"].is_null(), "{event:#}");
    assert!(
        event["@timestamp"]
            .as_str()
            .is_some_and(|t| t.starts_with("20") && t.ends_with('Z')),
        "{event:#}"
    );
    let mnt_ns = event["enforcer"]["mount_namespace"]
        .as_u64()
        .expect("mount_namespace");
    assert_ne!(
        mnt_ns,
        own_mount_ns(),
        "the container has its own mount namespace"
    );
    if let Some(cgroup_id) = run.cgroup_id {
        assert_eq!(event["enforcer"]["cgroup_id"], cgroup_id, "{event:#}");
    }
    // The harness names the container's group as Podman does.
    if let Some(container_id) = &run.container_id {
        assert_eq!(event["container"]["id"], *container_id, "{event:#}");
        assert_eq!(event["container"]["runtime"], "podman", "{event:#}");
    }
}

/// What the one drift event of a scenario run must say.
struct Expected<'a> {
    decision: &'a str,
    backend: &'a str,
    action: &'a str,
    outcome: &'a str,
}

/// Runs [`SCENARIO`] in a fresh container while `agent` enforces, stops the
/// agent with `signal`, and checks what every backend and mode has in common:
/// image binaries ran, the agent exited 0, and exactly one event describes
/// the drift as `expected`.
fn run_scenario(agent: Agent, signal: libc::c_int, expected: &Expected<'_>) -> (Run, Stopped) {
    let image = Image::busybox().expect("building the image");
    let run = container::run(&image, SCENARIO).expect("running the container");
    let stopped = agent.stop_with(signal).expect("stopping the agent");
    assert_image_binaries_ran(&run);
    let event = single_drift_event(&stopped);
    assert_eq!(
        event["enforcer"]["decision"], expected.decision,
        "{event:#}"
    );
    assert_eq!(event["enforcer"]["backend"], expected.backend, "{event:#}");
    assert_eq!(event["event"]["action"], expected.action, "{event:#}");
    assert_eq!(event["event"]["outcome"], expected.outcome, "{event:#}");
    assert_event_describes_the_drift(event, &run);
    (run, stopped)
}

#[test]
fn signal_backend_kills_a_dropped_binary_before_it_runs() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let agent = start(&["--backend", "signal"]);
    let expected = Expected {
        decision: "killed",
        backend: "signal",
        action: "exec-killed",
        outcome: "failure",
    };
    let (run, _) = run_scenario(agent, libc::SIGTERM, &expected);
    assert!(
        !run.stdout.contains("dropped-ran"),
        "the dropped binary ran: {run:#?}"
    );
    // 128 + SIGKILL: killed before printing anything.
    assert_eq!(run.value("dropped-rc"), Some("137"), "{run:#?}");
}

#[test]
fn lsm_backend_refuses_a_dropped_binary_with_eperm() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let Some(agent) = start_lsm(&[]) else {
        return;
    };
    let expected = Expected {
        decision: "blocked",
        backend: "lsm",
        action: "exec-denied",
        outcome: "failure",
    };
    let (run, _) = run_scenario(agent, libc::SIGTERM, &expected);
    assert!(
        !run.stdout.contains("dropped-ran"),
        "the dropped binary ran: {run:#?}"
    );
    // The exec itself failed with EPERM (not EACCES): the shell reports 126.
    assert_eq!(run.value("dropped-rc"), Some("126"), "{run:#?}");
    assert!(
        run.stderr
            .contains("/tmp/busybox-dropped: Operation not permitted"),
        "{run:#?}"
    );
}

#[test]
fn audit_mode_reports_drift_without_blocking_it() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let agent = start(&["--mode", "audit"]);
    let backend = if agent.log().contains("backend=lsm") {
        "lsm"
    } else {
        "signal"
    };
    assert!(
        backend == "lsm" || !Requirement::Lsm.is_required(),
        "BPF LSM is required but auto chose signal:\n{}",
        agent.log()
    );
    let expected = Expected {
        decision: "audit",
        backend,
        action: "exec-audited",
        outcome: "success",
    };
    // SIGINT (Ctrl-C) must shut down as cleanly as SIGTERM: exit 0, events flushed.
    let (run, stopped) = run_scenario(agent, libc::SIGINT, &expected);
    assert!(
        stopped.stderr.contains("signal=\"SIGINT\""),
        "{}",
        stopped.stderr
    );
    assert!(
        run.stdout.contains("dropped-ran"),
        "audit mode blocked: {run:#?}"
    );
    assert_eq!(run.value("dropped-rc"), Some("0"), "{run:#?}");
}

#[test]
fn auto_backend_uses_lsm_or_says_why_not() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let stopped = start(&[]).stop().unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let ready = stopped
        .stderr
        .lines()
        .find(|line| line.contains("enforcer ready"))
        .expect("ready line");
    if ready.contains("backend=lsm") {
        return;
    }
    assert!(ready.contains("backend=signal"), "{ready}");
    assert!(
        !Requirement::Lsm.is_required(),
        "BPF LSM is required but auto fell back:\n{}",
        stopped.stderr
    );
    let warning = stopped
        .stderr
        .lines()
        .find(|line| line.contains("falling back to the signal backend"))
        .unwrap_or_else(|| panic!("no fallback warning:\n{}", stopped.stderr));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("reason="),
        "the warning must say why: {warning}"
    );
}

/// An overlay mounted in the host's own mount namespace, for host processes.
struct HostOverlay {
    _scratch: Scratch,
    tmpfs: CString,
    merged: CString,
    merged_path: std::path::PathBuf,
}

impl HostOverlay {
    fn mount(lower: &Path) -> anyhow::Result<Self> {
        let scratch = Scratch::new("host-overlay")?;
        let base = scratch.path().join("tmpfs");
        let merged_path = scratch.path().join("merged");
        fs::create_dir_all(&base)?;
        fs::create_dir_all(&merged_path)?;
        let c = |path: &Path| CString::new(path.as_os_str().as_bytes());
        let tmpfs = c(&base)?;
        let merged = c(&merged_path)?;
        // Upper and work must not be on overlayfs (the VM's /tmp is).
        // SAFETY: valid NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                tmpfs.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        anyhow::ensure!(rc == 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        let overlay = Self {
            _scratch: scratch,
            tmpfs,
            merged,
            merged_path,
        };
        fs::create_dir(base.join("upper"))?;
        fs::create_dir(base.join("work"))?;
        let options = CString::new(format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            base.join("upper").display(),
            base.join("work").display()
        ))?;
        // SAFETY: valid NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                c"overlay".as_ptr(),
                overlay.merged.as_ptr(),
                c"overlay".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        anyhow::ensure!(
            rc == 0,
            "mount overlay: {}",
            std::io::Error::last_os_error()
        );
        Ok(overlay)
    }
}

impl Drop for HostOverlay {
    fn drop(&mut self) {
        // SAFETY: valid NUL-terminated strings; lazy unmount cannot fail on
        // a mount point.
        unsafe {
            libc::umount2(self.merged.as_ptr(), libc::MNT_DETACH);
            libc::umount2(self.tmpfs.as_ptr(), libc::MNT_DETACH);
        }
    }
}

#[test]
fn host_processes_are_never_subject_to_drift_rules() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let image = Image::busybox().unwrap();
    let overlay = HostOverlay::mount(image.root()).unwrap();
    let dropped = overlay.merged_path.join("tmp/busybox-host-copy");
    fs::copy("/bin/busybox", &dropped).unwrap();

    let agent = start(&[]);
    let output = Command::new(&dropped)
        .args(["echo", "host-ran"])
        .output()
        .unwrap();
    let stopped = agent.stop().unwrap();

    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("host-ran"),
        "a host process running an upper-layer file was stopped: {output:?}"
    );
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_eq!(
        drift_events(&stopped),
        Vec::<&Value>::new(),
        "{}",
        stopped.stderr
    );
}

#[test]
fn agent_refuses_to_start_when_the_kernel_layout_cannot_be_resolved() {
    let _serial = serial();
    if !require::root() || !require::not_other_kernel("a BTF file of no types") {
        return;
    }
    // A valid BTF blob that defines no types at all: header + empty string
    // section.
    let scratch = Scratch::new("btf").unwrap();
    let btf = scratch.path().join("empty.btf");
    let mut blob = Vec::new();
    blob.extend(0xeb9f_u16.to_le_bytes()); // magic
    blob.extend([1, 0]); // version, flags
    for field in [24_u32, 0, 0, 0, 1] {
        // hdr_len, type_off, type_len, str_off, str_len
        blob.extend(field.to_le_bytes());
    }
    blob.push(0);
    fs::write(&btf, blob).unwrap();

    let failure =
        Agent::start(&["--btf", btf.to_str().unwrap()]).expect_err("agent must refuse to start");
    assert_eq!(failure.status.and_then(|s| s.code()), Some(1), "{failure}");
    assert!(failure.stderr.contains("refusing to start"), "{failure}");
    assert!(
        failure.stderr.contains("linux_binprm"),
        "the error must name the missing struct or field: {failure}"
    );
}
