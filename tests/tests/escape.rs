//! Attacks on the drift decision by changing how a file is reached, as a
//! container process with Docker's default capabilities and an
//! unprivileged user namespace can (`probe userns`: new user and mount
//! namespaces, mounts there, then an exec): `chroot` into a writable mount
//! or into the host's root, read-only bind mounts and filesystems it made
//! read-only itself, mounts detached from every namespace, overlays it
//! mounted over what it wrote. Each payload must not run, and each attempt
//! must be reported with the file, why it is not image content, and the
//! route. And the other side: read-only volumes the runtime made, a user
//! namespace's own view of them, and image directories reached the same
//! ways keep running without an event.
//!
//! The tests of one backend share one running agent; their names group them
//! (`lsm_`, `signal_`), as in bypass.rs.

use std::{fs, path::Path};

use enforcer_tests::{
    agent::Agent,
    container::{self, Image, Run, Scratch, Volume},
    scenario::{
        Observed, assert_event, checked_mounts, events, lsm, observe, run_observed, signal,
        walks_mounts,
    },
};
use serde_json::Value;

const PROBE: &str = env!("CARGO_BIN_EXE_probe");

/// busybox and `/bin/probe` with its glibc, as in bypass.rs, on a tmpfs (an
/// image on the VMs' overlayfs `/tmp` would leave no room to stack another
/// overlay on the container's root).
fn image() -> Image {
    Image::with_dynamic_on_tmpfs(Path::new(PROBE), "probe").expect("building the image")
}

/// What a backend does to drift: the decision its records name.
#[derive(Clone, Copy)]
struct Backend {
    name: &'static str,
    decision: &'static str,
}

const LSM: Backend = Backend {
    name: "lsm",
    decision: "blocked",
};
const SIGNAL: Backend = Backend {
    name: "signal",
    decision: "killed",
};

/// Checks that no marker of `markers` is in the run's output, and that the
/// drift records are exactly `expected` (via, layer, file name), in order.
fn check(
    run: &Run,
    observed: &Observed,
    backend: Backend,
    markers: &[&str],
    expected: &[(&str, &str, &str)],
) {
    check_with_unchecked(run, observed, backend, markers, expected, &[]);
}

/// [`check`], where the files `unchecked` ran from read-only mounts the
/// runtime made, which kernels without the mount walk report.
fn check_with_unchecked(
    run: &Run,
    observed: &Observed,
    backend: Backend,
    markers: &[&str],
    expected: &[(&str, &str, &str)],
    unchecked: &[&str],
) {
    for marker in markers {
        assert!(!run.stdout.contains(marker), "{marker} ran: {run:#?}");
    }
    let events = checked_mounts(observed, events(observed, backend.name), unchecked);
    assert_eq!(
        events.len(),
        expected.len(),
        "{events:#?}\n{run:#?}\n{}",
        observed.log
    );
    for (event, (via, layer, name)) in events.iter().zip(expected) {
        assert_event(event, via, layer, name, backend.decision);
    }
}

/// `chroot` makes the chroot's directory the task's root: neither that nor
/// the mount the file is on changes what the file is.
const CHROOT: &str = "cp /bin/busybox /dev/shm/busybox-shm
    /bin/busybox chroot /dev/shm /busybox-shm echo chroot-shm-ran
    mkdir -p /tmp/jail
    cp /bin/busybox /tmp/jail/busybox-jail
    /bin/busybox chroot /tmp/jail /busybox-jail echo chroot-jail-ran
    /bin/busybox chroot /bin /busybox echo image-chroot-ran";

fn check_chroot(agent: &Agent, backend: Backend) {
    let (run, observed) = run_observed(agent, &image(), &[], CHROOT);
    assert!(run.stdout.contains("image-chroot-ran"), "{run:#?}");
    check(
        &run,
        &observed,
        backend,
        &["chroot-shm-ran", "chroot-jail-ran"],
        &[
            ("exec", "writable-mount", "busybox-shm"),
            ("exec", "overlay-upper", "busybox-jail"),
        ],
    );
}

#[test]
fn lsm_chroot_does_not_change_what_a_file_is() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    check_chroot(&agent, LSM);
}

#[test]
fn signal_chroot_does_not_change_what_a_file_is() {
    let Some((_serial, agent)) = signal(&[]) else {
        return;
    };
    check_chroot(&agent, SIGNAL);
}

