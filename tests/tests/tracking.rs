//! Drift on container roots that are not overlayfs (btrfs or zfs
//! snapshotters, bind-mounted directories): no upper layer records what the
//! container changed, so the agent tracks what container processes write,
//! make executable, rename or link. LSM only.
//!
//! The tracking programs are attached when they are needed: with
//! `--track-writes auto` (the default) once a container runs from such a
//! root, found at start-up or reported by the kernel at its first program.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{
    container::{self, Image, PlainRoot, Root, Run, Scratch, Volume},
    require,
    scenario::{clean_exit_events, start, start_lsm},
    serial,
};
use serde_json::Value;

/// What the agent logs when it attaches the tracking programs.
const ATTACHED: &str = "tracking writes on container roots that are not overlayfs";

/// An image with a data file that has the content of a program but no
/// execute bit, and a second program to rename.
fn image() -> Image {
    let image = Image::busybox().expect("building the image");
    let bin = image.root().join("bin");
    fs::copy(bin.join("busybox"), bin.join("busybox-data")).expect("adding a data file");
    fs::set_permissions(bin.join("busybox-data"), fs::Permissions::from_mode(0o644))
        .expect("chmod");
    fs::copy(bin.join("busybox"), bin.join("busybox-spare")).expect("adding a program");
    image
}

/// Each drift attempt in a row, each echoing its marker if it ran.
const SCRIPT: &str = "/bin/echo image-ran
    cp /bin/busybox /tmp/busybox-dropped
    /tmp/busybox-dropped echo dropped-ran
    echo dropped-rc=$?
    printf '#!/bin/sh\\necho script-ran\\n' > /tmp/dropped.sh
    chmod +x /tmp/dropped.sh
    /tmp/dropped.sh
    chmod +x /bin/busybox-data
    /bin/busybox-data echo chmod-ran
    mv /bin/busybox-spare /bin/busybox-moved
    /bin/busybox-moved echo moved-ran
    /bin/echo image-still-ran";

fn lines(run: &Run) -> Vec<&str> {
    run.stdout.lines().collect()
}

/// Checks [`SCRIPT`]'s output and events: every drift attempt refused.
fn assert_all_refused(run: &Run, events: &[&Value]) {
    assert_eq!(
        lines(run),
        ["image-ran", "dropped-rc=126", "image-still-ran"],
        "{run:#?}"
    );
    let names: Vec<_> = events
        .iter()
        .map(|event| event["file"]["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            Some("busybox-dropped"),
            Some("dropped.sh"),
            Some("busybox-data"),
            Some("busybox-moved")
        ],
        "{events:#?}"
    );
}

/// Waits until `found` holds.
fn wait_for(what: &str, found: impl Fn() -> bool) {
    let started = Instant::now();
    while !found() {
        assert!(
            started.elapsed() < require::patience(Duration::from_mins(1)),
            "waited in vain for {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A volume through which the test tells the container to go on.
fn sync_volume(dir: &Path) -> Volume {
    Volume {
        host: dir.to_owned(),
        at: "/sync".to_owned(),
        read_only: false,
    }
}

/// [`SCRIPT`], after the container has run a program, said so in
/// `/sync/started`, and seen `/sync/go`.
/// Tells the container to go on when dropped: also when the test fails
/// before, so the container ends at once instead of at its deadline.
struct Go<'a>(&'a Path);

impl Drop for Go<'_> {
    fn drop(&mut self) {
        let _ = fs::write(self.0.join("go"), "");
    }
}

fn script_after_go() -> String {
    format!(
        "/bin/echo started > /sync/started
        while [ ! -e /sync/go ]; do /bin/sleep 1; done
        {SCRIPT}"
    )
}

#[test]
fn auto_tracking_starts_when_a_container_first_runs_a_program() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let Some(agent) = start_lsm(&[]) else {
        return;
    };
    assert!(
        agent
            .log()
            .contains("no container runs from a root that is not overlayfs")
            && !agent.log().contains(ATTACHED),
        "{}",
        agent.log()
    );
    let image = image();
    let root = PlainRoot::new(&image).expect("plain root");
    let sync = Scratch::new("sync").unwrap();
    let volumes = [sync_volume(sync.path())];
    let run = thread::scope(|scope| {
        let container =
            scope.spawn(|| container::run_in(&Root::Plain(&root), &volumes, &script_after_go()));
        let go = Go(sync.path());
        // The container's first program (its shell) makes the kernel ask for
        // tracking.
        wait_for("tracking to start", || agent.log().contains(ATTACHED));
        drop(go);
        container.join().unwrap().expect("running the container")
    });
    let stopped = agent.stop().unwrap();
    let log_line = stopped
        .stderr
        .lines()
        .find(|line| line.contains(ATTACHED))
        .unwrap_or_default();
    assert!(
        log_line.contains("runs from a tmpfs root"),
        "{}",
        stopped.stderr
    );
    assert_all_refused(&run, &clean_exit_events(&stopped));
}

