//! Drift that does not come as a plain exec of a dropped file: execveat,
//! scripts, the dynamic loader, preloaded and dlopened libraries, mprotect,
//! memfd, writable mounts, renames and links, modified image files. And the
//! other side: image programs and host services keep working.
//!
//! The lsm tests need BPF LSM (the VMs of `cargo xtask test`); the signal
//! tests also run on the host kernel.

use std::{
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::Path,
    process::Command,
};

use enforcer_tests::{
    agent::{Agent, Stopped},
    container::{Image, Run, Scratch, Volume},
    require,
    scenario::{clean_exit_events, run_under, start, start_lsm},
    serial,
};
use serde_json::Value;

const PROBE: &str = env!("CARGO_BIN_EXE_probe");

/// busybox, plus `/bin/probe`: a dynamically linked program with its glibc,
/// `libgcc_s` and dynamic loader, as in a typical distribution image.
fn image() -> Image {
    Image::with_dynamic(Path::new(PROBE), "probe").expect("building the image")
}

fn loader(image: &Image) -> &str {
    image
        .library("ld-linux")
        .expect("the image has a dynamic loader")
}

fn lines(run: &Run) -> Vec<&str> {
    run.stdout.lines().collect()
}

/// The drift events, each checked for what every drift event must say.
fn events<'a>(stopped: &'a Stopped, backend: &str) -> Vec<&'a Value> {
    let events = clean_exit_events(stopped);
    for event in &events {
        assert_eq!(event["enforcer"]["backend"], backend, "{event:#}");
        assert_eq!(event["enforcer"]["reason"], "drift", "{event:#}");
        assert_eq!(event["event"]["kind"], "alert", "{event:#}");
        assert!(
            event["process"]["pid"].as_u64().is_some_and(|pid| pid > 1),
            "{event:#}"
        );
    }
    events
}

/// Checks that `event` reports `name` reached `via` from `layer`, decided as
/// `decision`.
fn assert_event(event: &Value, via: &str, layer: &str, name: &str, decision: &str) {
    assert_eq!(event["enforcer"]["via"], via, "{event:#}");
    assert_eq!(event["enforcer"]["layer"], layer, "{event:#}");
    assert_eq!(event["file"]["name"], name, "{event:#}");
    assert_eq!(event["enforcer"]["decision"], decision, "{event:#}");
}

#[test]
fn execveat_of_a_dropped_binary_is_refused() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let script = "cp /bin/busybox /tmp/busybox-dropped
        /bin/probe execveat /tmp/busybox-dropped echo dropped-ran
        echo rc=$?";
    // lsm: the exec fails with EPERM.
    if let Some(agent) = start_lsm(&[]) {
        let (run, stopped) = run_under(agent, &image(), &[], script);
        assert!(!run.stdout.contains("dropped-ran"), "{run:#?}");
        assert!(
            lines(&run).contains(&"execveat: Operation not permitted (os error 1)"),
            "{run:#?}"
        );
        let events = events(&stopped, "lsm");
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_event(
            events[0],
            "exec",
            "overlay-upper",
            "busybox-dropped",
            "blocked",
        );
        // execveat on a descriptor: the kernel names the file /dev/fd/N.
        assert!(
            events[0]["file"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/dev/fd/")),
            "{:#}",
            events[0]
        );
    }
    // signal: the new program is killed before it runs.
    let (run, stopped) = run_under(start(&["--backend", "signal"]), &image(), &[], script);
    assert!(!run.stdout.contains("dropped-ran"), "{run:#?}");
    assert_eq!(run.value("rc"), Some("137"), "{run:#?}");
    let events = events(&stopped, "signal");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_event(
        events[0],
        "exec",
        "overlay-upper",
        "busybox-dropped",
        "killed",
    );
}

