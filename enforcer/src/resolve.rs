//! vShield paths into file identities.
//!
//! A vShield's files are paths or globs in a container (or on the host). They
//! are looked up in every root the agent knows for the vShield's scope: for
//! containers, the image layers of the container runtimes' stores and the
//! root of every running container; for the host, its root. Each match is
//! opened `O_PATH` (no open hook runs, so an enforced vShield does not stop
//! its own resolution) with `RESOLVE_IN_ROOT`, so that symlinks resolve
//! inside the root they belong to, and its identity is computed by the kernel
//! program the hooks use (`vshield_identity`, run with `BPF_PROG_TEST_RUN`).
//! An image layer's files have the identity the same file has in every
//! container of that image, started before or after the agent.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    fs, io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{RawTracePoint, RawTracePointRunOptions, TestRun as _},
};
use enforcer_common::FileId;
use globset::GlobBuilder;

use crate::{
    backend::VSHIELD_IDENTITY,
    kernel::host::{HostIdentity, container_processes},
    maps::{self, MapAccessError},
};

/// Where container runtimes keep image layers, as globs whose matches are
/// layer roots: Podman and CRI-O (containers-storage), containerd, Docker.
pub const DEFAULT_IMAGE_STORES: &[&str] = &[
    "/var/lib/containers/storage/overlay/*/diff",
    "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/*/fs",
    "/var/lib/docker/overlay2/*/diff",
];

/// Matches a glob may expand to before the rest are ignored (with an error).
const MATCHES_MAX: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("the kernel object has no program {VSHIELD_IDENTITY}")]
    MissingProgram,
    #[error("running {VSHIELD_IDENTITY}: {0}")]
    Run(#[source] aya::programs::ProgramError),
    #[error("{VSHIELD_IDENTITY} could not read the identity of {path}")]
    Kernel { path: PathBuf },
    #[error(transparent)]
    Map(#[from] MapAccessError),
    #[error("file glob {glob:?}: {reason}")]
    Glob { glob: String, reason: String },
}

/// A directory tree vShield paths are looked up in.
#[derive(Debug)]
pub struct Root {
    /// For logs: the layer directory, `/proc/PID/root`, or `/`.
    pub name: PathBuf,
    dir: OwnedFd,
}

impl Root {
    /// Opens `path` as a root.
    pub fn open(path: &Path) -> io::Result<Self> {
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a valid NUL-terminated path; the descriptor is owned below.
        let fd = unsafe {
            libc::open(
                c_path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            name: path.to_owned(),
            // SAFETY: `fd` was just opened and is not owned elsewhere.
            dir: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Opens `relative` (no leading `/`) under this root, resolving every
    /// symlink as if the root were `/`.
    fn open_in(&self, relative: &Path, flags: i32) -> io::Result<OwnedFd> {
        let c_path = CString::new(relative.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `open_how` is plain integers; all-zero is valid.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = u64::from((flags | libc::O_CLOEXEC).cast_unsigned());
        how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: valid directory descriptor, path and `open_how` of the
        // size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.dir.as_raw_fd(),
                c_path.as_ptr(),
                &raw const how,
                size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor the kernel just returned, owned from here on.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Whether `path` (absolute, in this root) is a regular file, without
    /// following a symlink in its last component (a package's symlinks are
    /// listed beside their targets).
    pub fn is_regular_file(&self, path: &str) -> bool {
        let relative = Path::new(path.trim_start_matches('/'));
        let Ok(fd) = self.open_in(relative, libc::O_PATH | libc::O_NOFOLLOW) else {
            return false;
        };
        // SAFETY: `fd` is valid for the call; `stat` is a valid out-pointer.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let ok = unsafe { libc::fstat(fd.as_raw_fd(), &raw mut stat) } == 0;
        ok && stat.st_mode & libc::S_IFMT == libc::S_IFREG
    }

    /// The contents of `path` (absolute, in this root), at most `limit`
    /// bytes; longer files are an error.
    pub fn read(&self, path: &str, limit: u64) -> io::Result<Vec<u8>> {
        use std::io::Read as _;
        let relative = Path::new(path.trim_start_matches('/'));
        let file = fs::File::from(self.open_in(relative, libc::O_RDONLY)?);
        let mut contents = Vec::new();
        file.take(limit + 1).read_to_end(&mut contents)?;
        if contents.len() as u64 > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{path} is larger than {limit} bytes"),
            ));
        }
        Ok(contents)
    }

    /// Opens `path` (absolute, in this root) for reading.
    pub fn open_file(&self, path: &str) -> io::Result<fs::File> {
        let relative = Path::new(path.trim_start_matches('/'));
        Ok(fs::File::from(self.open_in(relative, libc::O_RDONLY)?))
    }

    /// Whether `path` (absolute, in this root) exists.
    pub fn exists(&self, path: &str) -> bool {
        self.open_in(Path::new(path.trim_start_matches('/')), libc::O_PATH)
            .is_ok()
    }

    /// The names in directory `relative`, with whether each is a directory
    /// (not following symlinks).
    pub fn list(&self, relative: &Path) -> Vec<(std::ffi::OsString, bool)> {
        let Ok(dir) = self.open_in(relative, libc::O_RDONLY | libc::O_DIRECTORY) else {
            return Vec::new();
        };
        let Ok(entries) = fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|entry| {
                let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
                (entry.file_name(), is_dir)
            })
            .collect()
    }

    /// The paths under this root (relative, no leading `/`) that `glob`
    /// (absolute) matches: regular files only, at most [`MATCHES_MAX`].
    /// `*`, `?`, `[...]` and `{a,b}` match within one component, `**` any
    /// number of components.
    pub fn expand(&self, glob: &str) -> Result<Vec<PathBuf>, ResolveError> {
        let components: Vec<&str> = glob
            .trim_start_matches('/')
            .split('/')
            .filter(|part| !part.is_empty())
            .collect();
        let mut found = Vec::new();
        self.walk(Path::new(""), &components, glob, &mut found)?;
        Ok(found)
    }

    fn walk(
        &self,
        at: &Path,
        rest: &[&str],
        glob: &str,
        found: &mut Vec<PathBuf>,
    ) -> Result<(), ResolveError> {
        let Some((first, rest_after)) = rest.split_first() else {
            found.push(at.to_owned());
            return Ok(());
        };
        if found.len() >= MATCHES_MAX {
            return Ok(());
        }
        if *first == "**" {
            // Zero components, then each subdirectory with `**` still ahead.
            self.walk(at, rest_after, glob, found)?;
            for (name, is_dir) in self.list(at) {
                if is_dir {
                    self.walk(&at.join(name), rest, glob, found)?;
                }
            }
            return Ok(());
        }
        if !first.contains(['*', '?', '[', '{']) {
            return self.walk(&at.join(first), rest_after, glob, found);
        }
        let matcher = GlobBuilder::new(first)
            .literal_separator(true)
            .build()
            .map_err(|error| ResolveError::Glob {
                glob: glob.to_owned(),
                reason: error.kind().to_string(),
            })?
            .compile_matcher();
        for (name, is_dir) in self.list(at) {
            if matcher.is_match(&name) && (is_dir || rest_after.is_empty()) {
                self.walk(&at.join(name), rest_after, glob, found)?;
            }
        }
        Ok(())
    }
}

/// The roots of the image layers in `stores` (globs over absolute paths).
pub fn image_layers(stores: &[String]) -> Vec<Root> {
    let Ok(slash) = Root::open(Path::new("/")) else {
        return Vec::new();
    };
    let mut layers = Vec::new();
    for store in stores {
        let Ok(paths) = slash.expand_dirs(store) else {
            continue;
        };
        for path in paths {
            let absolute = Path::new("/").join(path);
            if let Ok(root) = Root::open(&absolute) {
                layers.push(root);
            }
        }
    }
    layers
}

impl Root {
    /// Like [`Self::expand`], for directories.
    fn expand_dirs(&self, glob: &str) -> Result<Vec<PathBuf>, ResolveError> {
        Ok(self
            .expand(glob)?
            .into_iter()
            .filter(|path| self.open_in(path, libc::O_PATH | libc::O_DIRECTORY).is_ok())
            .collect())
    }
}

/// The root of every running container, one per mount namespace.
pub fn running_containers(host: &HostIdentity) -> Vec<Root> {
    let mut seen = BTreeSet::new();
    container_processes(host)
        .filter(|process| seen.insert(process.mnt_ns))
        .filter_map(|process| Root::open(&process.root).ok())
        .collect()
}

/// Runs the kernel's identity code on the agent's descriptors.
pub struct Identities<'a> {
    program: &'a RawTracePoint,
    resolved: Array<&'a MapData, FileId>,
}

impl std::fmt::Debug for Identities<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identities").finish_non_exhaustive()
    }
}

