//! When the agent tracks what containers write on roots that are not
//! overlayfs (btrfs or zfs snapshotters, bind-mounted directories).
//!
//! The tracking programs sit on `file_open`, so they cost every open on the
//! machine a BPF trampoline, also on hosts where every container root is
//! overlayfs and they are never needed. They are loaded with the backend and,
//! with `--track-writes auto` (the default), attached only once a container
//! runs from such a root: at start-up when a running container has one, else
//! when the kernel first sees a container process run a file from one (a
//! [`RootNotice`]). `always` attaches them at start, `never` not at all.

use std::{ffi::CString, fmt, os::unix::ffi::OsStrExt as _, path::Path};

use aya::{Ebpf, maps::Array};
use enforcer_common::{OVERLAYFS_SUPER_MAGIC, RootNotice, tracking};

use crate::{
    backend, error_chain,
    kernel::host::{HostIdentity, container_processes},
    maps::{self, MapAccessError},
    pins::Links,
};

/// `--track-writes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WriteTracking {
    /// Attach the tracking programs when a container runs from a root that
    /// is not overlayfs (at start-up, or when the kernel first sees one).
    Auto,
    /// Attach them at start-up.
    Always,
    /// Never: files on such roots are allowed.
    Never,
}

/// Whether writes are tracked now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Not tracked, and not going to be; says why.
    Off(String),
    /// Not tracked until a container runs from a root that is not overlayfs.
    OnDemand,
    /// The tracking programs are attached.
    Attached,
}

/// A container process whose root filesystem is not overlayfs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UntrackedRoot {
    pub pid: u32,
    pub mnt_ns: u32,
    pub fs_magic: u64,
}

impl fmt::Display for UntrackedRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "process {} (mount namespace {}) runs from a {} root",
            self.pid,
            self.mnt_ns,
            fs_name(self.fs_magic)
        )
    }
}

impl From<&RootNotice> for UntrackedRoot {
    fn from(notice: &RootNotice) -> Self {
        Self {
            pid: notice.tgid,
            mnt_ns: notice.mnt_ns,
            fs_magic: notice.fs_magic,
        }
    }
}

/// A file system's name from its `s_magic`, for log lines.
pub fn fs_name(magic: u64) -> String {
    let name = match magic {
        0x9123_683e => "btrfs",
        0x2fc1_2fc1 => "zfs",
        0xef53 => "ext4",
        0x5846_5342 => "xfs",
        0x0102_1994 => "tmpfs",
        0x6969 => "nfs",
        0x0102_1997 => "9p",
        0x6573_5546 => "fuse",
        0x794c_7630 => "overlayfs",
        _ => return format!("filesystem with magic {magic:#x}"),
    };
    name.to_owned()
}

/// Decides and carries out when writes are tracked.
#[derive(Debug)]
pub struct Tracker {
    state: State,
    links: Links,
}

impl Tracker {
    /// Before the backend is attached: with `auto` and `always` the kernel
    /// reports a container on an untracked root from its first decision on,
    /// so none slips through between attaching and [`Tracker::start`].
    /// Returns whether the agent before this one, whose maps this one
    /// adopted, tracked writes: its programs still do until this agent's
    /// take over, so the state stays as it is and [`Tracker::start`]
    /// attaches at once.
    pub fn prepare(ebpf: &mut Ebpf, choice: WriteTracking) -> Result<Inherited, MapAccessError> {
        let before: Array<_, u32> = maps::borrow(ebpf, maps::TRACKING)?;
        let before = before.get(&0, 0).map_err(|source| MapAccessError::Map {
            map: maps::TRACKING,
            source,
        })?;
        if before == tracking::ATTACHED && choice != WriteTracking::Never {
            return Ok(Inherited(true));
        }
        let state = match choice {
            WriteTracking::Never => tracking::OFF,
            WriteTracking::Auto | WriteTracking::Always => tracking::ON_DEMAND,
        };
        set_state(ebpf, state)?;
        Ok(Inherited(false))
    }

