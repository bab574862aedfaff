//! Drift that does not come as a plain exec of a dropped file: execveat,
//! scripts, the dynamic loader, preloaded and dlopened libraries, mprotect,
//! memfd, writable mounts, renames and links, modified image files. And the
//! other side: image programs and host services keep working.
//!
//! Each route is tested with each backend. The lsm tests need BPF LSM (the
//! VMs of `cargo xtask test`); the signal tests also run on the host kernel.
//! The tests of one backend share one running agent (`scenario::shared`),
//! and their names group them (`lsm_`, `signal_`, `signal_with_mmap_check_`)
//! so that they run one after another: one agent start per group.

use std::{fs, os::unix::process::CommandExt as _, path::Path, process::Command};

use enforcer_tests::{
    agent::Agent,
    container::{self, Image, Run, Scratch, Volume},
    require,
    scenario::{
        assert_event, checked_mounts, drift, events, lsm, observe, run_observed, shared, signal,
    },
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

const EXECVEAT: &str = "cp /bin/busybox /tmp/busybox-dropped
    /bin/probe execveat /tmp/busybox-dropped echo dropped-ran
    echo rc=$?";

/// lsm: the exec fails with EPERM.
#[test]
fn lsm_execveat_of_a_dropped_binary_is_refused() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    let (run, observed) = run_observed(&agent, &image(), &[], EXECVEAT);
    assert!(!run.stdout.contains("dropped-ran"), "{run:#?}");
    assert!(
        lines(&run).contains(&"execveat: Operation not permitted (os error 1)"),
        "{run:#?}"
    );
    let events = events(&observed, "lsm");
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

/// signal: the new program is killed before it runs.
#[test]
fn signal_execveat_of_a_dropped_binary_is_refused() {
    let Some((_serial, agent)) = signal(&[]) else {
        return;
    };
    let (run, observed) = run_observed(&agent, &image(), &[], EXECVEAT);
    assert!(!run.stdout.contains("dropped-ran"), "{run:#?}");
    assert_eq!(run.value("rc"), Some("137"), "{run:#?}");
    let events = events(&observed, "signal");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_event(
        events[0],
        "exec",
        "overlay-upper",
        "busybox-dropped",
        "killed",
    );
}

/// Deleting the file leaves no path, but the open descriptor still runs it:
/// the decision is on the inode, which is still an upper-layer one.
const EXEC_DELETED: &str = "cp /bin/busybox /tmp/busybox-deleted
    /bin/probe exec-deleted /tmp/busybox-deleted echo deleted-ran
    echo rc=$?
    ls /tmp/busybox-deleted";

fn check_exec_deleted(agent: &Agent, backend: &str, decision: &str, rc: &str) {
    let (run, observed) = run_observed(agent, &image(), &[], EXEC_DELETED);
    assert!(!run.stdout.contains("deleted-ran"), "{run:#?}");
    assert_eq!(run.value("rc"), Some(rc), "{run:#?}");
    assert!(
        run.stderr.contains("No such file"),
        "the file was deleted: {run:#?}"
    );
    let events = events(&observed, backend);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_event(
        events[0],
        "exec",
        "overlay-upper",
        "busybox-deleted",
        decision,
    );
}

#[test]
fn lsm_a_dropped_binary_run_after_it_was_deleted_is_refused() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    check_exec_deleted(&agent, "lsm", "blocked", "126");
}

#[test]
fn signal_a_dropped_binary_run_after_it_was_deleted_is_refused() {
    let Some((_serial, agent)) = signal(&[]) else {
        return;
    };
    check_exec_deleted(&agent, "signal", "killed", "137");
}