/// Read-only mounts and filesystems a container process made read-only in a
/// user namespace of its own: a bind mount of what it wrote, a tmpfs it
/// filled, the runtime's writable /dev/shm bound read-only, a dropped file
/// bound over an image binary, a bind mount detached from every namespace,
/// and a library loaded through such a bind.
fn read_only_script(image: &Image) -> String {
    let library = image.library("libgcc_s").expect("the image has libgcc_s");
    format!(
        "mkdir -p /tmp/w /tmp/ro /tmp/t /tmp/s /tmp/d
        cp /bin/busybox /tmp/w/busybox-bind
        cp {library} /tmp/w/libdrop.so
        /bin/probe userns bind:/tmp/w:/tmp/ro ro:/tmp/ro -- /tmp/ro/busybox-bind echo bind-ran
        /bin/probe userns tmpfs:/tmp/t copy:/bin/busybox:/tmp/t/busybox-tmpfs remount-ro:/tmp/t \
            -- /tmp/t/busybox-tmpfs echo tmpfs-ran
        cp /bin/busybox /dev/shm/busybox-shm
        /bin/probe userns bind:/dev/shm:/tmp/s ro:/tmp/s -- /tmp/s/busybox-shm echo shm-ran
        cp /bin/busybox /tmp/busybox-over
        /bin/probe userns bind:/tmp/busybox-over:/bin/busybox ro:/bin/busybox \
            -- /bin/busybox echo over-ran
        cp /bin/busybox /dev/shm/busybox-detached
        /bin/probe userns bind:/dev/shm:/tmp/d ro:/tmp/d detach:/tmp/d \
            -- ./busybox-detached echo detached-ran
        /bin/probe userns bind:/tmp/w:/tmp/ro ro:/tmp/ro -- /bin/probe dlopen /tmp/ro/libdrop.so
        echo dlopen-rc=$?"
    )
}

const READ_ONLY_MARKERS: &[&str] = &[
    "bind-ran",
    "tmpfs-ran",
    "shm-ran",
    "over-ran",
    "detached-ran",
    "dlopen: ok",
];

fn check_read_only(agent: &Agent, backend: Backend, with_mappings: bool) {
    let image = image();
    let (run, observed) = run_observed(agent, &image, &[], &read_only_script(&image));
    let mut expected = vec![
        ("exec", "overlay-upper", "busybox-bind"),
        ("exec", "container-mount", "busybox-tmpfs"),
        ("exec", "container-mount", "busybox-shm"),
        ("exec", "overlay-upper", "busybox-over"),
        ("exec", "container-mount", "busybox-detached"),
    ];
    if with_mappings {
        expected.push(("mmap", "overlay-upper", "libdrop.so"));
    }
    let markers = if with_mappings {
        READ_ONLY_MARKERS
    } else {
        &READ_ONLY_MARKERS[..READ_ONLY_MARKERS.len() - 1]
    };
    check(&run, &observed, backend, markers, &expected);
}

#[test]
fn lsm_read_only_mounts_made_in_a_user_namespace_are_not_image_content() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    check_read_only(&agent, LSM, true);
}

#[test]
fn signal_with_mmap_check_read_only_mounts_made_in_a_user_namespace_are_not_image_content() {
    let Some((_serial, agent)) = signal(&["--signal-mmap-check"]) else {
        return;
    };
    check_read_only(&agent, SIGNAL, true);
}

/// Whether this kernel lets a user namespace mount overlayfs (5.11+).
fn userns_overlay() -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse::<u32>().ok());
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    version >= (5, 11)
}

/// Overlays a container process mounted in a user namespace: a file that
/// the container wrote on its own root, shown as a lower file (run through
/// the overlay, and after a chroot into it), and one written into an upper
/// layer on a tmpfs the user namespace owns. An overlay of image directories
/// runs image files.
const NESTED: &str = "mkdir -p /tmp/l /tmp/e /tmp/m /tmp/i /tmp/t
    cp /bin/busybox /tmp/l/busybox-low
    /bin/probe userns overlay:/tmp/l+/tmp/e:/tmp/m -- /tmp/m/busybox-low echo nested-ran
    /bin/probe userns overlay:/tmp/l+/tmp/e:/tmp/m chroot:/tmp/m -- /busybox-low echo nested-chroot-ran
    /bin/probe userns tmpfs:/tmp/t mkdir:/tmp/t/u mkdir:/tmp/t/w overlay-rw:/bin:/tmp/t/u:/tmp/t/w:/tmp/m \
        copy:/bin/busybox:/tmp/m/busybox-up -- /tmp/m/busybox-up echo upper-ran
    /bin/probe userns overlay:/bin+/tmp/e:/tmp/i -- /tmp/i/busybox echo image-overlay-ran";

