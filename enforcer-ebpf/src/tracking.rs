//! Tracking what container processes write on a root filesystem that is not
//! overlayfs, where no upper layer records it (btrfs or zfs snapshotters,
//! bind-mounted directories). These hooks only observe: they return the
//! previous LSM's decision unchanged. [`crate::drift`] denies running a
//! tracked file.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use enforcer_common::{
    FMODE_WRITE, KernelOffsets, MODE_EXEC_BITS, OVERLAYFS_SUPER_MAGIC, backend, counter, decision,
    via,
};

use crate::{
    drift::{self, Verdict},
    events,
    kernel::{self, ReadError},
    maps::{CONFIG, WRITTEN_FILES, count, offset},
};

/// Marks the file at `dentry` if the current task is a container process
/// and the file is on its root filesystem (as the kernel first saw it, not
/// the task's root directory now), which is not overlayfs. A write that
/// could not be looked at is reported (`READ_ERROR`, via open): the file
/// it wrote may later run unmarked. The write itself goes on, as every
/// write does here.
#[inline(always)]
fn mark(dentry: u64) {
    let offsets = drift::offsets();
    if try_mark(dentry, offsets).is_err()
        && let Verdict::Drift(drift) = drift::unreadable(via::OPEN)
    {
        events::decided(&drift, None, offsets, decision::AUDIT, backend::LSM);
    }
}

/// [`mark`], in a function rather than a closure: LLVM leaves a closure out
/// of line, and its frame beside the program's is more stack than the
/// verifier allows.
#[inline(always)]
fn try_mark(dentry: u64, offsets: &KernelOffsets) -> Result<(), ReadError> {
    let Some(container) = kernel::current_container(offsets, &CONFIG.load())? else {
        return Ok(());
    };
    let inode = kernel::read_ptr(dentry, offsets.dentry_inode)?;
    let sb = kernel::read_ptr(inode, offsets.inode_sb)?;
    let dev: u32 = kernel::read(sb, offsets.sb_dev)?;
    if dev != container.home.root_dev {
        return Ok(());
    }
    let magic: u64 = kernel::read(sb, offsets.sb_magic)?;
    if magic == OVERLAYFS_SUPER_MAGIC {
        return Ok(());
    }
    if WRITTEN_FILES.insert(inode, 1, 0).is_err() {
        count(counter::WRITTEN_TABLE_FULL);
    }
    Ok(())
}

/// `file_open(struct file *file)`: opening for writing covers creating,
/// copying, downloading and modifying.
///
/// This runs for every open on the machine, so the common case (not for
/// writing) costs one plain load: `file` is a typed pointer the verifier
/// lets the program read at a known field offset, without a helper call.
#[lsm(hook = "file_open")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
#[inline(always)]
pub(crate) fn file_open(ctx: LsmContext) -> i32 {
    let file: *const u8 = ctx.arg(0);
    let previous: i32 = ctx.arg(1);
    let mode_offset = offset!(file_mode);
    #[expect(
        clippy::cast_ptr_alignment,
        reason = "f_mode is an aligned 4-byte field; the verifier checks the access against BTF"
    )]
    // SAFETY: `file` is the hook's `struct file *`, valid for the call, and
    // `f_mode` is a 4-byte field at this offset (checked against BTF by the
    // agent and again by the verifier).
    let mode = unsafe { file.add(mode_offset as usize).cast::<u32>().read_volatile() };
    if mode & FMODE_WRITE == 0 {
        return previous;
    }
    let offsets = drift::offsets();
    if let Ok(dentry) = kernel::read_ptr(file as u64, offsets.file_path_dentry) {
        mark(dentry);
    }
    previous
}

/// `path_chmod(const struct path *path, umode_t mode)`: making a file
/// executable.
#[lsm(hook = "path_chmod")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
#[inline(always)]
pub(crate) fn path_chmod(ctx: LsmContext) -> i32 {
    let path: u64 = ctx.arg(0);
    let mode: u16 = ctx.arg(1);
    let previous: i32 = ctx.arg(2);
    let offsets = drift::offsets();
    if mode & MODE_EXEC_BITS != 0
        && let Ok(dentry) = kernel::read_ptr(path, offsets.file_path_dentry - offsets.file_path_mnt)
        && let Ok(inode) = kernel::read_ptr(dentry, offsets.dentry_inode)
        && let Ok(old) = kernel::read::<u16>(inode, offsets.inode_mode)
        && mode & MODE_EXEC_BITS & !old != 0
    {
        mark(dentry);
    }
    previous
}

/// `path_truncate(const struct path *path)`: truncate(2) by path.
#[lsm(hook = "path_truncate")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
#[inline(always)]
pub(crate) fn path_truncate(ctx: LsmContext) -> i32 {
    let path: u64 = ctx.arg(0);
    let previous: i32 = ctx.arg(1);
    let offsets = drift::offsets();
    if let Ok(dentry) = kernel::read_ptr(path, offsets.file_path_dentry - offsets.file_path_mnt) {
        mark(dentry);
    }
    previous
}

/// `inode_rename(struct inode *old_dir, struct dentry *old_dentry,
/// struct inode *new_dir, struct dentry *new_dentry)`.
#[lsm(hook = "inode_rename")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
#[inline(always)]
pub(crate) fn inode_rename(ctx: LsmContext) -> i32 {
    let old_dentry: u64 = ctx.arg(1);
    let previous: i32 = ctx.arg(4);
    mark(old_dentry);
    previous
}

/// `inode_link(struct dentry *old_dentry, struct inode *dir,
/// struct dentry *new_dentry)`.
#[lsm(hook = "inode_link")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
#[inline(always)]
pub(crate) fn inode_link(ctx: LsmContext) -> i32 {
    let old_dentry: u64 = ctx.arg(0);
    let previous: i32 = ctx.arg(3);
    mark(old_dentry);
    previous
}

/// `inode_free_security(struct inode *inode)`: the inode is gone, and its
/// address may be reused for another file.
#[lsm(hook = "inode_free_security")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
#[inline(always)]
pub(crate) fn inode_free_security(ctx: LsmContext) -> i32 {
    let inode: u64 = ctx.arg(0);
    let _ = WRITTEN_FILES.remove(inode);
    0
}