/// The last script has a dynamically linked interpreter: the exec also
/// opens and releases the dynamic loader.
const SCRIPTS: &str = "printf '#!/bin/sh\\necho script-ran\\n' > /tmp/dropped.sh
    chmod +x /tmp/dropped.sh
    /tmp/dropped.sh
    echo rc=$?
    /bin/probe execveat /tmp/dropped.sh
    echo fd-rc=$?
    printf '#!/bin/probe say\\n' > /tmp/dynamic.sh
    chmod +x /tmp/dynamic.sh
    /tmp/dynamic.sh
    echo dynamic-rc=$?";

fn check_scripts(agent: &Agent, backend: &str, status: &str, decision: &str) -> Run {
    let (run, observed) = run_observed(agent, &image(), &[], SCRIPTS);
    assert!(!run.stdout.contains("script-ran"), "{run:#?}");
    assert!(!run.stdout.contains("/tmp/dynamic.sh"), "{run:#?}");
    for key in ["rc", "fd-rc", "dynamic-rc"] {
        assert_eq!(run.value(key), Some(status), "{key}: {run:#?}");
    }
    let events = events(&observed, backend);
    assert_eq!(events.len(), 3, "{events:#?}");
    assert_event(events[0], "exec", "overlay-upper", "dropped.sh", decision);
    assert_eq!(events[0]["file"]["path"], "/tmp/dropped.sh");
    assert_event(events[1], "exec", "overlay-upper", "dropped.sh", decision);
    assert_event(events[2], "exec", "overlay-upper", "dynamic.sh", decision);
    run
}

#[test]
fn lsm_a_dropped_script_is_refused() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    let run = check_scripts(&agent, "lsm", "126", "blocked");
    assert!(
        run.stderr
            .contains("/tmp/dropped.sh: Operation not permitted"),
        "{run:#?}"
    );
}

/// signal: the interpreter is killed before it reads the script, found
/// among the files the exec released; also when run through a descriptor.
#[test]
fn signal_a_dropped_script_is_refused() {
    let Some((_serial, agent)) = signal(&[]) else {
        return;
    };
    check_scripts(&agent, "signal", "137", "killed");
}

/// The loader is an image file and may run; the program it maps may not.
fn loader_script(image: &Image) -> String {
    format!(
        "cp /bin/probe /tmp/tool
        {} /tmp/tool say tool-ran
        echo rc=$?",
        loader(image)
    )
}

#[test]
fn lsm_the_dynamic_loader_cannot_run_a_dropped_binary() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    let image = image();
    let (run, observed) = run_observed(&agent, &image, &[], &loader_script(&image));
    assert!(!run.stdout.contains("tool-ran"), "{run:#?}");
    assert_eq!(run.value("rc"), Some("127"), "{run:#?}");
    assert!(
        run.stderr
            .contains("failed to map segment from shared object"),
        "{run:#?}"
    );
    let events = events(&observed, "lsm");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_event(events[0], "mmap", "overlay-upper", "tool", "blocked");
    assert_eq!(events[0]["event"]["category"][0], "library");
    assert!(
        events[0]["file"].get("path").is_none(),
        "mappings have no exec path"
    );
}

/// signal, with the mmap check: the loader is killed at the mmap of the
/// program's code.
#[test]
fn signal_with_mmap_check_the_dynamic_loader_cannot_run_a_dropped_binary() {
    let Some((_serial, agent)) = signal(&["--signal-mmap-check"]) else {
        return;
    };
    let image = image();
    let (run, observed) = run_observed(&agent, &image, &[], &loader_script(&image));
    assert!(!run.stdout.contains("tool-ran"), "{run:#?}");
    assert_eq!(run.value("rc"), Some("137"), "{run:#?}");
    let events = events(&observed, "signal");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_event(events[0], "mmap", "overlay-upper", "tool", "killed");
}

fn library_script(image: &Image) -> String {
    let library = image.library("libgcc_s").expect("the image has libgcc_s");
    format!(
        "cp {library} /tmp/libdrop.so
        LD_PRELOAD=/tmp/libdrop.so /bin/probe say preloaded-program-ran
        echo preload-rc=$?
        /bin/probe dlopen /tmp/libdrop.so
        echo dlopen-rc=$?
        /bin/probe dlopen {library}"
    )
}