    /// After the backend is attached. `loaded` says whether the tracking
    /// programs could be loaded (they need BPF LSM), and why not.
    pub fn start(
        ebpf: &mut Ebpf,
        choice: WriteTracking,
        (loaded, inherited): (&Result<(), String>, Inherited),
        host: &HostIdentity,
        links: Links,
    ) -> Result<Self, MapAccessError> {
        let mut tracker = Self {
            state: State::OnDemand,
            links,
        };
        match (choice, loaded) {
            (WriteTracking::Never, _) => {
                tracker.turn_off(ebpf, "--track-writes never".to_owned())?;
            }
            (_, Err(reason)) => tracker.turn_off(ebpf, reason.clone())?,
            (WriteTracking::Always, Ok(())) => {
                tracker.attach(ebpf, "--track-writes always")?;
            }
            (WriteTracking::Auto, Ok(())) if inherited.0 => {
                tracker.attach(ebpf, "the agent before this one tracked writes")?;
            }
            (WriteTracking::Auto, Ok(())) => {
                if let Some(found) = find_untracked_root(host) {
                    tracker.attach(ebpf, &format!("a running container: {found}"))?;
                } else {
                    tracing::info!(
                        "no container runs from a root that is not overlayfs: writes are tracked from when \
                         the first one runs a program (--track-writes auto)"
                    );
                }
            }
        }
        Ok(tracker)
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The kernel saw a container process run a file from a root that is not
    /// overlayfs while writes were not tracked.
    pub fn on_notice(
        &mut self,
        ebpf: &mut Ebpf,
        notice: &RootNotice,
    ) -> Result<(), MapAccessError> {
        if self.state != State::OnDemand {
            return Ok(());
        }
        self.attach(ebpf, &UntrackedRoot::from(notice).to_string())
    }

    fn attach(&mut self, ebpf: &mut Ebpf, why: &str) -> Result<(), MapAccessError> {
        match backend::attach_tracking(ebpf, &self.links) {
            Ok(()) => {
                set_state(ebpf, tracking::ATTACHED)?;
                self.state = State::Attached;
                tracing::info!(
                    why,
                    "tracking writes on container roots that are not overlayfs: files that container processes \
                     create, write, make executable, rename or link from now on are drift"
                );
                Ok(())
            }
            Err(error) => self.turn_off(ebpf, error_chain(&error)),
        }
    }

    fn turn_off(&mut self, ebpf: &mut Ebpf, reason: String) -> Result<(), MapAccessError> {
        set_state(ebpf, tracking::OFF)?;
        tracing::warn!(
            %reason,
            "writes on container roots that are not overlayfs (btrfs or zfs snapshotters, bind-mounted \
             directories) are not tracked: drift on such roots is not detected"
        );
        self.state = State::Off(reason);
        Ok(())
    }
}

/// Whether the agent before this one tracked writes ([`Tracker::prepare`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inherited(pub bool);

fn set_state(ebpf: &mut Ebpf, state: u32) -> Result<(), MapAccessError> {
    let mut map: Array<_, u32> = maps::borrow_mut(ebpf, maps::TRACKING)?;
    map.set(0, state, 0).map_err(|source| MapAccessError::Map {
        map: maps::TRACKING,
        source,
    })
}

/// A running container process whose root is not overlayfs, if any. Processes
/// that exit while they are looked at are skipped.
pub fn find_untracked_root(host: &HostIdentity) -> Option<UntrackedRoot> {
    container_processes(host).find_map(|process| {
        let fs_magic = fs_magic(&process.root)?;
        (fs_magic != OVERLAYFS_SUPER_MAGIC).then_some(UntrackedRoot {
            pid: process.pid,
            mnt_ns: process.mnt_ns,
            fs_magic,
        })
    })
}

/// `statfs(path).f_type`.
fn fs_magic(path: &Path) -> Option<u64> {
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: all-zero is a valid `statfs`; the call only writes into it.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a valid out pointer.
    let rc = unsafe { libc::statfs(path.as_ptr(), &raw mut stat) };
    #[expect(
        clippy::cast_sign_loss,
        reason = "f_type is a magic number; the kernel's s_magic is unsigned"
    )]
    (rc == 0).then_some(stat.f_type as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_file_systems() {
        assert_eq!(fs_name(0x9123_683e), "btrfs");
        assert_eq!(fs_name(0x1234), "filesystem with magic 0x1234");
    }

    #[test]
    fn reads_the_magic_of_proc() {
        assert_eq!(fs_magic(Path::new("/proc")), Some(0x9fa0));
    }
}