fn check_nested(agent: &Agent, backend: Backend) {
    let (run, observed) = run_observed(agent, &image(), &[], NESTED);
    let markers = ["nested-ran", "nested-chroot-ran", "upper-ran"];
    if !userns_overlay() {
        // The attack cannot be set up: the kernel refuses the mount.
        check(&run, &observed, backend, &markers, &[]);
        return;
    }
    assert!(run.stdout.contains("image-overlay-ran"), "{run:#?}");
    check(
        &run,
        &observed,
        backend,
        &markers,
        &[
            ("exec", "overlay-upper", "busybox-low"),
            ("exec", "overlay-upper", "busybox-low"),
            ("exec", "container-mount", "busybox-up"),
        ],
    );
}

#[test]
fn lsm_overlays_mounted_in_a_user_namespace_are_decided_on_the_file_below() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    check_nested(&agent, LSM);
}

#[test]
fn signal_overlays_mounted_in_a_user_namespace_are_decided_on_the_file_below() {
    let Some((_serial, agent)) = signal(&[]) else {
        return;
    };
    check_nested(&agent, SIGNAL);
}

/// A read-only hostPath of the host's `/` (the node-exporter pattern): a
/// `chroot` into it gives a container process the host's root directory,
/// and it stays a container process. The host's programs run; a dropped
/// file reached through a descriptor opened before the chroot does not,
/// neither executed nor mapped.
fn host_root_script() -> String {
    format!(
        "cp /bin/busybox /tmp/busybox-host
        exec 3< /tmp/busybox-host
        /bin/busybox chroot /host {PROBE} say host-program-ran
        /bin/busybox chroot /host {PROBE} exec-fd 3 echo host-chroot-ran
        /bin/busybox chroot /host {PROBE} mmap-exec-fd 3"
    )
}

fn host_root() -> Vec<Volume> {
    vec![Volume {
        host: "/".into(),
        at: "/host".to_owned(),
        read_only: true,
    }]
}

fn check_host_root(agent: &Agent, backend: Backend) {
    let (run, observed) = run_observed(agent, &image(), &host_root(), &host_root_script());
    assert!(run.stdout.contains("host-program-ran"), "{run:#?}");
    check(
        &run,
        &observed,
        backend,
        &["host-chroot-ran", "mmap-exec-fd: ok"],
        &[
            ("exec", "overlay-upper", "busybox-host"),
            ("mmap", "overlay-upper", "busybox-host"),
        ],
    );
}

#[test]
fn lsm_a_chroot_into_the_hosts_root_stays_in_the_container() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    check_host_root(&agent, LSM);
}

#[test]
fn signal_with_mmap_check_a_chroot_into_the_hosts_root_stays_in_the_container() {
    let Some((_serial, agent)) = signal(&["--signal-mmap-check"]) else {
        return;
    };
    check_host_root(&agent, SIGNAL);
}

/// A tmpfs the runtime made on the host (as the kubelet makes one for a
/// `Secret` or a `ConfigMap`), holding an executable, mounted read-only into
/// the container. Unmounted on drop.
struct HostTmpfs {
    scratch: Scratch,
}

impl HostTmpfs {
    fn empty() -> Self {
        Self {
            scratch: container::tmpfs_scratch("volume").expect("a tmpfs"),
        }
    }

    fn with_busybox() -> Self {
        let tmpfs = Self::empty();
        fs::copy("/bin/busybox", tmpfs.scratch.path().join("busybox-secret"))
            .expect("filling the tmpfs");
        tmpfs
    }
}

impl Drop for HostTmpfs {
    fn drop(&mut self) {
        container::unmount(self.scratch.path());
    }
}

/// One volume mounted read-write and read-only in the same container (an
/// `emptyDir` listed twice in a pod): what was written through the writable
/// mount is not image content when run through the read-only one, whether
/// the read-only mount shows the same directory, one below the writable
/// mount's root, or one above it.
const TWICE: &str = "cp /bin/busybox /rw/busybox-twice
    /ro/busybox-twice echo twice-ran
    cp /bin/busybox /rw/sub/busybox-sub
    /ro-sub/busybox-sub echo sub-ran
    cp /bin/busybox /rw-low/busybox-low
    /ro-above/low/busybox-low echo low-ran
    /bin/busybox echo image-ran";