#[test]
fn a_dropped_binary_run_after_it_was_deleted_is_refused() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    // Deleting the file leaves no path, but the open descriptor still runs
    // it: the decision is on the inode, which is still an upper-layer one.
    let script = "cp /bin/busybox /tmp/busybox-deleted
        /bin/probe exec-deleted /tmp/busybox-deleted echo deleted-ran
        echo rc=$?
        ls /tmp/busybox-deleted";
    let check = |run: &Run, stopped: &Stopped, backend: &str, decision: &str, rc: &str| {
        assert!(!run.stdout.contains("deleted-ran"), "{run:#?}");
        assert_eq!(run.value("rc"), Some(rc), "{run:#?}");
        assert!(
            run.stderr.contains("No such file"),
            "the file was deleted: {run:#?}"
        );
        let events = events(stopped, backend);
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_event(
            events[0],
            "exec",
            "overlay-upper",
            "busybox-deleted",
            decision,
        );
    };
    if let Some(agent) = start_lsm(&[]) {
        let (run, stopped) = run_under(agent, &image(), &[], script);
        check(&run, &stopped, "lsm", "blocked", "126");
    }
    let (run, stopped) = run_under(start(&["--backend", "signal"]), &image(), &[], script);
    check(&run, &stopped, "signal", "killed", "137");
}

#[test]
fn a_dropped_script_is_refused() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let script = "printf '#!/bin/sh\\necho script-ran\\n' > /tmp/dropped.sh
        chmod +x /tmp/dropped.sh
        /tmp/dropped.sh
        echo rc=$?
        /bin/probe execveat /tmp/dropped.sh
        echo fd-rc=$?
        printf '#!/bin/probe say\\n' > /tmp/dynamic.sh
        chmod +x /tmp/dynamic.sh
        /tmp/dynamic.sh
        echo dynamic-rc=$?";
    // The last script has a dynamically linked interpreter: the exec also
    // opens and releases the dynamic loader.
    let check = |run: &Run, stopped: &Stopped, backend: &str, status: &str, decision: &str| {
        assert!(!run.stdout.contains("script-ran"), "{run:#?}");
        assert!(!run.stdout.contains("/tmp/dynamic.sh"), "{run:#?}");
        for key in ["rc", "fd-rc", "dynamic-rc"] {
            assert_eq!(run.value(key), Some(status), "{key}: {run:#?}");
        }
        let events = events(stopped, backend);
        assert_eq!(events.len(), 3, "{events:#?}");
        assert_event(events[0], "exec", "overlay-upper", "dropped.sh", decision);
        assert_eq!(events[0]["file"]["path"], "/tmp/dropped.sh");
        assert_event(events[1], "exec", "overlay-upper", "dropped.sh", decision);
        assert_event(events[2], "exec", "overlay-upper", "dynamic.sh", decision);
    };
    if let Some(agent) = start_lsm(&[]) {
        let (run, stopped) = run_under(agent, &image(), &[], script);
        check(&run, &stopped, "lsm", "126", "blocked");
        assert!(
            run.stderr
                .contains("/tmp/dropped.sh: Operation not permitted"),
            "{run:#?}"
        );
    }
    // signal: the interpreter is killed before it reads the script, found
    // among the files the exec released; also when run through a descriptor.
    let (run, stopped) = run_under(start(&["--backend", "signal"]), &image(), &[], script);
    check(&run, &stopped, "signal", "137", "killed");
}

