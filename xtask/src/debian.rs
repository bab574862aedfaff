//! A Debian image for the tests: the root filesystem of
//! `debootstrap --variant=minbase bookworm` (what Debian's container images
//! hold), and the packages of `wget` and `less` and of what they need that
//! minbase lacks, for a test to install in a running container (the VMs
//! have no network to download them from).

use std::{
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::ensure;

use crate::{
    apt::{Apt, MIRROR},
    cmd::{self, as_root},
    setup::apt_install,
};

/// The image's directory in the cache: `root/`, the root filesystem, and
/// `debs/`, the packages. Its presence means both are complete: they are
/// made under another name and renamed at the end, so an interrupted setup
/// starts over instead of leaving half a root filesystem that counts as
/// done. A change of what goes in needs a new name.
const DIR: &str = "debian-bookworm";
const SUITE: &str = "bookworm";
/// The packages the tests install in a running container: a program, and
/// one with maintainer scripts.
const PACKAGES: &[&str] = &["wget", "less"];

/// The image's directory (see [`DIR`]), built unless it is there.
pub(crate) fn fetch(cache: &Path) -> anyhow::Result<PathBuf> {
    let home = cache.join(DIR);
    if home.is_dir() {
        return Ok(home);
    }
    apt_install(&["debootstrap"])?;
    let started = Instant::now();
    let partial = cache.join(format!("{DIR}.partial"));
    if partial.exists() {
        // debootstrap's files belong to root. An interrupted debootstrap can
        // leave /proc, /sys or (where it runs in a container) the host's
        // /dev mounted in the root: rm must not descend into them (it fails
        // instead, naming the mount).
        cmd::run(
            as_root("rm")
                .args(["-rf", "--one-file-system"])
                .arg(&partial),
        )?;
    }
    fs::create_dir_all(&partial)?;
    eprintln!("setup: building a Debian {SUITE} root filesystem (debootstrap, minbase)");
    let root = partial.join("root");
    cmd::run(
        as_root("debootstrap")
            .args(["--variant=minbase", SUITE])
            .arg(&root)
            .arg(format!("{MIRROR}/debian")),
    )?;
    // debootstrap leaves the packages it installed and its package lists
    // in apt's directories; Debian's container images carry neither.
    cmd::run(
        as_root("find")
            .arg(root.join("var/cache/apt/archives"))
            .arg(root.join("var/lib/apt/lists"))
            .args(["-maxdepth", "1", "-type", "f", "-delete"]),
    )?;

    // The machine's apt resolves the packages' dependencies against what is
    // installed in the new root, so the root stays as debootstrap left it
    // (no package lists, nothing mounted into it).
    let apt_dir = partial.join("apt");
    let apt = Apt::new(&apt_dir, &[("debian", SUITE)])?.for_root(&root);
    apt.update()?;
    let debs = apt.download_with_dependencies(PACKAGES, &partial.join("debs"))?;
    fs::remove_dir_all(&apt_dir)?;
    for package in PACKAGES {
        ensure!(
            debs.iter().any(|deb| deb
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with(&format!("{package}_")))),
            "apt downloaded no {package} package: {debs:?}"
        );
    }

    fs::rename(&partial, &home)?;
    eprintln!(
        "setup: Debian {SUITE} root filesystem and {} packages ({}) ready in {:.0?}",
        debs.len(),
        debs.iter()
            .filter_map(|deb| deb.file_name())
            .map(|name| name.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        started.elapsed()
    );
    Ok(home)
}