fn check_mounted_twice(agent: &Agent, backend: Backend) {
    let same = HostTmpfs::empty();
    fs::create_dir(same.scratch.path().join("sub")).expect("making a directory in the volume");
    let above = HostTmpfs::empty();
    let low = above.scratch.path().join("low");
    fs::create_dir(&low).expect("making a directory in the volume");
    let volume = |host: &Path, at: &str, read_only| Volume {
        host: host.to_owned(),
        at: at.to_owned(),
        read_only,
    };
    let volumes = [
        volume(same.scratch.path(), "/rw", false),
        volume(same.scratch.path(), "/ro", true),
        volume(&same.scratch.path().join("sub"), "/ro-sub", true),
        volume(&low, "/rw-low", false),
        volume(above.scratch.path(), "/ro-above", true),
    ];
    let (run, observed) = run_observed(agent, &image(), &volumes, TWICE);
    assert!(run.stdout.contains("image-ran"), "{run:#?}");
    if !walks_mounts(&observed) {
        // Before 5.17 the mounts are not walked, as the agent said: each
        // run is allowed and reported.
        for marker in ["twice-ran", "sub-ran", "low-ran"] {
            assert!(run.stdout.contains(marker), "{marker}: {run:#?}");
        }
        let rest = checked_mounts(
            &observed,
            events(&observed, backend.name),
            &["busybox-twice", "busybox-sub", "busybox-low"],
        );
        assert_eq!(rest, Vec::<&Value>::new());
        return;
    }
    check(
        &run,
        &observed,
        backend,
        &["twice-ran", "sub-ran", "low-ran"],
        &[
            ("exec", "container-mount", "busybox-twice"),
            ("exec", "container-mount", "busybox-sub"),
            ("exec", "container-mount", "busybox-low"),
        ],
    );
}

#[test]
fn lsm_a_volume_mounted_read_write_and_read_only_is_not_image_content() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    check_mounted_twice(&agent, LSM);
}

#[test]
fn signal_a_volume_mounted_read_write_and_read_only_is_not_image_content() {
    let Some((_serial, agent)) = signal(&[]) else {
        return;
    };
    check_mounted_twice(&agent, SIGNAL);
}

/// A privileged container (every capability, `CAP_SYS_ADMIN` on the host
/// among them) fills a tmpfs it mounted and remounts it read-only, makes
/// the runtime's writable volume read-only where it is mounted (`mount -o
/// remount,bind,ro`), runs what it wrote there from a mount namespace made
/// afterwards (whose copy of the mount has a new namespace id), and makes
/// another volume read-only with `mount_setattr`. The runtime's read-only
/// volume runs before any of that.
const PRIVILEGED: &str = "/secret/busybox-secret echo secret-ran
        mkdir -p /mnt/t
        mount -t tmpfs tmpfs /mnt/t
        cp /bin/busybox /mnt/t/busybox-tmpfs
        mount -o remount,ro /mnt/t
        /mnt/t/busybox-tmpfs echo tmpfs-ran
        cp /bin/busybox /data/busybox-reflag
        cp /bin/busybox /data/busybox-newns
        mount -o remount,bind,ro /data
        /data/busybox-reflag echo reflag-ran
        /bin/probe steps mntns -- /data/busybox-newns echo newns-ran
        cp /bin/busybox /other/busybox-setattr
        /bin/probe setattr-ro /other
        /other/busybox-setattr echo setattr-ran";

fn run_privileged(agent: &Agent) -> (Run, Observed) {
    let secret = HostTmpfs::with_busybox();
    let (data, other) = (HostTmpfs::empty(), HostTmpfs::empty());
    let volumes = [
        Volume {
            host: secret.scratch.path().to_owned(),
            at: "/secret".to_owned(),
            read_only: true,
        },
        Volume {
            host: data.scratch.path().to_owned(),
            at: "/data".to_owned(),
            read_only: false,
        },
        Volume {
            host: other.scratch.path().to_owned(),
            at: "/other".to_owned(),
            read_only: false,
        },
    ];
    observe(
        agent,
        || {
            container::run_privileged(&image(), &volumes, PRIVILEGED)
                .expect("running the container")
        },
        |run| run.cgroup_id,
    )
}

fn check_privileged(agent: &Agent, backend: Backend) {
    let (run, observed) = run_privileged(agent);
    assert!(run.stdout.contains("secret-ran"), "{run:#?}");
    check_with_unchecked(
        &run,
        &observed,
        backend,
        &["tmpfs-ran", "reflag-ran", "newns-ran", "setattr-ran"],
        &[
            ("exec", "container-mount", "busybox-tmpfs"),
            ("exec", "container-mount", "busybox-reflag"),
            ("exec", "container-mount", "busybox-newns"),
            ("exec", setattr_layer(&run), "busybox-setattr"),
        ],
        &["busybox-secret"],
    );
}

