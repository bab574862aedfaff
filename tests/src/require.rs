//! Requirement checks. A test that cannot run here says why and returns;
//! `ENFORCER_TEST_REQUIRE` (a comma-separated list of requirement names, set
//! by `cargo xtask test`) turns such a skip into a failure, so a test run
//! that is meant to exercise a feature cannot pass by skipping it.

use std::path::{Path, PathBuf};

/// Environment variable listing requirements that must be met.
pub const REQUIRE_ENV: &str = "ENFORCER_TEST_REQUIRE";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// Running as root (BPF, mounts, namespaces).
    Root,
    /// BPF LSM programs load and attach. Probed by starting the agent with
    /// `--backend lsm`: listing `bpf` as an active LSM is not enough, kernels
    /// can still refuse the program.
    Lsm,
    /// Podman runs containers (installed, cgroup v2).
    Podman,
    /// A cgroup v2 hierarchy is mounted (containers in named groups).
    Cgroup2,
    /// containerd runs containers through its CRI plugin (installed,
    /// cgroup v2).
    Containerd,
    /// The Debian image `cargo xtask setup` builds is there ([`debian`]).
    Debian,
}

impl Requirement {
    const fn name(self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::Lsm => "lsm",
            Self::Podman => "podman",
            Self::Cgroup2 => "cgroup2",
            Self::Containerd => "containerd",
            Self::Debian => "debian",
        }
    }

    /// Whether this test run demands the requirement.
    pub fn is_required(self) -> bool {
        std::env::var(REQUIRE_ENV)
            .is_ok_and(|list| list.split(',').any(|name| name.trim() == self.name()))
    }
}

/// Reports that `requirement` is not met: panics if the run requires it,
/// otherwise prints why the test is skipped.
pub fn unavailable(requirement: Requirement, why: &str) {
    assert!(
        !requirement.is_required(),
        "{REQUIRE_ENV} requires {}, but {why}",
        requirement.name()
    );
    eprintln!("SKIPPED: {} is not available: {why}", requirement.name());
}

/// Set by `cargo xtask test` inside its VMs, where QEMU emulates the CPU.
pub const EMULATED_ENV: &str = "ENFORCER_TEST_EMULATED";

/// False (with the reason printed) in the emulated VMs, for tests of what
/// does not depend on the kernel (the audit sinks) or of volume (a flood of
/// execs): the host run covers them, and emulation would make them the
/// slowest tests of each VM.
#[must_use]
pub fn not_emulated(what: &str) -> bool {
    unless_set(EMULATED_ENV, "in the emulated VM", what, "the host run")
}

/// Set by `cargo xtask test` in the VMs of other kernels than the default
/// one.
pub const OTHER_KERNEL_ENV: &str = "ENFORCER_TEST_OTHER_KERNEL";

/// False (with the reason printed) in the VMs of other kernels than the
/// default one, for tests of what the agent decides in userspace the same
/// way on every kernel (how a policy is written, when a program is
/// attached): the host and the default kernel's VM cover them. What the
/// kernel programs decide is tested on every kernel.
#[must_use]
pub fn not_other_kernel(what: &str) -> bool {
    unless_set(
        OTHER_KERNEL_ENV,
        "on this kernel",
        what,
        "the default kernel's VM and the host",
    )
}

/// True unless the test run set `env`; then false, with the skip printed.
fn unless_set(env: &str, where_: &str, what: &str, covered_by: &str) -> bool {
    if std::env::var_os(env).is_some() {
        eprintln!("SKIPPED {where_} ({what}): {covered_by} covers it");
        return false;
    }
    true
}

/// True when running as root; otherwise reports the skip.
#[must_use]
pub fn root() -> bool {
    // SAFETY: geteuid cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    if !is_root {
        unavailable(
            Requirement::Root,
            "the tests load BPF programs and mount filesystems",
        );
    }
    is_root
}

/// Path of a program the tests run, with a hint if it is missing.
pub fn program<'a>(path: &'a str, package: &str) -> &'a Path {
    let path = Path::new(path);
    assert!(
        path.exists(),
        "{} is missing: install the Debian package {package} (cargo xtask setup does)",
        path.display()
    );
    path
}

/// Whether a container runtime can run containers the agent names: its
/// program `path` is installed (from Debian's `package`) and cgroup v2 is
/// mounted; otherwise reports the skip of `requirement`.
#[must_use]
pub fn runtime(requirement: Requirement, path: &str, package: &str) -> bool {
    if !Path::new(path).exists() {
        unavailable(
            requirement,
            &format!("{path} is missing (cargo xtask setup installs the Debian package {package})"),
        );
        return false;
    }
    if !Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        unavailable(
            requirement,
            "/sys/fs/cgroup is not cgroup v2, which the agent names containers from",
        );
        return false;
    }
    true
}

/// How many times longer the emulated VMs may take than the host. Start-up
/// of the agent (BTF, three programs of 55,000 verified instructions each)
/// takes 6 s in a 7.2 VM with one emulated CPU that has a core to itself;
/// the test run boots five such VMs at once on two cores, and a busy CI
/// machine stretched that past a minute.
const EMULATION_SLOWDOWN: u32 = 4;

/// `limit`, a deadline that detects a hang, stretched in the emulated VMs.
/// Deadlines that check a speed target do not go through here.
#[must_use]
pub fn patience(limit: std::time::Duration) -> std::time::Duration {
    static EMULATED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *EMULATED.get_or_init(|| std::env::var_os(EMULATED_ENV).is_some()) {
        limit * EMULATION_SLOWDOWN
    } else {
        limit
    }
}

/// Where `cargo xtask test` says the Debian image is.
pub const DEBIAN_ENV: &str = "ENFORCER_TEST_DEBIAN";

/// The Debian image `cargo xtask setup` builds (a `debootstrap
/// --variant=minbase bookworm` root filesystem in `root/`, and in `debs/`
/// the packages of wget and less and of what they need that minbase
/// lacks):
/// `$ENFORCER_TEST_DEBIAN`, else where setup puts it in the cache
/// (`$ENFORCER_CACHE`, `$XDG_CACHE_HOME/enforcer` or `~/.cache/enforcer`,
/// then `debian-bookworm`). `None`, with the skip reported, when it is not
/// there.
#[must_use]
pub fn debian() -> Option<PathBuf> {
    let dir = std::env::var_os(DEBIAN_ENV).map(PathBuf::from).or_else(|| {
        let cache = std::env::var_os("ENFORCER_CACHE")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME").map(|dir| Path::new(&dir).join("enforcer"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/enforcer"))
            })?;
        Some(cache.join("debian-bookworm"))
    });
    match dir {
        Some(dir) if dir.join("root/usr/bin/dpkg").exists() && dir.join("debs").is_dir() => {
            Some(dir)
        }
        Some(dir) => {
            unavailable(
                Requirement::Debian,
                &format!(
                    "{} holds no Debian image (`cargo xtask setup` builds it)",
                    dir.display()
                ),
            );
            None
        }
        None => {
            unavailable(
                Requirement::Debian,
                &format!("neither {DEBIAN_ENV} nor HOME is set"),
            );
            None
        }
    }
}
