//! Kernel features the backends depend on.

use std::{
    ffi::CString,
    fs, io,
    path::{Path, PathBuf},
};

/// The list of active LSMs, in the order the kernel calls them.
pub const LSM_LIST: &str = "/sys/kernel/security/lsm";
const SECURITYFS: &str = "/sys/kernel/security";

#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("securityfs is not mounted at {SECURITYFS} and mounting it failed: {0}")]
    MountSecurityfs(#[source] io::Error),
}

/// The active LSMs as the kernel lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveLsms(pub Vec<String>);

impl ActiveLsms {
    pub fn parse(list: &str) -> Self {
        Self(
            list.trim()
                .split(',')
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    pub fn contains_bpf(&self) -> bool {
        self.0.iter().any(|name| name == "bpf")
    }
}

impl std::fmt::Display for ActiveLsms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// Reads the active LSM list, mounting securityfs first if nothing is mounted
/// there (minimal hosts and some container runtimes leave it unmounted).
pub fn active_lsms() -> Result<ActiveLsms, FeatureError> {
    let path = Path::new(LSM_LIST);
    if !path.exists() {
        mount_securityfs().map_err(FeatureError::MountSecurityfs)?;
        tracing::info!("mounted securityfs at {SECURITYFS} to read the active LSM list");
    }
    let list = fs::read_to_string(path).map_err(|source| FeatureError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(ActiveLsms::parse(&list))
}

fn mount_securityfs() -> io::Result<()> {
    mount_pseudo_fs("securityfs", SECURITYFS)
}

/// Mounts the kernel's pseudo filesystem `fs` at `target`.
fn mount_pseudo_fs(fs: &str, target: &str) -> io::Result<()> {
    let source = CString::new(fs)?;
    let target = CString::new(target)?;
    // SAFETY: all pointers are valid NUL-terminated strings for the call's
    // duration; data may be null for these filesystems.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `uname -r`.
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned())
}

/// Whether the kernel has overlayfs registered.
fn overlayfs_registered() -> bool {
    fs::read_to_string("/proc/filesystems").is_ok_and(|list| {
        list.lines()
            .any(|line| line.split_whitespace().last() == Some("overlay"))
    })
}

/// Makes sure overlayfs (and with it the BTF of `struct ovl_inode`) is in the
/// kernel. On kernels where overlay is a module it is usually loaded by the
/// first container start; the agent may start before that.
pub fn ensure_overlayfs() -> Result<(), String> {
    if overlayfs_registered() {
        return Ok(());
    }
    let output = std::process::Command::new("modprobe")
        .arg("overlay")
        .output()
        .map_err(|error| format!("overlayfs is not loaded and running modprobe failed: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "overlayfs is not loaded and `modprobe overlay` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    tracing::info!("loaded the overlay module");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ActiveLsms;

    #[test]
    fn parses_the_lsm_list() {
        let lsms = ActiveLsms::parse("lockdown,capability,landlock,bpf\n");
        assert_eq!(lsms.0, ["lockdown", "capability", "landlock", "bpf"]);
        assert!(lsms.contains_bpf());
        assert_eq!(lsms.to_string(), "lockdown,capability,landlock,bpf");
    }

    #[test]
    fn bpf_must_be_a_whole_name() {
        assert!(!ActiveLsms::parse("capability,bpfish,apparmor").contains_bpf());
        assert!(!ActiveLsms::parse("").contains_bpf());
    }
}
