//! Debian kernels for the VM tests, downloaded once into the cache.
//!
//! apt runs with a private configuration under the cache directory (see
//! [`Apt`]). The kernel version is resolved from the suite's
//! `linux-image-amd64` metapackage: ABI numbers change with security updates.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

use crate::{apt::Apt, cmd};

/// A Debian kernel the VM tests run on.
#[derive(Debug)]
pub(crate) struct KernelSpec {
    /// Short name used on the command line (`--kernels 6.1`).
    pub(crate) name: &'static str,
    /// `(archive path, suite)` pairs to search, newest updates last.
    pub(crate) sources: &'static [(&'static str, &'static str)],
    /// sid splits a kernel into linux-image (metadata), linux-binary and
    /// linux-modules packages; the stable suites ship one -unsigned package.
    pub(crate) split_packages: bool,
}

pub(crate) const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        name: "5.10",
        sources: &[
            ("debian", "bullseye"),
            ("debian", "bullseye-updates"),
            ("debian-security", "bullseye-security"),
        ],
        split_packages: false,
    },
    KernelSpec {
        name: "6.1",
        sources: &[
            ("debian", "bookworm"),
            ("debian", "bookworm-updates"),
            ("debian-security", "bookworm-security"),
        ],
        split_packages: false,
    },
    KernelSpec {
        name: "6.12",
        sources: &[
            ("debian", "trixie"),
            ("debian", "trixie-updates"),
            ("debian-security", "trixie-security"),
        ],
        split_packages: false,
    },
    KernelSpec {
        name: "7.2",
        sources: &[("debian", "sid")],
        split_packages: true,
    },
];

/// The kernel `cargo xtask test` always runs.
pub(crate) const DEFAULT_KERNEL: &str = "6.1";

/// Parses `--kernels`: `all`, or a comma-separated list of names.
pub(crate) fn select(list: &str) -> anyhow::Result<Vec<&'static KernelSpec>> {
    if list == "all" {
        return Ok(KERNELS.iter().collect());
    }
    list.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| {
            KERNELS
                .iter()
                .find(|spec| spec.name == name)
                .ok_or_else(|| {
                    let known: Vec<_> = KERNELS.iter().map(|spec| spec.name).collect();
                    anyhow!(
                        "unknown kernel {name:?}; known: {} or all",
                        known.join(", ")
                    )
                })
        })
        .collect()
}

/// A downloaded kernel.
#[derive(Clone, Debug)]
pub(crate) struct Kernel {
    pub(crate) name: &'static str,
    /// Debian's version string, e.g. `6.1.0-56-amd64`.
    pub(crate) version: String,
    pub(crate) vmlinuz: PathBuf,
}

const VERSION_FILE: &str = "version";

/// Downloads `spec` into `dir/<name>` unless it is already there.
pub(crate) fn fetch(spec: &KernelSpec, dir: &Path) -> anyhow::Result<Kernel> {
    let home = dir.join(spec.name);
    let root = home.join("root");
    if let Ok(version) = fs::read_to_string(home.join(VERSION_FILE)) {
        let version = version.trim().to_owned();
        let vmlinuz = vmlinuz(&root, &version);
        if vmlinuz.exists() {
            return Ok(Kernel {
                name: spec.name,
                version,
                vmlinuz,
            });
        }
    }
    eprintln!("setup: downloading Debian's {} kernel", spec.name);
    let apt = Apt::new(&home.join("apt"), spec.sources)?;
    apt.update()?;
    let image = kernel_image_package(&apt)?;
    let version = image
        .strip_prefix("linux-image-")
        .ok_or_else(|| anyhow!("unexpected kernel package name {image}"))?
        .to_owned();
    let packages = if spec.split_packages {
        vec![
            image.clone(),
            format!("linux-binary-{version}"),
            format!("linux-modules-{version}"),
        ]
    } else {
        vec![format!("{image}-unsigned")]
    };
    let debs = home.join("debs");
    if debs.exists() {
        fs::remove_dir_all(&debs)?;
    }
    fs::create_dir_all(&debs)?;
    apt.download(&packages, &debs)?;
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::create_dir_all(&root)?;
    for entry in fs::read_dir(&debs)? {
        let deb = entry?.path();
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }
    fs::remove_dir_all(&debs)?;
    let vmlinuz = vmlinuz(&root, &version);
    if !vmlinuz.exists() {
        bail!(
            "{} has no kernel image at {}",
            packages.join(" "),
            vmlinuz.display()
        );
    }
    // Written last: its presence means the kernel is complete.
    fs::write(home.join(VERSION_FILE), &version)?;
    Ok(Kernel {
        name: spec.name,
        version,
        vmlinuz,
    })
}

/// Where the packages put the kernel image. virtme-ng finds the modules from
/// there (the `lib/modules/VERSION` next to it) and runs depmod itself.
fn vmlinuz(root: &Path, version: &str) -> PathBuf {
    let boot = root.join(format!("boot/vmlinuz-{version}"));
    if boot.exists() {
        boot
    } else {
        root.join(format!("usr/lib/modules/{version}/vmlinuz"))
    }
}

/// The versioned kernel image package the candidate version of the
/// `linux-image-amd64` metapackage depends on (sid's also depends on
/// linux-base-amd64, so the first dependency will not do).
fn kernel_image_package(apt: &Apt) -> anyhow::Result<String> {
    let depends = cmd::output(
        apt.command("apt-cache")
            .args(["depends", "linux-image-amd64"]),
    )?;
    depends
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|package| {
            package
                .strip_prefix("linux-image-")
                .is_some_and(|version| version.starts_with(|c: char| c.is_ascii_digit()))
        })
        .map(str::to_owned)
        .with_context(|| {
            format!("linux-image-amd64 depends on no versioned kernel image:\n{depends}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_kernels_by_name_or_all() {
        assert_eq!(select("all").unwrap().len(), KERNELS.len());
        let picked: Vec<_> = select("6.1, 7.2").unwrap().iter().map(|k| k.name).collect();
        assert_eq!(picked, ["6.1", "7.2"]);
        let error = select("4.19").unwrap_err().to_string();
        assert!(error.contains("4.19") && error.contains("6.1"), "{error}");
    }

    #[test]
    fn the_default_kernel_exists() {
        assert!(select(DEFAULT_KERNEL).is_ok());
    }
}