#[test]
fn lsm_a_dropped_library_cannot_be_preloaded_or_dlopened() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    let image = image();
    let (run, observed) = run_observed(&agent, &image, &[], &library_script(&image));
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
    let events = events(&observed, "lsm");
    assert_eq!(events.len(), 2, "{events:#?}");
    for event in events {
        assert_event(event, "mmap", "overlay-upper", "libdrop.so", "blocked");
    }
}

/// signal, with the mmap check: the process that maps the library is
/// killed before the mapping returns; the image's copy still loads.
#[test]
fn signal_with_mmap_check_a_dropped_library_cannot_be_preloaded_or_dlopened() {
    let Some((_serial, agent)) = signal(&["--signal-mmap-check"]) else {
        return;
    };
    let image = image();
    let (run, observed) = run_observed(&agent, &image, &[], &library_script(&image));
    assert_eq!(
        lines(&run),
        ["preload-rc=137", "dlopen-rc=137", "dlopen: ok"],
        "{run:#?}"
    );
    let events = events(&observed, "signal");
    assert_eq!(events.len(), 2, "{events:#?}");
    for event in events {
        assert_event(event, "mmap", "overlay-upper", "libdrop.so", "killed");
    }
}

const MPROTECT: &str = "cp /bin/busybox /tmp/code.bin
    /bin/probe mprotect-exec /tmp/code.bin
    echo rc=$?
    /bin/probe mprotect-exec /bin/busybox";

#[test]
fn lsm_mprotect_to_executable_of_a_dropped_file_is_refused() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    let (run, observed) = run_observed(&agent, &image(), &[], MPROTECT);
    assert_eq!(
        lines(&run),
        [
            "mprotect-exec: Operation not permitted (os error 1)",
            "rc=1",
            "mprotect-exec: ok"
        ],
        "{run:#?}"
    );
    let events = events(&observed, "lsm");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_event(
        events[0],
        "mprotect",
        "overlay-upper",
        "code.bin",
        "blocked",
    );
}

/// signal, with the mmap check, on kernels with `bpf_find_vma` (5.17+): the
/// process is killed before mprotect returns.
#[test]
fn signal_with_mmap_check_mprotect_to_executable_of_a_dropped_file_is_refused() {
    let Some((_serial, agent)) = signal(&["--signal-mmap-check"]) else {
        return;
    };
    let decided = agent
        .log()
        .contains("adding PROT_EXEC to a mapping of a drift file are decided");
    let (run, observed) = run_observed(&agent, &image(), &[], MPROTECT);
    let events = events(&observed, "signal");
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

/// Even a byte-for-byte copy of an image binary: running from a memfd is
/// fileless execution.
const MEMFD_SCRIPT: &str = "/bin/probe memfd-exec /bin/busybox echo memfd-ran
    echo rc=$?";

#[test]
fn lsm_memfd_execution_is_refused() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    let (run, observed) = run_observed(&agent, &image(), &[], MEMFD_SCRIPT);
    assert!(!run.stdout.contains("memfd-ran"), "{run:#?}");
    assert!(
        lines(&run).contains(&"memfd-exec: Operation not permitted (os error 1)"),
        "{run:#?}"
    );
    let events = events(&observed, "lsm");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_event(events[0], "exec", "memfd", "memfd:probe", "blocked");
}

#[test]
fn signal_memfd_execution_is_refused() {
    let Some((_serial, agent)) = signal(&[]) else {
        return;
    };
    let (run, observed) = run_observed(&agent, &image(), &[], MEMFD_SCRIPT);
    assert!(!run.stdout.contains("memfd-ran"), "{run:#?}");
    assert_eq!(run.value("rc"), Some("137"), "{run:#?}");
    let events = events(&observed, "signal");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_event(events[0], "exec", "memfd", "memfd:probe", "killed");
}

