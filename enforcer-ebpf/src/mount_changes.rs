//! What container processes do to filesystems and mounts, on the lsm
//! backend. A process with `CAP_SYS_ADMIN` on the host (a privileged
//! container) can fill a tmpfs and remount it read-only, loop-mount an image
//! it built, or make the runtime's writable volume read-only where it is
//! mounted; the read-only flag then says nothing about who wrote the files.
//! These hooks only observe (they return the previous decision unchanged):
//! they mark the superblocks such a process created or re-flagged, and the
//! mount namespaces in which it mounted, moved or re-flagged anything, and
//! [`crate::drift`] trusts no read-only flag there.

use aya_ebpf::{
    helpers::bpf_get_current_cgroup_id,
    macros::{fentry, lsm},
    programs::{FEntryContext, LsmContext},
};
use enforcer_common::{AgentConfig, KernelOffsets};

use crate::{
    drift,
    kernel::{self, ReadError},
    maps::{CONFIG, CONTAINER_REMOUNTS, CONTAINER_ROOTS, CONTAINER_SUPERBLOCKS},
};

/// Whether the current task is a process of a container the kernel has
/// recorded (its first exec was seen), outside the host's mount namespace:
/// the runtime's own set-up before that first exec is not the container's
/// doing.
#[inline(always)]
fn in_a_container(offsets: &KernelOffsets, config: &AgentConfig) -> Result<bool, ReadError> {
    // SAFETY: a plain helper call, and a value only tested for presence.
    if unsafe { CONTAINER_ROOTS.get(bpf_get_current_cgroup_id()) }.is_none() {
        return Ok(false);
    }
    Ok(current_mnt_ns(offsets)? != config.host_mnt_ns)
}

/// The current task's `struct mnt_namespace *`.
#[inline(always)]
fn current_mnt_ns_ptr(offsets: &KernelOffsets) -> Result<u64, ReadError> {
    let nsproxy = kernel::read_ptr(kernel::current_task(), offsets.task_nsproxy)?;
    kernel::read_ptr(nsproxy, offsets.nsproxy_mnt_ns)
}

#[inline(always)]
fn current_mnt_ns(offsets: &KernelOffsets) -> Result<u32, ReadError> {
    kernel::read(current_mnt_ns_ptr(offsets)?, offsets.mnt_namespace_inum)
}

#[inline(always)]
fn current_mnt_ns_id(offsets: &KernelOffsets) -> Result<u64, ReadError> {
    kernel::read(current_mnt_ns_ptr(offsets)?, offsets.mnt_namespace_id)
}

/// Marks the superblock `sb` when a container process made or changed it.
#[inline(always)]
fn mark_superblock(sb: u64) {
    let offsets = drift::offsets();
    if matches!(in_a_container(&offsets, &CONFIG.load()), Ok(true)) {
        // A full table evicts the oldest mark: that filesystem's read-only
        // flag is trusted again, as it was before these hooks.
        let _ = CONTAINER_SUPERBLOCKS.insert(sb, 0, 0);
    }
}

/// Marks the mount namespace of `path` (a `struct path *`, whose mount is
/// its first field) when a container process changes mounts there.
#[inline(always)]
fn mark_namespace_of(path: u64) {
    let offsets = drift::offsets();
    if !matches!(in_a_container(&offsets, &CONFIG.load()), Ok(true)) {
        return;
    }
    // A mount in no namespace yet: the change is the task's own.
    let id = match namespace_of(path, &offsets) {
        Ok(id) => Ok(id),
        Err(ReadError) => current_mnt_ns_id(&offsets),
    };
    if let Ok(id) = id {
        let _ = CONTAINER_REMOUNTS.insert(id, 0, 0);
    }
}

/// The mount namespace of the mount of `path`, in a function rather than
/// closures: LLVM leaves a closure out of line, with a Rust type in the
/// object's BTF that the kernel refuses.
#[inline(always)]
fn namespace_of(path: u64, offsets: &KernelOffsets) -> Result<u64, ReadError> {
    let mnt = kernel::read_ptr(path, 0)?;
    let ns = kernel::read_ptr(mnt, offsets.vfsmount_mnt_ns)?;
    kernel::read(ns, offsets.mnt_namespace_id)
}

/// `sb_alloc_security(struct super_block *sb)`: a new filesystem instance
/// (a tmpfs, a loop-mounted image), made for the current task.
#[lsm(hook = "sb_alloc_security")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
pub(crate) fn sb_alloc_security(ctx: LsmContext) -> i32 {
    let sb: u64 = ctx.arg(0);
    let previous: i32 = ctx.arg(1);
    mark_superblock(sb);
    previous
}

/// `sb_free_security(struct super_block *sb)`: the filesystem instance is
/// gone, and its address may be reused for another one.
#[lsm(hook = "sb_free_security")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
pub(crate) fn sb_free_security(ctx: LsmContext) -> i32 {
    let sb: u64 = ctx.arg(0);
    let _ = CONTAINER_SUPERBLOCKS.remove(sb);
    0
}

/// `sb_remount(struct super_block *sb, void *mnt_opts)`: the flags of a
/// whole filesystem change (`mount -o remount,ro`).
#[lsm(hook = "sb_remount")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
pub(crate) fn sb_remount(ctx: LsmContext) -> i32 {
    let sb: u64 = ctx.arg(0);
    let previous: i32 = ctx.arg(2);
    mark_superblock(sb);
    previous
}

/// `sb_mount(const char *dev_name, const struct path *path, const char
/// *type, unsigned long flags, void *data)`: every `mount(2)`, a bind mount
/// and a remount of a mount's flags (`mount -o remount,bind,ro`) included.
#[lsm(hook = "sb_mount")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
pub(crate) fn sb_mount(ctx: LsmContext) -> i32 {
    let path: u64 = ctx.arg(1);
    let previous: i32 = ctx.arg(5);
    mark_namespace_of(path);
    previous
}

/// `move_mount(const struct path *from_path, const struct path *to_path)`:
/// a mount made with the new mount API (`open_tree`, `fsmount`) and put in
/// place, after `mount_setattr` may have made it read-only.
#[lsm(hook = "move_mount")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
pub(crate) fn move_mount(ctx: LsmContext) -> i32 {
    let to_path: u64 = ctx.arg(1);
    let previous: i32 = ctx.arg(2);
    mark_namespace_of(to_path);
    previous
}

/// The `mount_setattr` system call (5.12+), which has no LSM hook: it
/// changes the flags of mounts in place (read-only among them). The agent
/// attaches this to the architecture's entry of the system call; the task's
/// own mount namespace is the one whose mounts it can change.
#[fentry(function = "__x64_sys_mount_setattr")]
pub(crate) fn mount_setattr(_ctx: FEntryContext) -> i32 {
    let offsets = drift::offsets();
    if matches!(in_a_container(&offsets, &CONFIG.load()), Ok(true))
        && let Ok(id) = current_mnt_ns_id(&offsets)
    {
        let _ = CONTAINER_REMOUNTS.insert(id, 0, 0);
    }
    0
}
