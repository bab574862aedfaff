//! apt with a private configuration: a source list, list directory and
//! package cache of its own under the cache directory, so that the machine's
//! own apt configuration and state are never touched.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::cmd;

/// Debian's own mirror network, which the build machines' apt sources use
/// too.
pub(crate) const MIRROR: &str = "http://deb.debian.org";

pub(crate) struct Apt {
    options: Vec<String>,
}

impl Apt {
    /// apt keeping its state in `dir`, with `(archive path, suite)` pairs
    /// (`("debian", "bookworm")`) as its sources.
    pub(crate) fn new(dir: &Path, sources: &[(&str, &str)]) -> anyhow::Result<Self> {
        fs::create_dir_all(dir.join("lists/partial"))?;
        fs::create_dir_all(dir.join("cache/archives/partial"))?;
        let mut list_text = String::new();
        for (archive, suite) in sources {
            let _ = writeln!(
                list_text,
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                 {MIRROR}/{archive} {suite} main"
            );
        }
        let list = dir.join("sources.list");
        fs::write(&list, list_text)?;
        Ok(Self {
            options: vec![
                format!("Dir::Etc::SourceList={}", list.display()),
                "Dir::Etc::SourceParts=/dev/null".to_owned(),
                format!("Dir::State::Lists={}", dir.join("lists").display()),
                format!("Dir::Cache={}", dir.join("cache").display()),
                "Debug::NoLocking=1".to_owned(),
                // The private directories belong to the caller, not to _apt.
                "APT::Sandbox::User=root".to_owned(),
            ],
        })
    }

    /// Resolves dependencies against the packages installed in the root
    /// filesystem `root` rather than on this machine.
    pub(crate) fn for_root(mut self, root: &Path) -> Self {
        self.options.push(format!(
            "Dir::State::status={}",
            root.join("var/lib/dpkg/status").display()
        ));
        self
    }

    pub(crate) fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        for option in &self.options {
            command.arg("-o").arg(option);
        }
        command
    }

    pub(crate) fn update(&self) -> anyhow::Result<()> {
        cmd::run(self.command("apt-get").args(["update", "-q"]))
    }

    /// Downloads `packages` alone into `into`.
    pub(crate) fn download(&self, packages: &[String], into: &Path) -> anyhow::Result<()> {
        cmd::run(
            self.command("apt-get")
                .current_dir(into)
                .arg("download")
                .args(packages),
        )
    }

    /// Downloads `packages` and what they depend on that is not installed
    /// (recommendations left out, as container images leave them) into
    /// `into`; returns the files.
    pub(crate) fn download_with_dependencies(
        &self,
        packages: &[&str],
        into: &Path,
    ) -> anyhow::Result<Vec<PathBuf>> {
        fs::create_dir_all(into.join("partial"))?;
        cmd::run(
            self.command("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .arg("-o")
                .arg(format!("Dir::Cache::archives={}", into.display()))
                .args([
                    "install",
                    "--download-only",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                ])
                .args(packages),
        )?;
        // apt's own bookkeeping, not packages.
        fs::remove_dir_all(into.join("partial"))?;
        let _ = fs::remove_file(into.join("lock"));
        let mut debs: Vec<PathBuf> = fs::read_dir(into)?
            .map(|entry| entry.map(|entry| entry.path()))
            .collect::<Result<_, _>>()?;
        debs.retain(|path| path.extension().is_some_and(|ext| ext == "deb"));
        debs.sort();
        Ok(debs)
    }
}