#[test]
fn allowed_memfd_execution_runs() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let agent = shared(&["--allow-memfd"]).expect("an agent with the default backend");
    let (run, observed) = run_observed(&agent, &image(), &[], MEMFD_SCRIPT);
    assert!(lines(&run).contains(&"memfd-ran"), "{run:#?}");
    assert_eq!(drift(&observed), Vec::<&Value>::new());
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

fn check_writable_mounts(agent: &Agent, backend: &str, decision: &str, rc: &str) {
    let volumes = volumes();
    let (run, observed) = run_observed(agent, &image(), &volumes.list, MOUNTS_SCRIPT);
    let output = lines(&run);
    assert!(
        !output.contains(&"shm-ran") && !output.contains(&"vol-ran"),
        "{run:#?}"
    );
    assert_eq!(run.value("shm-rc"), Some(rc), "{run:#?}");
    assert_eq!(run.value("vol-rc"), Some(rc), "{run:#?}");
    // Read-only mounts cannot have been written from inside.
    assert!(output.contains(&"ro-ran"), "{run:#?}");
    let events = checked_mounts(&observed, events(&observed, backend), &["busybox-ro"]);
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_event(events[0], "exec", "writable-mount", "busybox-shm", decision);
    assert_event(events[1], "exec", "writable-mount", "busybox-vol", decision);
}

#[test]
fn lsm_executables_on_writable_mounts_are_refused() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    check_writable_mounts(&agent, "lsm", "blocked", "126");
}

#[test]
fn signal_executables_on_writable_mounts_are_refused() {
    let Some((_serial, agent)) = signal(&[]) else {
        return;
    };
    check_writable_mounts(&agent, "signal", "killed", "137");
}

#[test]
fn allowed_executables_on_writable_mounts_run() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let volumes = volumes();
    let agent = shared(&["--allow-writable-mounts"]).expect("an agent with the default backend");
    let (run, observed) = run_observed(&agent, &image(), &volumes.list, MOUNTS_SCRIPT);
    let output = lines(&run);
    for ran in ["shm-ran", "vol-ran", "ro-ran"] {
        assert!(output.contains(&ran), "{ran} missing: {run:#?}");
    }
    let rest = checked_mounts(&observed, drift(&observed), &["busybox-ro"]);
    assert_eq!(rest, Vec::<&Value>::new());
}

/// Appending nothing still copies the image file up: it may have been
/// changed, so it is no longer the image's.
const RENAMED: &str = "cp /bin/busybox /tmp/busybox-copy
    mv /tmp/busybox-copy /tmp/busybox-moved
    ln /tmp/busybox-moved /tmp/busybox-linked
    /tmp/busybox-moved echo moved-ran
    /tmp/busybox-linked echo linked-ran
    cat /dev/null >> /bin/probe
    /bin/probe say modified-ran";

fn check_renamed(agent: &Agent, backend: &str, decision: &str) {
    let (run, observed) = run_observed(agent, &image(), &[], RENAMED);
    for ran in ["moved-ran", "linked-ran", "modified-ran"] {
        assert!(!run.stdout.contains(ran), "{ran}: {run:#?}");
    }
    let events = events(&observed, backend);
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
}

#[test]
fn lsm_renamed_linked_and_modified_files_stay_drift() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    check_renamed(&agent, "lsm", "blocked");
}

#[test]
fn signal_renamed_linked_and_modified_files_stay_drift() {
    let Some((_serial, agent)) = signal(&[]) else {
        return;
    };
    check_renamed(&agent, "signal", "killed");
}