#[test]
fn the_dynamic_loader_cannot_run_a_dropped_binary() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let image = image();
    // The loader is an image file and may run; the program it maps may not.
    let script = format!(
        "cp /bin/probe /tmp/tool
        {} /tmp/tool say tool-ran
        echo rc=$?",
        loader(&image)
    );
    if let Some(agent) = start_lsm(&[]) {
        let (run, stopped) = run_under(agent, &image, &[], &script);
        assert!(!run.stdout.contains("tool-ran"), "{run:#?}");
        assert_eq!(run.value("rc"), Some("127"), "{run:#?}");
        assert!(
            run.stderr
                .contains("failed to map segment from shared object"),
            "{run:#?}"
        );
        let events = events(&stopped, "lsm");
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_event(events[0], "mmap", "overlay-upper", "tool", "blocked");
        assert_eq!(events[0]["event"]["category"][0], "library");
        assert!(
            events[0]["file"].get("path").is_none(),
            "mappings have no exec path"
        );
    }
    // signal, with the mmap check: the loader is killed at the mmap of the
    // program's code.
    let agent = start(&["--backend", "signal", "--signal-mmap-check"]);
    let (run, stopped) = run_under(agent, &image, &[], &script);
    assert!(!run.stdout.contains("tool-ran"), "{run:#?}");
    assert_eq!(run.value("rc"), Some("137"), "{run:#?}");
    let events = events(&stopped, "signal");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_event(events[0], "mmap", "overlay-upper", "tool", "killed");
}

#[test]
fn a_dropped_library_cannot_be_preloaded_or_dlopened() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let image = image();
    let library = image.library("libgcc_s").expect("the image has libgcc_s");
    let script = format!(
        "cp {library} /tmp/libdrop.so
        LD_PRELOAD=/tmp/libdrop.so /bin/probe say preloaded-program-ran
        echo preload-rc=$?
        /bin/probe dlopen /tmp/libdrop.so
        echo dlopen-rc=$?
        /bin/probe dlopen {library}"
    );
    if let Some(agent) = start_lsm(&[]) {
        let (run, stopped) = run_under(agent, &image, &[], &script);
        // The loader refuses the preload and runs the program without it.
        assert!(
            run.stderr.contains("/tmp/libdrop.so") && run.stderr.contains("cannot be preloaded"),
            "{run:#?}"
        );
        let output = lines(&run);
        assert!(output.contains(&"preloaded-program-ran"), "{run:#?}");
        assert!(
            output
                .iter()
                .any(|line| line.starts_with("dlopen: /tmp/libdrop.so: failed to map segment")),
            "{run:#?}"
        );
        // The image's own copy of the same library loads.
        assert!(output.contains(&"dlopen: ok"), "{run:#?}");
        let events = events(&stopped, "lsm");
        assert_eq!(events.len(), 2, "{events:#?}");
        for event in events {
            assert_event(event, "mmap", "overlay-upper", "libdrop.so", "blocked");
        }
    }
    // signal, with the mmap check: the process that maps the library is
    // killed before the mapping returns; the image's copy still loads.
    let agent = start(&["--backend", "signal", "--signal-mmap-check"]);
    let (run, stopped) = run_under(agent, &image, &[], &script);
    assert_eq!(
        lines(&run),
        ["preload-rc=137", "dlopen-rc=137", "dlopen: ok"],
        "{run:#?}"
    );
    let events = events(&stopped, "signal");
    assert_eq!(events.len(), 2, "{events:#?}");
    for event in events {
        assert_event(event, "mmap", "overlay-upper", "libdrop.so", "killed");
    }
}

#[test]
fn mprotect_to_executable_of_a_dropped_file_is_refused() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let script = "cp /bin/busybox /tmp/code.bin
        /bin/probe mprotect-exec /tmp/code.bin
        echo rc=$?
        /bin/probe mprotect-exec /bin/busybox";
    if let Some(agent) = start_lsm(&[]) {
        let (run, stopped) = run_under(agent, &image(), &[], script);
        assert_eq!(
            lines(&run),
            [
                "mprotect-exec: Operation not permitted (os error 1)",
                "rc=1",
                "mprotect-exec: ok"
            ],
            "{run:#?}"
        );
        let events = events(&stopped, "lsm");
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_event(
            events[0],
            "mprotect",
            "overlay-upper",
            "code.bin",
            "blocked",
        );
    }
    // signal, with the mmap check, on kernels with bpf_find_vma (5.17+): the
    // process is killed before mprotect returns.
    let agent = start(&["--backend", "signal", "--signal-mmap-check"]);
    let decided = agent
        .log()
        .contains("mprotect adding PROT_EXEC to a mapping of a drift file is decided");
    let (run, stopped) = run_under(agent, &image(), &[], script);
    let events = events(&stopped, "signal");
    if decided {
        assert_eq!(lines(&run), ["rc=137", "mprotect-exec: ok"], "{run:#?}");
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_event(events[0], "mprotect", "overlay-upper", "code.bin", "killed");
    } else {
        // 5.10: the start-up log said so; the route runs.
        assert_eq!(
            lines(&run),
            ["mprotect-exec: ok", "rc=0", "mprotect-exec: ok"],
            "{run:#?}"
        );
        assert_eq!(events, Vec::<&Value>::new());
    }
}

