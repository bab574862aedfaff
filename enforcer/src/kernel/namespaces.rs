//! The host's mount namespace, which separates host processes from container
//! processes.

use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// PID 1's mount namespace: the host's, also when the agent itself runs in a
/// container (a `DaemonSet` pod with `hostPID: true`).
pub const INIT_MOUNT_NS: &str = "/proc/1/ns/mnt";
const SELF_MOUNT_NS: &str = "/proc/self/ns/mnt";

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("reading mount namespace {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a namespace file (inode {inode} does not fit a namespace id)")]
    NotANamespace { path: PathBuf, inode: u64 },
}

/// The mount namespace treated as the host's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostMountNs {
    /// Namespace inode number, as the kernel's `ns_common.inum`.
    pub inum: u32,
    /// The file it was read from.
    pub source: PathBuf,
    /// Set when the agent could not read [`INIT_MOUNT_NS`] and used its own
    /// mount namespace instead; says why.
    pub fallback: Option<String>,
}

fn inum(path: &Path) -> Result<u32, NamespaceError> {
    let inode = std::fs::metadata(path)
        .map_err(|source| NamespaceError::Read {
            path: path.to_owned(),
            source,
        })?
        .ino();
    u32::try_from(inode).map_err(|_| NamespaceError::NotANamespace {
        path: path.to_owned(),
        inode,
    })
}

/// Resolves the host mount namespace: `explicit` if given, else PID 1's,
/// else (when PID 1's cannot be read, as in some sandboxes) the agent's own.
pub fn host_mount_ns(explicit: Option<&Path>) -> Result<HostMountNs, NamespaceError> {
    if let Some(path) = explicit {
        return Ok(HostMountNs {
            inum: inum(path)?,
            source: path.to_owned(),
            fallback: None,
        });
    }
    match inum(Path::new(INIT_MOUNT_NS)) {
        Ok(inum) => Ok(HostMountNs {
            inum,
            source: PathBuf::from(INIT_MOUNT_NS),
            fallback: None,
        }),
        Err(init_error) => Ok(HostMountNs {
            inum: inum(Path::new(SELF_MOUNT_NS))?,
            source: PathBuf::from(SELF_MOUNT_NS),
            fallback: Some(init_error.to_string()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn own_namespace_matches_proc_self() {
        let own = host_mount_ns(Some(Path::new(SELF_MOUNT_NS))).unwrap();
        let link = std::fs::read_link(SELF_MOUNT_NS).unwrap();
        assert_eq!(link.to_string_lossy(), format!("mnt:[{}]", own.inum));
    }

    #[test]
    fn default_resolution_always_yields_a_namespace() {
        let host = host_mount_ns(None).unwrap();
        assert_ne!(host.inum, 0);
        // Either PID 1's namespace was readable, or the fallback says why not.
        assert_eq!(
            host.fallback.is_some(),
            host.source == Path::new(SELF_MOUNT_NS)
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = host_mount_ns(Some(Path::new("/nonexistent/ns/mnt"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ns/mnt"), "{err}");
    }
}
