//! What container processes do to filesystems and mounts. A process with
//! `CAP_SYS_ADMIN` on the host (a privileged container) can fill a tmpfs
//! and remount it read-only, loop-mount an image it built, or make the
//! runtime's writable volume read-only where it is mounted; the read-only
//! flag then says nothing about who wrote the files. These programs only
//! observe (the LSM ones return the previous decision unchanged). They mark
//! the superblocks such a process created or remounted (lsm backend), the
//! mount namespaces in which it mounted, moved or re-flagged anything, and,
//! when it did so with the host's privileges, its container: a mount
//! namespace it makes afterwards (`unshare -m`) copies the re-flagged
//! mounts under a new id, and the container stays what it was.
//! [`crate::drift`] trusts no read-only flag they mark.
//!
//! The lsm backend uses LSM hooks, and fentry programs for the system calls
//! that have none. The signal backend, which has neither, marks from its
//! program on every system call's entry (`--signal-mmap-check`,
//! [`crate::mmap`]), on both gates: it sees no superblock. (The system
//! calls' own tracepoints would do without that program, but enabling any
//! of them sends every system call on the machine through the tracing
//! path, +3 % on an `open()` loop, and they miss the 32-bit gate.)

use aya_ebpf::{
    helpers::bpf_get_current_cgroup_id,
    macros::{fentry, lsm},
    programs::{FEntryContext, LsmContext},
};
use enforcer_common::{CAP_SYS_ADMIN, ContainerRoot};

use crate::{
    kernel::{self, read_or_zero},
    maps::{
        CONFIG, CONTAINER_REMOUNTS, CONTAINER_ROOTS, CONTAINER_SUPERBLOCKS, offset, task_offset,
    },
    mounts,
};

/// `mount(2)` flags (`include/uapi/linux/mount.h`).
const MS_REMOUNT: u64 = 32;
const MS_BIND: u64 = 4096;
const MS_UNBINDABLE: u64 = 1 << 17;
const MS_PRIVATE: u64 = 1 << 18;
const MS_SLAVE: u64 = 1 << 19;
const MS_SHARED: u64 = 1 << 20;

/// Whether `mount(2)` with `flags` only changes how mounts propagate
/// (`mount --make-rprivate /`, which `unshare -m` does): the kernel takes
/// that branch only without `MS_REMOUNT` and `MS_BIND`, and it changes no
/// read-only flag and shows no new files.
#[inline(always)]
pub(crate) fn propagation_only(flags: u64) -> bool {
    flags & (MS_REMOUNT | MS_BIND) == 0
        && flags & (MS_SHARED | MS_PRIVATE | MS_SLAVE | MS_UNBINDABLE) != 0
}

/// The record of the current task's container, when it is a process of a
/// container the kernel has recorded (its first exec was seen) outside the
/// host's mount namespace: the runtime's own set-up before that first exec
/// is not the container's doing.
#[inline(always)]
fn container_of_current() -> Option<ContainerRoot> {
    // SAFETY: a plain helper call; the value is two integers, copied out.
    let home = unsafe { CONTAINER_ROOTS.get(bpf_get_current_cgroup_id()) }.copied()?;
    let mnt_ns: u32 = read_or_zero(kernel::current_mnt_ns(), offset!(mnt_namespace_inum));
    (mnt_ns != 0 && mnt_ns != CONFIG.load().host_mnt_ns).then_some(home)
}

/// Marks the superblock `sb` when a container process made or changed it.
#[inline(always)]
fn mark_superblock(sb: u64) {
    if container_of_current().is_some() {
        // A full table evicts the oldest mark: that filesystem's read-only
        // flag is trusted again, as it was before these hooks.
        let _ = CONTAINER_SUPERBLOCKS.insert(sb, 0, 0);
    }
}