const MEMFD_SCRIPT: &str = "/bin/probe memfd-exec /bin/busybox echo memfd-ran
    echo rc=$?";

#[test]
fn memfd_execution_is_refused_unless_allowed() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    // Even a byte-for-byte copy of an image binary: running from a memfd is
    // fileless execution.
    if let Some(agent) = start_lsm(&[]) {
        let (run, stopped) = run_under(agent, &image(), &[], MEMFD_SCRIPT);
        assert!(!run.stdout.contains("memfd-ran"), "{run:#?}");
        assert!(
            lines(&run).contains(&"memfd-exec: Operation not permitted (os error 1)"),
            "{run:#?}"
        );
        let events = events(&stopped, "lsm");
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_event(events[0], "exec", "memfd", "memfd:probe", "blocked");
    }
    let (run, stopped) = run_under(start(&["--backend", "signal"]), &image(), &[], MEMFD_SCRIPT);
    assert!(!run.stdout.contains("memfd-ran"), "{run:#?}");
    assert_eq!(run.value("rc"), Some("137"), "{run:#?}");
    let events = events(&stopped, "signal");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_event(events[0], "exec", "memfd", "memfd:probe", "killed");

    let (run, stopped) = run_under(start(&["--allow-memfd"]), &image(), &[], MEMFD_SCRIPT);
    assert!(lines(&run).contains(&"memfd-ran"), "{run:#?}");
    assert_eq!(clean_exit_events(&stopped), Vec::<&Value>::new());
}

/// A read-write and a read-only volume, each holding a copy of busybox.
struct Volumes {
    _rw: Scratch,
    _ro: Scratch,
    list: Vec<Volume>,
}

fn volumes() -> Volumes {
    let rw = Scratch::new("volume-rw").expect("volume");
    let ro = Scratch::new("volume-ro").expect("volume");
    fs::copy("/bin/busybox", rw.path().join("busybox-vol")).expect("filling the volume");
    fs::copy("/bin/busybox", ro.path().join("busybox-ro")).expect("filling the volume");
    let list = vec![
        Volume {
            host: rw.path().to_owned(),
            at: "/vol".to_owned(),
            read_only: false,
        },
        Volume {
            host: ro.path().to_owned(),
            at: "/ro".to_owned(),
            read_only: true,
        },
    ];
    Volumes {
        _rw: rw,
        _ro: ro,
        list,
    }
}

const MOUNTS_SCRIPT: &str = "cp /bin/busybox /dev/shm/busybox-shm
    /dev/shm/busybox-shm echo shm-ran
    echo shm-rc=$?
    /vol/busybox-vol echo vol-ran
    echo vol-rc=$?
    /ro/busybox-ro echo ro-ran";

