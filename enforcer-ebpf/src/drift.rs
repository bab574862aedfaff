//! The drift decision: is this exec, by a container process, of a file that
//! is not part of the container's image?

use enforcer_common::{ABI_VERSION, KernelOffsets, OVERLAYFS_SUPER_MAGIC, layer, mode};

use crate::{
    kernel::{self, ReadError},
    maps::{CONFIG, DRIFT_POLICY, OFFSETS},
};

/// A container process is executing a file that is not from its image.
#[derive(Clone, Copy)]
pub(crate) struct Drift {
    /// One of `mode::ENFORCE`, `mode::AUDIT`.
    pub(crate) mode: u32,
    pub(crate) mnt_ns: u32,
    pub(crate) ino: u64,
    pub(crate) dev: u32,
    pub(crate) layer: u32,
}

pub(crate) enum Verdict {
    Allow,
    Drift(Drift),
}

/// Decides on the exec of `bprm` (a `struct linux_binprm *`) by the current task.
#[inline(always)]
pub(crate) fn check_exec(bprm: u64, offsets: &KernelOffsets) -> Result<Verdict, ReadError> {
    let config = CONFIG.load();
    if config.abi_version != ABI_VERSION {
        return Err(ReadError);
    }
    let mode = match DRIFT_POLICY.get(0) {
        Some(settings) => settings.mode,
        None => return Err(ReadError),
    };
    if mode == mode::OFF {
        return Ok(Verdict::Allow);
    }
    // Host processes are never subject to container drift rules, whatever
    // filesystem they run from.
    let mnt_ns = kernel::current_mnt_ns(offsets)?;
    if mnt_ns == config.host_mnt_ns {
        return Ok(Verdict::Allow);
    }
    let file = kernel::exec_file(bprm, offsets)?;
    if file.fs_magic != OVERLAYFS_SUPER_MAGIC {
        return Ok(Verdict::Allow);
    }
    if !kernel::overlay_has_upper(file.inode, offsets)? {
        return Ok(Verdict::Allow);
    }
    Ok(Verdict::Drift(Drift {
        mode,
        mnt_ns,
        ino: file.ino,
        dev: file.dev,
        layer: layer::OVERLAY_UPPER,
    }))
}

/// The offsets the agent resolved at load time.
#[inline(always)]
pub(crate) fn offsets() -> KernelOffsets {
    OFFSETS.load()
}
