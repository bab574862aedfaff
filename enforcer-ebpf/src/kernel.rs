//! Typed reads of kernel memory through the offsets in [`crate::maps::OFFSETS`].

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use enforcer_common::KernelOffsets;

/// A `bpf_probe_read_kernel` failed or returned a null pointer where the
/// kernel guarantees one.
#[derive(Clone, Copy)]
pub(crate) struct ReadError;

#[inline(always)]
pub(crate) fn read<T: Copy>(base: u64, offset: u32) -> Result<T, ReadError> {
    let address = base + u64::from(offset);
    // SAFETY: bpf_probe_read_kernel checks the address itself and returns an
    // error instead of faulting.
    unsafe { bpf_probe_read_kernel(address as *const T) }.map_err(|_| ReadError)
}

/// Reads a pointer that must not be null.
#[inline(always)]
pub(crate) fn read_ptr(base: u64, offset: u32) -> Result<u64, ReadError> {
    match read::<u64>(base, offset)? {
        0 => Err(ReadError),
        pointer => Ok(pointer),
    }
}

#[inline(always)]
fn current_task() -> u64 {
    // SAFETY: always valid in process context, which every hook here runs in.
    unsafe { bpf_get_current_task() }
}

/// Inode number of the current task's mount namespace.
#[inline(always)]
pub(crate) fn current_mnt_ns(offsets: &KernelOffsets) -> Result<u32, ReadError> {
    let nsproxy = read_ptr(current_task(), offsets.task_nsproxy)?;
    let mnt_ns = read_ptr(nsproxy, offsets.nsproxy_mnt_ns)?;
    read(mnt_ns, offsets.mnt_namespace_inum)
}

/// Process id of the current task's real parent.
#[inline(always)]
pub(crate) fn current_parent_tgid(offsets: &KernelOffsets) -> Result<u32, ReadError> {
    let parent = read_ptr(current_task(), offsets.task_real_parent)?;
    read(parent, offsets.task_tgid)
}

/// What the drift check needs to know about the file being executed.
#[derive(Clone, Copy)]
pub(crate) struct ExecFile {
    /// `struct inode *` of the file.
    pub(crate) inode: u64,
    pub(crate) ino: u64,
    pub(crate) dev: u32,
    pub(crate) fs_magic: u64,
}

#[inline(always)]
pub(crate) fn exec_file(bprm: u64, offsets: &KernelOffsets) -> Result<ExecFile, ReadError> {
    let file = read_ptr(bprm, offsets.binprm_file)?;
    let inode = read_ptr(file, offsets.file_inode)?;
    let sb = read_ptr(inode, offsets.inode_sb)?;
    Ok(ExecFile {
        inode,
        ino: read(inode, offsets.inode_ino)?,
        dev: read(sb, offsets.sb_dev)?,
        fs_magic: read(sb, offsets.sb_magic)?,
    })
}

/// Kernel addresses are the upper half of the address space on x86-64 and
/// arm64. Nothing tighter holds: with 5-level paging the x86-64 direct map
/// starts at `0xff11_0000_0000_0000`.
const KERNEL_SPACE: u64 = 1 << 63;

/// Whether an overlay inode has an upper-layer dentry, i.e. the file was
/// created or copied up after the overlay was mounted.
#[inline(always)]
pub(crate) fn overlay_has_upper(inode: u64, offsets: &KernelOffsets) -> Result<bool, ReadError> {
    let upper = read::<u64>(inode, offsets.ovl_inode_upperdentry)?;
    // The offset may be derived rather than read from BTF (kernels without
    // module BTF). A field that is not a pointer after all is a read error,
    // counted and reported, not a decision.
    if upper != 0 && upper < KERNEL_SPACE {
        return Err(ReadError);
    }
    Ok(upper != 0)
}