#[test]
fn executables_on_writable_mounts_are_refused_unless_allowed() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let volumes = volumes();
    let check = |run: &Run, stopped: &Stopped, backend: &str, decision: &str, rc: &str| {
        let output = lines(run);
        assert!(
            !output.contains(&"shm-ran") && !output.contains(&"vol-ran"),
            "{run:#?}"
        );
        assert_eq!(run.value("shm-rc"), Some(rc), "{run:#?}");
        assert_eq!(run.value("vol-rc"), Some(rc), "{run:#?}");
        // Read-only mounts cannot have been written from inside.
        assert!(output.contains(&"ro-ran"), "{run:#?}");
        let events = events(stopped, backend);
        assert_eq!(events.len(), 2, "{events:#?}");
        assert_event(events[0], "exec", "writable-mount", "busybox-shm", decision);
        assert_event(events[1], "exec", "writable-mount", "busybox-vol", decision);
    };
    if let Some(agent) = start_lsm(&[]) {
        let (run, stopped) = run_under(agent, &image(), &volumes.list, MOUNTS_SCRIPT);
        check(&run, &stopped, "lsm", "blocked", "126");
    }
    let (run, stopped) = run_under(
        start(&["--backend", "signal"]),
        &image(),
        &volumes.list,
        MOUNTS_SCRIPT,
    );
    check(&run, &stopped, "signal", "killed", "137");

    let (run, stopped) = run_under(
        start(&["--allow-writable-mounts"]),
        &image(),
        &volumes.list,
        MOUNTS_SCRIPT,
    );
    let output = lines(&run);
    for ran in ["shm-ran", "vol-ran", "ro-ran"] {
        assert!(output.contains(&ran), "{ran} missing: {run:#?}");
    }
    assert_eq!(clean_exit_events(&stopped), Vec::<&Value>::new());
}

#[test]
fn renamed_linked_and_modified_files_stay_drift() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    // Appending nothing still copies the image file up: it may have been
    // changed, so it is no longer the image's.
    let script = "cp /bin/busybox /tmp/busybox-copy
        mv /tmp/busybox-copy /tmp/busybox-moved
        ln /tmp/busybox-moved /tmp/busybox-linked
        /tmp/busybox-moved echo moved-ran
        /tmp/busybox-linked echo linked-ran
        cat /dev/null >> /bin/probe
        /bin/probe say modified-ran";
    let check = |run: &Run, stopped: &Stopped, backend: &str, decision: &str| {
        for ran in ["moved-ran", "linked-ran", "modified-ran"] {
            assert!(!run.stdout.contains(ran), "{ran}: {run:#?}");
        }
        let events = events(stopped, backend);
        let names: Vec<_> = events
            .iter()
            .map(|event| event["file"]["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [Some("busybox-moved"), Some("busybox-linked"), Some("probe")],
            "{events:#?}"
        );
        for event in events {
            assert_eq!(event["enforcer"]["layer"], "overlay-upper", "{event:#}");
            assert_eq!(event["enforcer"]["decision"], decision, "{event:#}");
        }
    };
    if let Some(agent) = start_lsm(&[]) {
        let (run, stopped) = run_under(agent, &image(), &[], script);
        check(&run, &stopped, "lsm", "blocked");
    }
    let (run, stopped) = run_under(start(&["--backend", "signal"]), &image(), &[], script);
    check(&run, &stopped, "signal", "killed");
}

