//! `--allow-path`: drift files whose path in the container matches a glob
//! may run; everything else stays drift, including the tricks that make a
//! file *look* like it is somewhere else (symlinks, chroot).
//!
//! The lsm tests need BPF LSM (the VMs of `cargo xtask test`); the signal
//! tests also run on the host kernel.

use std::path::Path;

use enforcer_tests::{
    agent::{Agent, Stopped},
    container::{self, Image, PlainRoot, Root, Run, Scratch, Volume},
    require,
    scenario::{clean_exit_events, run_under, start, start_lsm},
    serial,
};
use serde_json::Value;

const PROBE: &str = env!("CARGO_BIN_EXE_probe");

const ALLOWED: &[&str] = &[
    "--allow-path",
    "/opt/plugins/*",
    "--allow-path",
    "/vol/tools/**",
    "--allow-path",
    "/dev/shm/busybox-ok*",
];

/// Each dropped copy of busybox has a name starting with "busybox", so that
/// if it runs, busybox takes its first argument as the applet.
const EXEC_SCRIPT: &str = "
    /bin/busybox mkdir -p /opt/plugins/sub /vol/tools/a/b /tmp/jail/opt/plugins
    cp /bin/busybox /opt/plugins/busybox-plugin
    /opt/plugins/busybox-plugin echo plugin-ran
    cp /bin/busybox /vol/tools/a/b/busybox-tool
    /vol/tools/a/b/busybox-tool echo volume-tool-ran
    cp /bin/busybox /dev/shm/busybox-ok
    /dev/shm/busybox-ok echo shm-ok-ran
    cp /bin/busybox /opt/plugins/sub/busybox-deep
    /opt/plugins/sub/busybox-deep echo deep-ran
    cp /bin/busybox /tmp/busybox-elsewhere
    /tmp/busybox-elsewhere echo elsewhere-ran
    ln -s /tmp/busybox-elsewhere /opt/plugins/busybox-symlink
    /opt/plugins/busybox-symlink echo symlink-ran
    cp /bin/busybox /tmp/jail/opt/plugins/busybox-jailed
    /bin/busybox chroot /tmp/jail /opt/plugins/busybox-jailed echo chroot-ran
    /bin/echo image-ran";

fn image() -> Image {
    Image::with_dynamic(Path::new(PROBE), "probe").expect("building the image")
}

/// A writable volume at /vol.
fn volume() -> (Scratch, Vec<Volume>) {
    let scratch = Scratch::new("volume-allow").expect("volume");
    let list = vec![Volume {
        host: scratch.path().to_owned(),
        at: "/vol".to_owned(),
        read_only: false,
    }];
    (scratch, list)
}

/// `(file.name, enforcer.layer)` of each drift event, after checking its
/// backend and decision.
fn refused<'a>(stopped: &'a Stopped, backend: &str, decision: &str) -> Vec<(&'a str, &'a str)> {
    clean_exit_events(stopped)
        .into_iter()
        .map(|event: &Value| {
            assert_eq!(event["enforcer"]["backend"], backend, "{event:#}");
            assert_eq!(event["enforcer"]["decision"], decision, "{event:#}");
            (
                event["file"]["name"].as_str().unwrap_or_default(),
                event["enforcer"]["layer"].as_str().unwrap_or_default(),
            )
        })
        .collect()
}

fn check_exec_run(run: &Run, stopped: &Stopped, backend: &str, decision: &str) {
    let output: Vec<&str> = run.stdout.lines().collect();
    for ran in ["plugin-ran", "volume-tool-ran", "shm-ok-ran", "image-ran"] {
        assert!(output.contains(&ran), "{ran} missing: {run:#?}");
    }
    for refused in ["deep-ran", "elsewhere-ran", "symlink-ran", "chroot-ran"] {
        assert!(!output.contains(&refused), "{refused}: {run:#?}");
    }
    assert_eq!(
        refused(stopped, backend, decision),
        [
            // `*` stays within one path component.
            ("busybox-deep", "overlay-upper"),
            ("busybox-elsewhere", "overlay-upper"),
            // The kernel runs the symlink's target, which is not allowed.
            ("busybox-elsewhere", "overlay-upper"),
            // The path is the one in the container's mount namespace, not
            // the one below a chroot.
            ("busybox-jailed", "overlay-upper"),
        ],
        "agent log:\n{}",
        stopped.stderr
    );
    assert!(
        stopped.stderr.contains("drift_allowed_by_path=3"),
        "three execs allowed by path: {}",
        stopped.stderr
    );
}

