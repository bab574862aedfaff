//! `cargo xtask setup`: everything the build and the tests need, installed
//! idempotently on a Debian/Ubuntu machine that has rustup. Each step checks
//! first and does nothing when its result is already there.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    cmd::{self, as_root},
    debian,
    kernels::{self, KernelSpec},
};

/// Debian packages for building the kernel programs: bpf-linker links
/// against LLVM 22, the LLVM of the nightly rustc.
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// Debian packages for the tests: QEMU for the kernel VMs, a static busybox
/// for test container images (and virtme-ng's initramfs), kmod for depmod,
/// Podman and crun for real containers in the VMs, containerd (with runc)
/// for Kubernetes' runtime driven over its CRI API, rpm (rpmbuild) for an
/// image with an rpm database, Berkeley DB's `db_load` for one with
/// rpm's older Berkeley DB database, and rsyslog, the daemon the syslog
/// sink is tested against.
const TEST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "podman",
    "crun",
    "containerd",
    "rpm",
    "db5.3-util",
    "rsyslog",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const VIRTME_NG_VERSION: &str = "1.42";
/// The LLVM major version of the nightly toolchain and of bpf-linker.
const LLVM_MAJOR: &str = "22";

/// Where downloads and tools live between runs: `$ENFORCER_CACHE`, else
/// `$XDG_CACHE_HOME/enforcer`, else `~/.cache/enforcer`.
pub(crate) fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = env::var_os("ENFORCER_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("enforcer"));
    }
    let home = env::var_os("HOME").context("HOME is not set; set ENFORCER_CACHE")?;
    Ok(PathBuf::from(home).join(".cache/enforcer"))
}

/// What to set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Enough to build and run the agent.
    Build,
    /// Also everything the tests need, with these kernels.
    Test,
}

pub(crate) fn setup(scope: Scope, kernels: &[&KernelSpec]) -> anyhow::Result<Tools> {
    let mut packages = BUILD_PACKAGES.to_vec();
    if scope == Scope::Test {
        packages.extend(TEST_PACKAGES);
    }
    apt_install(&packages)?;
    nightly()?;
    bpf_linker()?;
    let cache = cache_dir()?;
    let vng = if scope == Scope::Test {
        Some(virtme_ng(&cache)?)
    } else {
        None
    };
    let kernels = kernels
        .iter()
        .map(|spec| kernels::fetch(spec, &cache.join("kernels")))
        .collect::<anyhow::Result<_>>()?;
    let debian = if scope == Scope::Test {
        Some(debian::fetch(&cache)?)
    } else {
        None
    };
    Ok(Tools {
        vng,
        kernels,
        debian,
    })
}

/// What setup provides to the other tasks.
#[derive(Debug)]
pub(crate) struct Tools {
    /// The virtme-ng command.
    pub(crate) vng: Option<PathBuf>,
    pub(crate) kernels: Vec<kernels::Kernel>,
    /// The Debian image of the tests (see `debian::fetch`).
    pub(crate) debian: Option<PathBuf>,
}

fn dpkg_installed(package: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|status| status.trim() == "install ok installed")
}

pub(crate) fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| !dpkg_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages {}", missing.join(" "));
    // Package lists on a fresh machine can predate the packages (llvm-22
    // arrived through bookworm-security).
    cmd::run(as_root("apt-get").arg("update").arg("-q"))?;
    cmd::run(
        as_root("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
}

/// The nightly toolchain builds the kernel programs (`-Z build-std=core`);
/// its LLVM must be the one bpf-linker is built against.
fn nightly() -> anyhow::Result<()> {
    let version = cmd::output(Command::new("rustc").args(["+nightly", "-vV"])).context(
        "the nightly Rust toolchain is missing: install it with `rustup toolchain install nightly` \
         (its LLVM must be version 22)",
    )?;
    let llvm = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .unwrap_or("unknown");
    if llvm.split('.').next() != Some(LLVM_MAJOR) {
        bail!(
            "nightly rustc uses LLVM {llvm}, but bpf-linker is built against LLVM {LLVM_MAJOR} \
             (llvm-{LLVM_MAJOR}-dev); use a nightly with LLVM {LLVM_MAJOR}"
        );
    }
    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if !installed.lines().any(|line| line.starts_with("rust-src")) {
        cmd::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    let current = cmd::output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if current.trim() == format!("bpf-linker {BPF_LINKER_VERSION}") {
        return Ok(());
    }
    let llvm_bin = format!("/usr/lib/llvm-{LLVM_MAJOR}/bin");
    let path = env::var("PATH").unwrap_or_default();
    cmd::run(
        Command::new("cargo")
            .env("PATH", format!("{llvm_bin}:{path}"))
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM_MAJOR}"),
            ]),
    )
}

/// virtme-ng, in a virtualenv of its own so that the system Python stays
/// untouched (Debian's refuses plain `pip install`).
fn virtme_ng(cache: &Path) -> anyhow::Result<PathBuf> {
    let venv = cache.join("venv");
    let vng = venv.join("bin/vng");
    let version = cmd::output(Command::new(&vng).arg("--version")).unwrap_or_default();
    if version.split_whitespace().last() == Some(VIRTME_NG_VERSION) {
        return Ok(vng);
    }
    std::fs::create_dir_all(cache)?;
    if !cmd::succeeds(
        Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    ) {
        // Debian ships venv's pip bootstrap separately.
        apt_install(&["python3-venv"])?;
        cmd::run(
            Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(&venv),
        )?;
    }
    cmd::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("virtme-ng=={VIRTME_NG_VERSION}")),
    )?;
    Ok(vng)
}
