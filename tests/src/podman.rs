//! Real Podman containers: a storage root of its own on a fresh tmpfs
//! (overlayfs needs an upper layer that is not itself on overlayfs, as the
//! VMs' /tmp is), images imported from image directories (`podman import`:
//! no registry), crun with the cgroupfs manager (the VMs run no systemd) and
//! no network.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{
    agent,
    container::{Image, Scratch, tmpfs_scratch},
    require::{self, Requirement},
    succeeded,
};

#[derive(Debug)]
pub struct Podman {
    dir: Scratch,
    mounted: bool,
}

impl Podman {
    /// A Podman with storage of its own, or `None` (with the skip said) where
    /// Podman cannot run containers: not installed, or no cgroup v2.
    pub fn new() -> anyhow::Result<Option<Self>> {
        if !require::runtime(Requirement::Podman, "/usr/bin/podman", "podman") {
            return Ok(None);
        }
        let dir = tmpfs_scratch("podman")?;
        let podman = Self { dir, mounted: true };
        fs::create_dir_all(podman.hooks_dir())?;
        Ok(Some(podman))
    }

    /// Podman's storage root (`--root`; the agent's `--podman-storage`).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where image layers are unpacked (the agent's `--image-store`).
    pub fn layers(&self) -> String {
        format!("{}/overlay/*/diff", self.storage().display())
    }

    fn hooks_dir(&self) -> PathBuf {
        self.dir.path().join("hooks.d")
    }

    fn command(&self) -> Command {
        let mut command = Command::new("podman");
        command
            .arg("--root")
            .arg(self.storage())
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args([
                "--storage-driver",
                "overlay",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
                "--runtime",
                "crun",
            ])
            .arg("--hooks-dir")
            .arg(self.hooks_dir());
        command
    }

    /// Imports the image directory as `reference` (`localhost/NAME:TAG`).
    pub fn import(&self, image: &Image, reference: &str) -> anyhow::Result<()> {
        self.import_with(image, reference, &[])
    }

    /// [`Self::import`] with Dockerfile instructions for the image's
    /// configuration (`podman import --change`, e.g. `CMD [...]`).
    pub fn import_with(
        &self,
        image: &Image,
        reference: &str,
        changes: &[&str],
    ) -> anyhow::Result<()> {
        let tar = self.dir.path().join("image.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(image.root())
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .context("running tar")?;
        if !status.success() {
            bail!("packing {} failed", image.root().display());
        }
        let imported = succeeded(
            self.command()
                .arg("import")
                .arg("--quiet")
                .args(changes.iter().flat_map(|change| ["--change", change]))
                .arg(&tar)
                .arg(reference),
            &format!("podman import {reference}"),
        );
        let _ = fs::remove_file(&tar);
        imported.map(drop)
    }

    /// Writes image `reference` to `archive` (`podman save`, Docker's
    /// archive format, which names the image).
    pub fn save(&self, reference: &str, archive: &Path) -> anyhow::Result<()> {
        succeeded(
            self.command()
                .args(["save", "--quiet", "--format", "docker-archive", "--output"])
                .arg(archive)
                .arg(reference),
            &format!("podman save {reference}"),
        )
        .map(drop)
    }

    /// Installs the agent's OCI hook (as `enforcer hook oci-config` writes
    /// it) for the agent listening at `socket`.
    pub fn install_hook(&self, socket: &Path) -> anyhow::Result<()> {
        let output = succeeded(
            Command::new(agent::binary())
                .args(["hook", "oci-config", "--socket"])
                .arg(socket),
            "enforcer hook oci-config",
        )?;
        fs::write(self.hooks_dir().join("enforcer.json"), &output.stdout)?;
        Ok(())
    }

    /// `podman run --rm --name NAME IMAGE ARGS...`, to its end.
    pub fn run(&self, name: &str, image: &str, args: &[&str]) -> anyhow::Result<Output> {
        self.run_with(name, &[], image, args)
    }

    /// [`Self::run`] with more of `podman run`'s options.
    pub fn run_with(
        &self,
        name: &str,
        options: &[&str],
        image: &str,
        args: &[&str],
    ) -> anyhow::Result<Output> {
        self.command()
            .args(["run", "--rm", "--network", "none", "--name", name])
            .args(options)
            .arg(image)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running podman run")
    }
}

impl Podman {
    /// `podman run -d --name NAME IMAGE ARGS...`: a container that keeps
    /// running (removed with the others on drop).
    pub fn start(&self, name: &str, image: &str, args: &[&str]) -> anyhow::Result<()> {
        succeeded(
            self.command()
                .args(["run", "--detach", "--network", "none", "--name", name])
                .arg(image)
                .args(args)
                .stdin(Stdio::null()),
            &format!("podman run --detach {name}"),
        )
        .map(drop)
    }

    /// `podman exec NAME ARGS...`: a session that enters the running
    /// container from outside, as `kubectl exec` does.
    pub fn exec(&self, name: &str, args: &[&str]) -> anyhow::Result<Output> {
        self.command()
            .arg("exec")
            .arg(name)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running podman exec")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .command()
            .args(["rm", "--all", "--force"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if self.mounted {
            // Podman leaves its storage's own mounts; lazily, all of them.
            let _ = Command::new("umount")
                .arg("-R")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}