#[test]
fn lsm_read_only_flags_a_privileged_container_set_are_not_trusted() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    check_privileged(&agent, LSM);
}

/// The signal backend sees the same from its program on every system
/// call's entry.
#[test]
fn signal_with_mmap_check_read_only_flags_a_privileged_container_set_are_not_trusted() {
    let Some((_serial, agent)) = signal(&["--signal-mmap-check"]) else {
        return;
    };
    check_privileged(&agent, SIGNAL);
}

/// Without that program the signal backend has no hook on mounts: what a
/// privileged container made read-only runs, as the agent says at
/// start-up.
#[test]
fn signal_read_only_flags_a_privileged_container_set_are_trusted_without_the_mmap_check() {
    let Some((_serial, agent)) = signal(&[]) else {
        return;
    };
    let (run, observed) = run_privileged(&agent);
    for marker in ["secret-ran", "tmpfs-ran", "reflag-ran", "newns-ran"] {
        assert!(run.stdout.contains(marker), "{marker}: {run:#?}");
    }
    // Where the mounts cannot be walked, each run from a read-only mount
    // the runtime made is reported as unchecked.
    let mut unchecked = vec!["busybox-secret", "busybox-reflag", "busybox-newns"];
    let set_read_only = setattr_layer(&run) == "container-mount";
    if set_read_only {
        unchecked.push("busybox-setattr");
    }
    let rest = checked_mounts(&observed, events(&observed, SIGNAL.name), &unchecked);
    if set_read_only {
        assert!(run.stdout.contains("setattr-ran"), "{run:#?}");
        assert_eq!(rest, Vec::<&Value>::new());
    } else {
        assert_eq!(rest.len(), 1, "{rest:#?}");
        assert_event(
            rest[0],
            "exec",
            "writable-mount",
            "busybox-setattr",
            SIGNAL.decision,
        );
    }
    assert!(
        observed
            .log
            .contains("what container processes do to mounts is NOT seen"),
        "{}",
        observed.log
    );
}

/// The layer of the file on the volume `mount_setattr` made read-only: a
/// writable mount still on kernels without that system call (before 5.12).
fn setattr_layer(run: &Run) -> &'static str {
    if run.stdout.contains("setattr-ro: ok") {
        "container-mount"
    } else {
        assert!(
            run.stdout.contains("setattr-ro: Function not implemented"),
            "{run:#?}"
        );
        "writable-mount"
    }
}

/// A privileged container makes the runtime's writable volume read-only
/// through the 32-bit system call gate (`int $0x80`), which the signal
/// backend's system call tracepoints do not see: its program on every
/// system call's entry (`--signal-mmap-check`) does.
const COMPAT_REMOUNT: &str = "/bin/probe compat-available
    cp /bin/busybox /data/busybox-compat
    /bin/probe compat-remount-ro /data
    /data/busybox-compat echo compat-ran";

fn check_compat_remount(agent: &Agent, backend: Backend) {
    let data = HostTmpfs::empty();
    let volumes = [Volume {
        host: data.scratch.path().to_owned(),
        at: "/data".to_owned(),
        read_only: false,
    }];
    let (run, observed) = observe(
        agent,
        || {
            container::run_privileged(&image(), &volumes, COMPAT_REMOUNT)
                .expect("running the container")
        },
        |run| run.cgroup_id,
    );
    if !run.stdout.contains("compat-available: yes") {
        // No 32-bit gate on this kernel: the file stays on a writable mount.
        check(
            &run,
            &observed,
            backend,
            &["compat-ran"],
            &[("exec", "writable-mount", "busybox-compat")],
        );
        return;
    }
    assert!(run.stdout.contains("compat-remount-ro: ok"), "{run:#?}");
    check(
        &run,
        &observed,
        backend,
        &["compat-ran"],
        &[("exec", "container-mount", "busybox-compat")],
    );
}

#[test]
fn lsm_a_remount_through_the_32_bit_gate_is_seen() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    check_compat_remount(&agent, LSM);
}

#[test]
fn signal_with_mmap_check_a_remount_through_the_32_bit_gate_is_seen() {
    let Some((_serial, agent)) = signal(&["--signal-mmap-check"]) else {
        return;
    };
    check_compat_remount(&agent, SIGNAL);
}