#[test]
fn lsm_runs_drift_only_from_allowed_paths() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let Some(agent) = start_lsm(ALLOWED) else {
        return;
    };
    let (_volume, volumes) = volume();
    let (run, stopped) = run_under(agent, &image(), &volumes, EXEC_SCRIPT);
    check_exec_run(&run, &stopped, "lsm", "blocked");
}

#[test]
fn signal_backend_runs_drift_only_from_allowed_paths() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let mut args = vec!["--backend", "signal"];
    args.extend(ALLOWED);
    let (_volume, volumes) = volume();
    let (run, stopped) = run_under(start(&args), &image(), &volumes, EXEC_SCRIPT);
    check_exec_run(&run, &stopped, "signal", "killed");
}

#[test]
fn libraries_load_only_from_allowed_paths() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let Some(agent) = start_lsm(&["--allow-path", "/opt/plugins/*.so"]) else {
        return;
    };
    let image = image();
    let library = image.library("libgcc_s").expect("the image has libgcc_s");
    let script = format!(
        "/bin/busybox mkdir -p /opt/plugins
        cp {library} /opt/plugins/libok.so
        cp {library} /opt/plugins/libno.so.1
        /bin/probe dlopen /opt/plugins/libok.so
        /bin/probe dlopen /opt/plugins/libno.so.1
        LD_PRELOAD=/opt/plugins/libok.so /bin/probe say preload-ran"
    );
    let (run, stopped) = run_under(agent, &image, &[], &script);
    let output: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(output[0], "dlopen: ok", "{run:#?}");
    assert!(
        output[1].starts_with("dlopen: /opt/plugins/libno.so.1: failed to map segment"),
        "{run:#?}"
    );
    assert_eq!(output[2], "preload-ran", "{run:#?}");
    assert!(!run.stderr.contains("cannot be preloaded"), "{run:#?}");
    assert_eq!(
        refused(&stopped, "lsm", "blocked"),
        [("libno.so.1", "overlay-upper")]
    );
}

#[test]
fn files_written_on_a_root_that_is_not_overlayfs_run_from_allowed_paths() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let Some(agent) = start_lsm(&[
        "--track-writes",
        "always",
        "--allow-path",
        "/usr/local/bin/*",
    ]) else {
        return;
    };
    let image = Image::busybox().expect("building the image");
    let root = PlainRoot::new(&image).expect("plain root");
    let script = "/bin/busybox mkdir -p /usr/local/bin
        cp /bin/busybox /usr/local/bin/busybox-local
        /usr/local/bin/busybox-local echo local-ran
        cp /bin/busybox /tmp/busybox-tmp
        /tmp/busybox-tmp echo tmp-ran";
    let run = container::run_in(&Root::Plain(&root), &[], script).expect("running the container");
    let stopped = agent.stop().expect("stopping the agent");
    let output: Vec<&str> = run.stdout.lines().collect();
    assert!(output.contains(&"local-ran"), "{run:#?}");
    assert!(!output.contains(&"tmp-ran"), "{run:#?}");
    assert_eq!(
        refused(&stopped, "lsm", "blocked"),
        [("busybox-tmp", "written")]
    );
}

#[test]
fn an_invalid_allowed_path_is_refused_at_start_with_the_glob_named() {
    let _serial = serial();
    if !require::not_other_kernel("globs are checked before anything is loaded") {
        return;
    }
    for (glob, says) in [
        ("opt/plugins/*", "is not absolute"),
        ("/opt/[plugins", "is not a valid glob"),
    ] {
        let failure = Agent::start(&["--allow-path", glob])
            .map(|agent| {
                let _ = agent.stop();
            })
            .expect_err("the agent must refuse an invalid glob");
        assert!(
            failure.stderr.contains(&format!("allowed path \"{glob}\""))
                && failure.stderr.contains(says),
            "{glob}: {}",
            failure.stderr
        );
        assert_eq!(failure.status.and_then(|status| status.code()), Some(1));
    }
}