impl<'a> Identities<'a> {
    /// `ebpf` must have `vshield_identity` loaded
    /// ([`crate::backend::load_identity`]).
    pub fn new(ebpf: &'a Ebpf) -> Result<Self, ResolveError> {
        let program = ebpf
            .program(VSHIELD_IDENTITY)
            .ok_or(ResolveError::MissingProgram)?
            .try_into()
            .map_err(ResolveError::Run)?;
        Ok(Self {
            program,
            resolved: maps::borrow(ebpf, maps::RESOLVED_ID)?,
        })
    }

    /// The identity of the open file `fd` (`path` for errors).
    pub fn of(&self, fd: &OwnedFd, path: &Path) -> Result<FileId, ResolveError> {
        let mut options = RawTracePointRunOptions::new();
        options.args[0] = u64::from(fd.as_raw_fd().cast_unsigned());
        let result = self.program.test_run(options).map_err(ResolveError::Run)?;
        if result.return_value != 0 {
            return Err(ResolveError::Kernel {
                path: path.to_owned(),
            });
        }
        self.resolved.get(&0, 0).map_err(|source| {
            ResolveError::Map(MapAccessError::Map {
                map: maps::RESOLVED_ID,
                source,
            })
        })
    }

    /// The identities of the regular files `globs` match under `root`, each
    /// with the first path (in the root) it was found at.
    pub fn resolve(
        &self,
        root: &Root,
        globs: &[String],
        into: &mut BTreeMap<FileId, String>,
    ) -> Result<(), ResolveError> {
        for glob in globs {
            for relative in root.expand(glob)? {
                let Ok(fd) = root.open_in(&relative, libc::O_PATH) else {
                    continue;
                };
                // SAFETY: `fd` is a valid descriptor for the whole call.
                let mut stat: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: as above; `stat` is a valid out-pointer.
                if unsafe { libc::fstat(fd.as_raw_fd(), &raw mut stat) } != 0
                    || stat.st_mode & libc::S_IFMT != libc::S_IFREG
                {
                    continue;
                }
                let id = self.of(&fd, &root.name.join(&relative))?;
                into.entry(id)
                    .or_insert_with(|| format!("/{}", relative.display()));
            }
        }
        Ok(())
    }
}