/// Marks the mount namespace `mnt_ns` (a `struct mnt_namespace *`; the
/// current task's when null) and the container, when a process of a
/// container changes mounts with the host's privileges.
///
/// Only with those: in a user namespace of its own (`unshare -Urm`) a
/// process changes nothing the host made (what it mounts there is owned by
/// that user namespace, which the decision does not trust anyway, and the
/// read-only flags it inherited are locked). The hooks run before the
/// kernel checks the capability, so a container without it (an entrypoint
/// that tries a mount and carries on) would otherwise lose its Secrets by
/// trying. With them, no mount namespace the container has or makes
/// afterwards is trusted.
#[inline(always)]
pub(crate) fn mark_mount_change(mnt_ns: u64) {
    let Some(home) = container_of_current() else {
        return;
    };
    if !has_host_sys_admin() {
        return;
    }
    let mnt_ns = if mnt_ns == 0 {
        kernel::current_mnt_ns()
    } else {
        mnt_ns
    };
    let id: u64 = read_or_zero(mnt_ns, offset!(mnt_namespace_id));
    if id != 0 {
        let _ = CONTAINER_REMOUNTS.insert(id, 0, 0);
    }
    let _ = CONTAINER_REMOUNTS.insert(mounts::container_key(home.mnt_ns), 0, 0);
}

/// Whether the current task holds `CAP_SYS_ADMIN` in the initial user
/// namespace: its credentials' effective set, held there.
#[inline(always)]
fn has_host_sys_admin() -> bool {
    let cred: u64 = read_or_zero(kernel::current_task(), task_offset!(task_cred));
    let user_ns: u64 = read_or_zero(cred, task_offset!(cred_user_ns));
    let effective: u64 = read_or_zero(cred, task_offset!(cred_cap_effective));
    user_ns != 0
        && read_or_zero::<u32>(user_ns, offset!(user_ns_level)) == 0
        && effective & (1 << CAP_SYS_ADMIN) != 0
}

/// The mount namespace of the mount of `path` (a `struct path *`, whose
/// mount is its first field); null for a mount in no namespace yet, whose
/// change is the task's own.
#[inline(always)]
fn namespace_of(path: u64) -> u64 {
    let mnt: u64 = read_or_zero(path, 0);
    let ns: u64 = read_or_zero(mnt, offset!(vfsmount_mnt_ns));
    if ns >= kernel::ERR_PTR_MIN { 0 } else { ns }
}

/// `sb_alloc_security(struct super_block *sb)`: a new filesystem instance
/// (a tmpfs, a loop-mounted image), made for the current task.
#[lsm(hook = "sb_alloc_security")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
#[inline(always)]
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
#[inline(always)]
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
#[inline(always)]
pub(crate) fn sb_remount(ctx: LsmContext) -> i32 {
    let sb: u64 = ctx.arg(0);
    let previous: i32 = ctx.arg(2);
    mark_superblock(sb);
    mark_mount_change(0);
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
#[inline(always)]
pub(crate) fn sb_mount(ctx: LsmContext) -> i32 {
    let path: u64 = ctx.arg(1);
    let flags: u64 = ctx.arg(3);
    let previous: i32 = ctx.arg(5);
    if !propagation_only(flags) {
        mark_mount_change(namespace_of(path));
    }
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
#[inline(always)]
pub(crate) fn move_mount(ctx: LsmContext) -> i32 {
    let to_path: u64 = ctx.arg(1);
    let previous: i32 = ctx.arg(2);
    mark_mount_change(namespace_of(to_path));
    previous
}

/// Programs on the entries of the system calls that change mounts or
/// filesystems without an LSM hook (lsm backend): `mount_setattr` (5.12+)
/// re-flags mounts in place (read-only among them), and `fsconfig` with
/// `FSCONFIG_CMD_RECONFIGURE` on a filesystem `fspick` opened remounts it.
/// Each on the native entry and on the 32-bit one: an fentry program is
/// loaded for one function, and a process picks its gate. The task's own
/// mount namespace is the one whose mounts these calls can change.
macro_rules! mount_api_entry {
    ($($name:ident => $function:literal),* $(,)?) => {
        $(
            #[fentry(function = $function)]
            pub(crate) fn $name(_ctx: FEntryContext) -> i32 {
                mark_mount_change(0);
                0
            }
        )*
    };
}

mount_api_entry!(
    mount_setattr => "__x64_sys_mount_setattr",
    mount_setattr_compat => "__ia32_sys_mount_setattr",
    fsconfig => "__x64_sys_fsconfig",
    fsconfig_compat => "__ia32_sys_fsconfig",
);