/// A privileged container process that can write the cgroup tree moves
/// into a group it made below its own, `chroot`s into a read-only hostPath
/// of the host's `/` and only then execs: that first exec in the new group
/// has the host's root directory, and must not make it a host process.
/// Then it runs a dropped file through a descriptor opened before.
fn child_cgroup_script() -> String {
    format!(
        "mkdir -p /cg
        mount -t cgroup2 none /cg
        group=$(grep '^0::' /proc/self/cgroup | cut -d: -f3)
        cp /bin/busybox /tmp/busybox-child
        exec 3< /tmp/busybox-child
        /bin/probe steps cgroup:/cg$group/escaped chroot:/host -- {PROBE} exec-fd 3 echo child-cgroup-ran"
    )
}

fn check_child_cgroup(agent: &Agent, backend: Backend) {
    let (run, observed) = observe(
        agent,
        || {
            container::run_privileged(&image(), &host_root(), &child_cgroup_script())
                .expect("running the container")
        },
        // The records are the new group's, not the container's: all of
        // those made while it ran.
        |_| None,
    );
    // Either way the new group's processes are container processes: the
    // dropped file is refused, or already the host program reached through
    // the read-only hostPath, since mounting the cgroup tree with the
    // host's privileges marked the container.
    let events = events(&observed, backend.name);
    assert!(!run.stdout.contains("child-cgroup-ran"), "{run:#?}");
    let refused_first = events
        .first()
        .is_some_and(|event| event["file"]["name"] == "probe");
    if refused_first {
        assert_event(
            events[0],
            "exec",
            "container-mount",
            "probe",
            backend.decision,
        );
        // The signal backend decides the program's ELF interpreter on the
        // same tracepoint: the host's, through the same mount.
        for event in &events[1..] {
            assert_eq!(backend.name, SIGNAL.name, "{events:#?}");
            assert_eq!(event["enforcer"]["layer"], "container-mount", "{event:#?}");
            assert!(
                event["file"]["name"]
                    .as_str()
                    .is_some_and(|name| name.starts_with("ld-")),
                "{event:#?}"
            );
        }
    } else {
        assert_eq!(events.len(), 1, "{events:#?}\n{run:#?}");
        assert_event(
            events[0],
            "exec",
            "overlay-upper",
            "busybox-child",
            backend.decision,
        );
    }
}

#[test]
fn lsm_a_new_cgroup_below_the_containers_stays_in_the_container() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    check_child_cgroup(&agent, LSM);
}

#[test]
fn signal_a_new_cgroup_below_the_containers_stays_in_the_container() {
    let Some((_serial, agent)) = signal(&[]) else {
        return;
    };
    check_child_cgroup(&agent, SIGNAL);
}

/// What must keep running without an event: a Secret-like read-only tmpfs
/// (also after the container tried mounts it has no capability for, as
/// entrypoints do), the same seen from a user namespace (its read-only flag
/// is locked there), image directories bound read-only in a user
/// namespace, and a chroot into an image directory.
const NO_FALSE_POSITIVES: &str = "mount -t tmpfs tmpfs /tmp 2>/dev/null || echo mount-refused
    mount -o remount,bind,ro /tmp 2>/dev/null || echo remount-refused
    /secret/busybox-secret echo secret-ran
    /bin/probe userns -- /secret/busybox-secret echo userns-secret-ran
    mkdir -p /tmp/b
    /bin/probe userns bind:/bin:/tmp/b ro:/tmp/b -- /tmp/b/busybox echo image-bind-ran
    /bin/busybox chroot /bin /busybox echo image-chroot-ran";

fn check_no_false_positives(agent: &Agent, backend: Backend) {
    let secret = HostTmpfs::with_busybox();
    let volumes = [Volume {
        host: secret.scratch.path().to_owned(),
        at: "/secret".to_owned(),
        read_only: true,
    }];
    let (run, observed) = run_observed(agent, &image(), &volumes, NO_FALSE_POSITIVES);
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        [
            "mount-refused",
            "remount-refused",
            "secret-ran",
            "userns-secret-ran",
            "image-bind-ran",
            "image-chroot-ran"
        ],
        "{run:#?}"
    );
    let rest = checked_mounts(
        &observed,
        events(&observed, backend.name),
        &["busybox-secret", "busybox-secret"],
    );
    assert_eq!(rest, Vec::<&Value>::new());
}

#[test]
fn lsm_read_only_volumes_and_image_directories_keep_running() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    check_no_false_positives(&agent, LSM);
}