#[test]
fn auto_tracking_starts_at_once_for_a_container_that_already_runs() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let image = image();
    let root = PlainRoot::new(&image).expect("plain root");
    let sync = Scratch::new("sync").unwrap();
    let volumes = [sync_volume(sync.path())];
    let (agent, run) = thread::scope(|scope| {
        let container =
            scope.spawn(|| container::run_in(&Root::Plain(&root), &volumes, &script_after_go()));
        let go = Go(sync.path());
        wait_for("the container", || sync.path().join("started").exists());
        let agent = start_lsm(&[]);
        if let Some(agent) = &agent {
            assert!(
                agent.log().contains(ATTACHED) && agent.log().contains("a running container"),
                "{}",
                agent.log()
            );
        }
        drop(go);
        (
            agent,
            container.join().unwrap().expect("running the container"),
        )
    });
    let Some(agent) = agent else {
        return;
    };
    let stopped = agent.stop().unwrap();
    assert_all_refused(&run, &clean_exit_events(&stopped));
}

#[test]
fn auto_tracking_stays_off_while_every_container_root_is_overlayfs() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let Some(agent) = start_lsm(&[]) else {
        return;
    };
    let run = container::run(
        &image(),
        "/bin/echo image-ran; cp /bin/busybox /tmp/x; /tmp/x true",
    )
    .expect("running the container");
    assert_eq!(lines(&run), ["image-ran"], "{run:#?}");
    // Give a notice, had one been sent, the time to arrive.
    thread::sleep(Duration::from_secs(1));
    let stopped = agent.stop().unwrap();
    assert!(!stopped.stderr.contains(ATTACHED), "{}", stopped.stderr);
    assert_eq!(clean_exit_events(&stopped).len(), 1);
}

#[test]
fn never_leaves_roots_that_are_not_overlayfs_untracked() {
    let _serial = serial();
    if !require::root() || !require::not_other_kernel("the agent attaches no tracking") {
        return;
    }
    let Some(agent) = start_lsm(&["--track-writes", "never"]) else {
        return;
    };
    assert!(
        agent.log().contains("NOT TRACKED") && agent.log().contains("--track-writes never"),
        "{}",
        agent.log()
    );
    let image = image();
    let root = PlainRoot::new(&image).expect("plain root");
    let run = container::run_in(&Root::Plain(&root), &[], SCRIPT).expect("running the container");
    let stopped = agent.stop().unwrap();
    assert!(lines(&run).contains(&"dropped-ran"), "{run:#?}");
    assert!(!stopped.stderr.contains(ATTACHED), "{}", stopped.stderr);
    assert_eq!(clean_exit_events(&stopped), Vec::<&Value>::new());
}

#[test]
fn on_a_root_that_is_not_overlayfs_what_the_container_writes_is_drift() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let Some(agent) = start_lsm(&["--track-writes", "always"]) else {
        return;
    };
    assert!(
        agent.log().contains(ATTACHED) && agent.log().contains("--track-writes always"),
        "{}",
        agent.log()
    );
    let image = image();
    let root = PlainRoot::new(&image).expect("plain root");
    let run = container::run_in(&Root::Plain(&root), &[], SCRIPT).expect("running the container");
    let stopped = agent.stop().unwrap();

    // Only image binaries that nobody touched ran.
    let events = clean_exit_events(&stopped);
    assert_all_refused(&run, &events);
    for event in events {
        assert_eq!(event["enforcer"]["layer"], "written", "{event:#}");
        assert_eq!(event["enforcer"]["decision"], "blocked", "{event:#}");
        assert_eq!(event["enforcer"]["via"], "exec", "{event:#}");
    }
}

#[test]
fn a_hard_link_marks_the_linked_file() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let Some(agent) = start_lsm(&["--track-writes", "always"]) else {
        return;
    };
    let image = image();
    let root = PlainRoot::new(&image).expect("plain root");
    // Linking gives the image file a second name the container chose: both
    // names are the same file, and it is drift from then on.
    let script = "/bin/busybox-spare echo before-link
        /bin/busybox ln /bin/busybox-spare /tmp/busybox-linked
        /tmp/busybox-linked echo linked-ran
        /bin/busybox-spare echo spare-ran";
    let run = container::run_in(&Root::Plain(&root), &[], script).expect("running the container");
    let stopped = agent.stop().unwrap();
    assert_eq!(lines(&run), ["before-link"], "{run:#?}");
    let events = clean_exit_events(&stopped);
    assert_eq!(events.len(), 2, "{events:#?}");
    for event in events {
        assert_eq!(event["enforcer"]["layer"], "written", "{event:#}");
    }
}

#[test]
fn the_signal_backend_does_not_track_writes() {
    let _serial = serial();
    if !require::root() || !require::not_other_kernel("the signal backend attaches no tracking") {
        return;
    }
    // Tracking needs LSM hooks on file_open, path_chmod, inode_rename and
    // inode_link. The start-up log warns; this pins what it says.
    let agent = start(&["--backend", "signal"]);
    assert!(
        agent.log().contains("NOT TRACKED") && agent.log().contains("are not tracked"),
        "{}",
        agent.log()
    );
    let image = image();
    let root = PlainRoot::new(&image).expect("plain root");
    let run = container::run_in(&Root::Plain(&root), &[], SCRIPT).expect("running the container");
    let stopped = agent.stop().unwrap();
    let output = lines(&run);
    for ran in ["dropped-ran", "script-ran", "chmod-ran", "moved-ran"] {
        assert!(output.contains(&ran), "{ran}: {run:#?}");
    }
    assert_eq!(clean_exit_events(&stopped), Vec::<&Value>::new());
}