#[test]
fn image_programs_libraries_and_scripts_keep_working() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let image = image();
    // A script for the static busybox shell, and one for a dynamically
    // linked interpreter (`probe say` prints the script's path).
    for (name, text) in [
        ("image-script", "#!/bin/sh\necho image-script-ran\n"),
        ("image-dynamic-script", "#!/bin/probe say\n"),
    ] {
        fs::write(image.root().join("bin").join(name), text).unwrap();
        fs::set_permissions(
            image.root().join("bin").join(name),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
    }
    let library = image.library("libgcc_s").expect("the image has libgcc_s");
    // Everything here is the image's own, run every way the bypass tests use.
    let script = format!(
        "/bin/probe say dynamic-ran
        {loader} /bin/probe say loader-ran
        LD_PRELOAD={library} /bin/probe say preload-ran
        /bin/probe dlopen {library}
        /bin/probe mmap-exec /bin/busybox
        /bin/probe mprotect-exec /bin/busybox
        /bin/probe execveat /bin/busybox echo execveat-ran
        /bin/image-script
        /bin/image-dynamic-script
        cat /bin/busybox > /dev/null && echo read-ran",
        loader = loader(&image)
    );
    let expected = [
        "dynamic-ran",
        "loader-ran",
        "preload-ran",
        "dlopen: ok",
        "mmap-exec: ok",
        "mprotect-exec: ok",
        "execveat-ran",
        "image-script-ran",
        "/bin/image-dynamic-script",
        "read-ran",
    ];
    if let Some(agent) = start_lsm(&[]) {
        let (run, stopped) = run_under(agent, &image, &[], &script);
        assert_eq!(lines(&run), expected, "{run:#?}");
        assert_eq!(events(&stopped, "lsm"), Vec::<&Value>::new());
    }
    let agent = start(&["--backend", "signal", "--signal-mmap-check"]);
    let (run, stopped) = run_under(agent, &image, &[], &script);
    assert_eq!(lines(&run), expected, "{run:#?}");
    assert_eq!(events(&stopped, "signal"), Vec::<&Value>::new());
}

/// Runs `program ARGS` in a new mount namespace that keeps the host's root,
/// as systemd runs services with `PrivateTmp=`.
fn run_in_private_mount_ns(program: &Path, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(program);
    command.args(args);
    // SAFETY: unshare(2) only; no allocation between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    command
        .output()
        .expect("running in a private mount namespace")
}

#[test]
fn a_host_service_in_a_private_mount_namespace_is_not_a_container() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    // A writable tmpfs mounted on the host, holding a dropped binary.
    let scratch = Scratch::new("host-tmpfs").unwrap();
    let dir = CString::new(scratch.path().as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            dir.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
    let dropped = scratch.path().join("busybox-host");
    fs::copy("/bin/busybox", &dropped).unwrap();

    // One agent at a time: signal, then lsm where the kernel allows it.
    let starters: [fn() -> Option<Agent>; 2] =
        [|| Some(start(&["--backend", "signal"])), || start_lsm(&[])];
    for agent in starters.into_iter().filter_map(|starter| starter()) {
        let output = run_in_private_mount_ns(&dropped, &["echo", "service-ran"]);
        let stopped = agent.stop().unwrap();
        assert!(
            output.status.success()
                && String::from_utf8_lossy(&output.stdout).contains("service-ran"),
            "a host service with a private mount namespace was stopped: {output:?}\n{}",
            stopped.stderr
        );
        assert_eq!(clean_exit_events(&stopped), Vec::<&Value>::new());
    }
    // SAFETY: valid NUL-terminated string.
    unsafe { libc::umount2(dir.as_ptr(), libc::MNT_DETACH) };
}

#[test]
fn signal_backend_limits_are_as_documented() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    // Executable mappings (mmap, mprotect) are only decided with
    // --signal-mmap-check. Without it these run; the README and the start-up
    // warnings say so.
    let image = image();
    let library = image.library("libgcc_s").expect("the image has libgcc_s");
    let script = format!(
        "cp /bin/probe /tmp/tool
        {loader} /tmp/tool say loader-ran
        cp {library} /tmp/libdrop.so
        /bin/probe dlopen /tmp/libdrop.so
        cp /bin/busybox /tmp/code.bin
        /bin/probe mprotect-exec /tmp/code.bin",
        loader = loader(&image)
    );
    let agent = start(&["--backend", "signal"]);
    for warning in [
        "executable mappings are NOT decided",
        "mprotect adding PROT_EXEC to a mapping of a dropped file is NOT decided",
    ] {
        assert!(agent.log().contains(warning), "{}", agent.log());
    }
    let (run, stopped) = run_under(agent, &image, &[], &script);
    assert_eq!(
        lines(&run),
        ["loader-ran", "dlopen: ok", "mprotect-exec: ok"],
        "{run:#?}"
    );
    assert_eq!(events(&stopped, "signal"), Vec::<&Value>::new());
}