#[test]
fn signal_with_mmap_check_read_only_volumes_and_image_directories_keep_running() {
    let Some((_serial, agent)) = signal(&["--signal-mmap-check"]) else {
        return;
    };
    check_no_false_positives(&agent, SIGNAL);
}

/// An image with `/usr/bin/env` (busybox's) and an image script that runs
/// through it (`#!/usr/bin/env sh`), as distribution images have.
fn image_with_env_script() -> Image {
    let image = image();
    let usr_bin = image.root().join("usr/bin");
    fs::create_dir_all(&usr_bin).expect("creating /usr/bin in the image");
    std::os::unix::fs::symlink("/bin/busybox", usr_bin.join("env")).expect("linking env");
    let script = image.root().join("bin/image-env-script");
    fs::write(&script, "#!/usr/bin/env sh\necho image-env-ran\n").expect("writing an image script");
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("making the image script executable");
    image
}

/// A dropped script in the middle of a chain of interpreters: the image
/// script is fine, the `/usr/bin/env` it names was replaced by a script,
/// whose own interpreter is the image's shell.
const NESTED_INTERPRETER: &str = "/bin/image-env-script
    rm /usr/bin/env
    printf '#!/bin/sh\\necho nested-interpreter-ran\\n' > /usr/bin/env
    chmod +x /usr/bin/env
    /bin/image-env-script";

fn check_nested_interpreter(agent: &Agent, backend: Backend) {
    let (run, observed) = run_observed(agent, &image_with_env_script(), &[], NESTED_INTERPRETER);
    assert!(run.stdout.contains("image-env-ran"), "{run:#?}");
    check(
        &run,
        &observed,
        backend,
        &["nested-interpreter-ran"],
        &[("exec", "overlay-upper", "env")],
    );
}

#[test]
fn lsm_a_dropped_script_as_the_interpreter_of_an_image_script_is_refused() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    check_nested_interpreter(&agent, LSM);
}

#[test]
fn signal_a_dropped_script_as_the_interpreter_of_an_image_script_is_refused() {
    let Some((_serial, agent)) = signal(&[]) else {
        return;
    };
    check_nested_interpreter(&agent, SIGNAL);
}

/// A dropped script run by a process with a thousand close-on-exec files
/// (Python keeps its own open so), each released by the exec.
const MANY_FILES: &str = "printf '#!/bin/sh\\necho many-files-ran\\n' > /tmp/dropped.sh
    chmod +x /tmp/dropped.sh
    /bin/probe exec-with-fds 1000 /tmp/dropped.sh";

fn check_many_files(agent: &Agent, backend: Backend, layer: &str) {
    let (run, observed) = run_observed(agent, &image(), &[], MANY_FILES);
    check(
        &run,
        &observed,
        backend,
        &["many-files-ran"],
        &[("exec", layer, "dropped.sh")],
    );
}

#[test]
fn lsm_a_dropped_script_run_with_many_files_open_is_refused() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    check_many_files(&agent, LSM, "overlay-upper");
}

/// Where the kernel has `bpf_loop`, the walk finds the script; elsewhere it
/// stops after 256 files and refuses the script as unresolved.
#[test]
fn signal_a_dropped_script_run_with_many_files_open_is_refused() {
    let Some((_serial, agent)) = signal(&[]) else {
        return;
    };
    let layer = if agent.log().contains("its bpf_loop needs 5.17+") {
        "unresolved"
    } else {
        "overlay-upper"
    };
    check_many_files(&agent, SIGNAL, layer);
}

/// The image's dynamic loader overwritten by the container (here with its
/// own bytes: a copy-up, as a tampered loader would be): every dynamic
/// program now runs it, which the kernel maps itself.
fn dropped_loader_script(image: &Image) -> String {
    let loader = image
        .library("ld-linux")
        .expect("the image has a dynamic loader");
    format!(
        "/bin/probe say before-ran
        cat {loader} > /tmp/loader
        cat /tmp/loader > {loader}
        /bin/probe say loader-ran
        echo rc=$?"
    )
}

fn check_dropped_loader(agent: &Agent, backend: Backend, via: &str) {
    let image = image();
    let loader = image
        .library("ld-linux")
        .expect("the image has a dynamic loader");
    let name = loader.rsplit('/').next().unwrap_or(loader).to_owned();
    let (run, observed) = run_observed(agent, &image, &[], &dropped_loader_script(&image));
    assert!(run.stdout.contains("before-ran"), "{run:#?}");
    check(
        &run,
        &observed,
        backend,
        &["loader-ran"],
        &[(via, "overlay-upper", &name)],
    );
}

