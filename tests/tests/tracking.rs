//! Drift on container roots that are not overlayfs (btrfs or zfs
//! snapshotters, bind-mounted directories): no upper layer records what the
//! container changed, so the agent tracks what container processes write,
//! make executable, rename or link. LSM only.

use std::{fs, os::unix::fs::PermissionsExt as _};

use enforcer_tests::{
    container::{self, Image, PlainRoot, Root, Run},
    require,
    scenario::{clean_exit_events, start, start_lsm},
    serial,
};
use serde_json::Value;

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

#[test]
fn on_a_root_that_is_not_overlayfs_what_the_container_writes_is_drift() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let Some(agent) = start_lsm(&[]) else {
        return;
    };
    assert!(
        agent.log().contains("made executable, renamed or linked"),
        "{}",
        agent.log()
    );
    let image = image();
    let root = PlainRoot::new(&image).expect("plain root");
    let run = container::run_in(&Root::Plain(&root), &[], SCRIPT).expect("running the container");
    let stopped = agent.stop().unwrap();

    // Only image binaries that nobody touched ran.
    assert_eq!(
        lines(&run),
        ["image-ran", "dropped-rc=126", "image-still-ran"],
        "{run:#?}\n{}",
        stopped.stderr
    );
    let events = clean_exit_events(&stopped);
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
    let Some(agent) = start_lsm(&[]) else {
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
    if !require::root() {
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