/// Runs, in a container of an image with two scripts of its own, everything
/// of the image's every way the bypass tests use, and checks that it all ran
/// and nothing was reported.
fn check_image_files_run(agent: &Agent, backend: &str) {
    let image = image();
    // A script for the static busybox shell, and one for a dynamically
    // linked interpreter (`probe say` prints the script's path).
    for (name, text) in [
        ("image-script", "#!/bin/sh\necho image-script-ran\n"),
        ("image-dynamic-script", "#!/bin/probe say\n"),
    ] {
        fs::write(image.root().join("bin").join(name), text).expect("writing an image script");
        fs::set_permissions(
            image.root().join("bin").join(name),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("making an image script executable");
    }
    let library = image.library("libgcc_s").expect("the image has libgcc_s");
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
    let (run, observed) = run_observed(agent, &image, &[], &script);
    assert_eq!(
        lines(&run),
        [
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
        ],
        "{run:#?}"
    );
    assert_eq!(events(&observed, backend), Vec::<&Value>::new());
}

#[test]
fn lsm_image_programs_libraries_and_scripts_keep_working() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    check_image_files_run(&agent, "lsm");
}

#[test]
fn signal_with_mmap_check_image_programs_libraries_and_scripts_keep_working() {
    let Some((_serial, agent)) = signal(&["--signal-mmap-check"]) else {
        return;
    };
    check_image_files_run(&agent, "signal");
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

/// A host service with a private mount namespace runs a dropped binary
/// from a tmpfs mounted on the host: not a container, not drift.
fn check_host_service(agent: &Agent) {
    // A writable tmpfs mounted on the host, holding a dropped binary.
    let scratch = container::tmpfs_scratch("host-tmpfs").expect("a tmpfs");
    let dropped = scratch.path().join("busybox-host");
    fs::copy("/bin/busybox", &dropped).expect("dropping a binary on the tmpfs");
    // No container group to tell its events by: all of them, between two
    // flushes.
    let (output, observed) = observe(
        agent,
        || run_in_private_mount_ns(&dropped, &["echo", "service-ran"]),
        |_| None,
    );
    container::unmount(scratch.path());
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("service-ran"),
        "a host service with a private mount namespace was stopped: {output:?}\n{}",
        observed.log
    );
    assert_eq!(observed.events, Vec::<Value>::new());
}

#[test]
fn lsm_a_host_service_in_a_private_mount_namespace_is_not_a_container() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    check_host_service(&agent);
}

#[test]
fn signal_a_host_service_in_a_private_mount_namespace_is_not_a_container() {
    let Some((_serial, agent)) = signal(&[]) else {
        return;
    };
    check_host_service(&agent);
}

/// Executable mappings (mmap, mprotect) and scripts without `#!` (run by
/// the shell after `ENOEXEC`) are only decided with --signal-mmap-check.
/// Without it these run; the README and the start-up warnings say so.
#[test]
fn signal_backend_limits_are_as_documented() {
    let Some((_serial, agent)) = signal(&[]) else {
        return;
    };
    let image = image();
    let library = image.library("libgcc_s").expect("the image has libgcc_s");
    let script = format!(
        "cp /bin/probe /tmp/tool
        {loader} /tmp/tool say loader-ran
        cp {library} /tmp/libdrop.so
        /bin/probe dlopen /tmp/libdrop.so
        cp /bin/busybox /tmp/code.bin
        /bin/probe mprotect-exec /tmp/code.bin
        printf 'echo no-shebang-ran\\n' > /tmp/no-shebang
        chmod +x /tmp/no-shebang
        /tmp/no-shebang",
        loader = loader(&image)
    );
    for warning in [
        "executable mappings are NOT decided",
        "mprotect adding PROT_EXEC to a mapping of a dropped file is NOT decided",
        "a dropped script without #! is NOT decided",
    ] {
        assert!(agent.log().contains(warning), "{}", agent.log());
    }
    let (run, observed) = run_observed(&agent, &image, &[], &script);
    assert_eq!(
        lines(&run),
        [
            "loader-ran",
            "dlopen: ok",
            "mprotect-exec: ok",
            "no-shebang-ran"
        ],
        "{run:#?}"
    );
    assert_eq!(events(&observed, "signal"), Vec::<&Value>::new());
}