#[test]
fn lsm_a_dropped_dynamic_loader_is_refused() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    check_dropped_loader(&agent, LSM, "mmap");
}

/// Where the kernel has no `bpf_find_vma` (before 5.17) the signal backend
/// cannot find the interpreter: the start-up log says so, and it runs.
#[test]
fn signal_a_dropped_dynamic_loader_is_refused() {
    let Some((_serial, agent)) = signal(&[]) else {
        return;
    };
    if agent
        .log()
        .contains("the ELF interpreter of an exec is NOT decided")
    {
        let image = image();
        let (run, observed) = run_observed(&agent, &image, &[], &dropped_loader_script(&image));
        assert!(run.stdout.contains("loader-ran"), "{run:#?}");
        assert_eq!(events(&observed, "signal"), Vec::<&Value>::new());
        return;
    }
    check_dropped_loader(&agent, SIGNAL, "exec");
}

/// Other system calls that make a dropped file's mapping executable:
/// `pkey_mprotect`, and `mprotect`, `mmap2` and `old_mmap` through the
/// 32-bit gate (`int $0x80`, which a 64-bit process may use too), where the
/// kernel has 32-bit emulation.
const GATES: &str = "cp /bin/busybox /tmp/code.bin
    /bin/probe pkey-mprotect-exec /tmp/code.bin
    /bin/probe compat-available && {
        /bin/probe compat-mprotect-exec /tmp/code.bin
        /bin/probe compat-mmap2-exec /tmp/code.bin
        /bin/probe compat-old-mmap-exec /tmp/code.bin
    }";

/// `protects`: whether `mprotect` routes are decided (the signal backend
/// needs `bpf_find_vma`, 5.17+; the start-up log says so).
fn check_gates(agent: &Agent, backend: Backend, protects: bool) {
    let (run, observed) = run_observed(agent, &image(), &[], GATES);
    let compat = run.stdout.contains("compat-available: yes");
    if !compat {
        eprintln!("this kernel has no 32-bit emulation: the 32-bit gate is not there to try");
    }
    let protect = ("mprotect", "overlay-upper", "code.bin");
    let map = ("mmap", "overlay-upper", "code.bin");
    let mut expected = Vec::new();
    let mut markers = Vec::new();
    if protects {
        expected.push(protect);
        markers.push("pkey-mprotect-exec: ok");
    } else {
        assert!(run.stdout.contains("pkey-mprotect-exec: ok"), "{run:#?}");
    }
    if compat {
        if protects {
            expected.push(protect);
            markers.push("compat-mprotect-exec: ok");
        }
        expected.extend([map, map]);
        markers.extend(["compat-mmap2-exec: ok", "compat-old-mmap-exec: ok"]);
    }
    check(&run, &observed, backend, &markers, &expected);
}

#[test]
fn lsm_every_system_call_gate_to_an_executable_mapping_is_decided() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    check_gates(&agent, LSM, true);
}

#[test]
fn signal_with_mmap_check_every_system_call_gate_to_an_executable_mapping_is_decided() {
    let Some((_serial, agent)) = signal(&["--signal-mmap-check"]) else {
        return;
    };
    let protects = agent
        .log()
        .contains("adding PROT_EXEC to a mapping of a drift file are decided");
    check_gates(&agent, SIGNAL, protects);
}

/// A dropped script without `#!`: `execve` fails with `ENOEXEC`, and the
/// shell would run it with itself.
const NO_SHEBANG: &str = "printf 'echo no-shebang-ran\\n' > /tmp/no-shebang
    chmod +x /tmp/no-shebang
    /tmp/no-shebang";

fn check_no_shebang(agent: &Agent, backend: Backend) {
    let (run, observed) = run_observed(agent, &image(), &[], NO_SHEBANG);
    check(
        &run,
        &observed,
        backend,
        &["no-shebang-ran"],
        &[("exec", "overlay-upper", "no-shebang")],
    );
}

#[test]
fn lsm_a_dropped_script_without_an_interpreter_line_is_refused() {
    let Some((_serial, agent)) = lsm() else {
        return;
    };
    check_no_shebang(&agent, LSM);
}

#[test]
fn signal_with_mmap_check_a_dropped_script_without_an_interpreter_line_is_refused() {
    let Some((_serial, agent)) = signal(&["--signal-mmap-check"]) else {
        return;
    };
    check_no_shebang(&agent, SIGNAL);
}
