//! Typed reads of kernel memory through the offsets in [`crate::maps::OFFSETS`].

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_task, bpf_probe_read_kernel, generated},
};
use enforcer_common::{
    AgentConfig, ContainerRoot, KernelOffsets, MmapOffsets, OVERLAYFS_SUPER_MAGIC, OverlayLower,
    overlay_lower,
};

use crate::maps::{CONTAINER_MOUNT_NS, CONTAINER_ROOTS, offset, task_offset};

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

/// The value at `base + offset`, zero when it cannot be read. The helper
/// zeroes its destination when it fails, so no branch is needed, and none is
/// left for the verifier to follow both ways: in a loop, each such branch
/// multiplies the states it checks (the lineage walk once took most of the
/// exec programs' verification this way). `T` is a plain integer.
#[inline(always)]
pub(crate) fn read_or_zero<T: Copy>(base: u64, offset: u32) -> T {
    let mut value = core::mem::MaybeUninit::<T>::zeroed();
    // SAFETY: the helper checks the address and writes `size_of::<T>()`
    // bytes (zeroes on failure) into `value`.
    unsafe {
        generated::bpf_probe_read_kernel(
            value.as_mut_ptr().cast::<core::ffi::c_void>(),
            size_of::<T>() as u32,
            (base + u64::from(offset)) as *const core::ffi::c_void,
        );
        value.assume_init()
    }
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
pub(crate) fn current_task() -> u64 {
    // SAFETY: always valid in process context, which every hook here runs in.
    unsafe { bpf_get_current_task() }
}

/// The `struct file *` of the current task's descriptor `fd`, or `None`
/// when it is not open.
#[inline(always)]
pub(crate) fn current_fd_file(fd: u32, mmap: &MmapOffsets) -> Result<Option<u64>, ReadError> {
    let files = read_ptr(current_task(), mmap.task_files)?;
    let fdt = read_ptr(files, mmap.files_fdt)?;
    let max_fds: u32 = read(fdt, mmap.fdtable_max_fds)?;
    if fd >= max_fds {
        return Ok(None);
    }
    let fds = read_ptr(fdt, mmap.fdtable_fd)?;
    let file: u64 = read(fds + u64::from(fd) * 8, 0)?;
    Ok((file != 0).then_some(file))
}

/// Process id of the current task's real parent.
#[inline(always)]
pub(crate) fn current_parent_tgid(offsets: &KernelOffsets) -> Result<u32, ReadError> {
    let parent = read_ptr(current_task(), offsets.task_real_parent)?;
    read(parent, offsets.task_tgid)
}

/// The current task as a container process.
#[derive(Clone, Copy)]
pub(crate) struct Container {
    /// Inode number of the task's mount namespace.
    pub(crate) mnt_ns: u32,
    /// `struct mnt_namespace *` of the task.
    pub(crate) mnt_ns_ptr: u64,
    /// The container's root filesystem and mount namespace as first seen.
    pub(crate) home: ContainerRoot,
}

/// The cgroup v2 root's id: every task is there on hosts without cgroup v2,
/// so it never stands for one container.
const ROOT_CGROUP: u64 = 1;

/// The current task's container, or `None` for a host process.
///
/// A task in a group of `CONTAINER_ROOTS` is a container process unless it
/// runs in the host's mount namespace (a runtime's helper joining the group,
/// which no container process can enter), whatever root directory or mount
/// and user namespaces it has made for itself since: `chroot` into a
/// read-only hostPath of `/` gives a container process the host's root, and
/// it must not become a host process by that.
///
/// A group not seen yet is a container's when its task has a mount
/// namespace other than the host's *and* a root directory other than the
/// host's (the second condition keeps host services that only get a
/// private mount namespace, systemd's `PrivateTmp=` or `ProtectSystem=`, on
/// the host side). That is the container's first exec, made by its runtime
/// after `pivot_root` and before any of the container's own code ran, so
/// the root recorded then is the one the runtime made. A group made below
/// a recorded one is that container's too (see the body for when).
#[inline(always)]
pub(crate) fn current_container(
    offsets: &KernelOffsets,
    config: &AgentConfig,
) -> Result<Option<Container>, ReadError> {
    let task = current_task();
    let nsproxy = read_ptr(task, offsets.task_nsproxy)?;
    let mnt_ns_ptr = read_ptr(nsproxy, offsets.nsproxy_mnt_ns)?;
    let mnt_ns: u32 = read(mnt_ns_ptr, offsets.mnt_namespace_inum)?;
    if mnt_ns == config.host_mnt_ns {
        return Ok(None);
    }
    // SAFETY: plain helper call.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is two plain integers, copied out at once.
    if let Some(home) = unsafe { CONTAINER_ROOTS.get(cgroup) }.copied() {
        return Ok(Some(Container {
            mnt_ns,
            mnt_ns_ptr,
            home,
        }));
    }
    let fs = read_ptr(task, offsets.task_fs)?;
    let root_dentry = read_ptr(fs, offsets.fs_root_dentry)?;
    let root_inode = read_ptr(root_dentry, offsets.dentry_inode)?;
    let root_ino: u64 = read(root_inode, offsets.inode_ino)?;
    let root_sb = read_ptr(root_inode, offsets.inode_sb)?;
    let root_dev: u32 = read(root_sb, offsets.sb_dev)?;
    let host_root = root_ino == config.host_root_ino && root_dev == config.host_root_dev;
    // A group made below a container's, by a process that can write the
    // cgroup tree and moved into it, is that container's when the process
    // is still in the container's mount namespace or has the host's root
    // (a chroot into a hostPath of `/` before its first exec there). A
    // container runtime inside the container (Docker in Docker, kind's
    // nodes) gives its own containers a namespace and a root of their own:
    // those are recorded as containers of their own.
    let inherited = inherited_root();
    if inherited != 0 && (host_root || mnt_ns == inherited as u32) {
        let home = ContainerRoot {
            root_dev: (inherited >> 32) as u32,
            mnt_ns: inherited as u32,
        };
        let _ = CONTAINER_ROOTS.insert(cgroup, home, u64::from(BPF_NOEXIST));
        return Ok(Some(Container {
            mnt_ns,
            mnt_ns_ptr,
            home,
        }));
    }
    if host_root {
        return Ok(None);
    }
    let home = ContainerRoot { root_dev, mnt_ns };
    // BPF_NOEXIST: of two first execs racing, the first record stays.
    if cgroup > ROOT_CGROUP
        && CONTAINER_ROOTS
            .insert(cgroup, home, u64::from(BPF_NOEXIST))
            .is_ok()
    {
        crate::mounts::forget_container(mnt_ns);
    }
    Ok(Some(Container {
        mnt_ns,
        mnt_ns_ptr,
        home,
    }))
}

/// Groups above the current task's looked at for a container's record.
const CGROUP_ANCESTORS_MAX: u32 = 8;

/// The record of the nearest group above the current task's that has one,
/// as `root_dev << 32 | mnt_ns`, or 0. A function of its own: its stack is
/// then beside the decision's, not on top of it.
#[inline(never)]
fn inherited_root() -> u64 {
    let css_set: u64 = read_or_zero(current_task(), task_offset!(task_cgroups));
    let mut group: u64 = read_or_zero(css_set, task_offset!(css_set_dfl_cgrp));
    for _ in 0..CGROUP_ANCESTORS_MAX {
        group = read_or_zero(group, task_offset!(cgroup_parent));
        if group < KERNEL_SPACE {
            return 0;
        }
        let node: u64 = read_or_zero(group, task_offset!(cgroup_kn));
        let id: u64 = read_or_zero(node, task_offset!(kernfs_node_id));
        // SAFETY: the value is two plain integers, copied out at once.
        if let Some(home) = unsafe { CONTAINER_ROOTS.get(id) } {
            return (u64::from(home.root_dev) << 32) | u64::from(home.mnt_ns);
        }
    }
    0
}

/// Notes that the current task, a container process, runs in its mount
/// namespace: that namespace's writable mounts are ways for a container to
/// write a filesystem ([`crate::mounts`]). Called by the exec programs after
/// their decision, not inside it, where its stack would add to the
/// decision's: at each exec, which also keeps the entry recent in the LRU
/// table and covers containers already running when the agent started.
///
/// A function of its own: its stack is then beside the decision's, not on
/// top of it.
#[inline(never)]
pub(crate) fn note_mount_namespace() {
    // SAFETY: a plain helper call, and a value only tested for presence.
    if unsafe { CONTAINER_ROOTS.get(bpf_get_current_cgroup_id()) }.is_none() {
        return;
    }
    let id: u64 = read_or_zero(current_mnt_ns(), offset!(mnt_namespace_id));
    // SAFETY: a plain value, only tested for presence.
    if id != 0 && unsafe { CONTAINER_MOUNT_NS.get(id) }.is_none() {
        // A failed insert leaves the namespace's writable mounts unseen by
        // the mount walk: nothing to do about it here.
        let _ = CONTAINER_MOUNT_NS.insert(id, 0, 0);
    }
}

/// The current task's `struct mnt_namespace *`; null when it cannot be read
/// (every read from it then gives zero).
#[inline(always)]
pub(crate) fn current_mnt_ns() -> u64 {
    let nsproxy: u64 = read_or_zero(current_task(), offset!(task_nsproxy));
    read_or_zero(nsproxy, offset!(nsproxy_mnt_ns))
}

/// What the drift check needs to know about a file.
#[derive(Clone, Copy)]
pub(crate) struct FileFacts {
    /// `struct inode *` of the file's path.
    pub(crate) inode: u64,
    /// `struct dentry *`, for the name.
    pub(crate) dentry: u64,
    /// `struct vfsmount *` the file was opened through.
    pub(crate) mnt: u64,
    /// The mount's `struct mnt_namespace *`: null for a mount detached from
    /// its namespace (`umount -l` while a descriptor holds it).
    pub(crate) mnt_ns: u64,
    /// The mount is a kernel-internal one (`MNT_NS_INTERNAL`), such as the
    /// private clones overlayfs makes of its layers.
    pub(crate) mnt_internal: bool,
    /// `struct super_block *` of the inode.
    pub(crate) sb: u64,
    pub(crate) ino: u64,
    pub(crate) dev: u32,
    pub(crate) fs_magic: u64,
    pub(crate) sb_flags: u64,
    pub(crate) mnt_flags: u32,
}

impl FileFacts {
    /// The mount is in no mount namespace: kernel-internal or detached.
    #[inline(always)]
    pub(crate) fn outside_namespaces(&self) -> bool {
        self.mnt_internal || self.mnt_ns == 0
    }
}

/// `ERR_PTR(-MAX_ERRNO)` and up are error pointers (`MNT_NS_INTERNAL` is one).
pub(crate) const ERR_PTR_MIN: u64 = 0u64.wrapping_sub(4095);

/// Facts about `file` (a `struct file *`).
///
/// The inode comes from the file's path, not `file.f_inode`: overlayfs maps
/// files through a "real" file whose `f_inode` is the layer's inode. Up to
/// 6.5 that real file carries the overlay path, so its path's inode is the
/// overlay inode; from 6.6 it carries the layer's path, on a private layer
/// mount ([`FileFacts::mnt_internal`]), and [`backing_user_path`] finds the
/// overlay path.
#[inline(always)]
pub(crate) fn file_facts(file: u64, offsets: &KernelOffsets) -> Result<FileFacts, ReadError> {
    path_facts(
        read_ptr(file, offsets.file_path_mnt)?,
        read_ptr(file, offsets.file_path_dentry)?,
        offsets,
    )
}

/// Facts about the file at `mnt` (`struct vfsmount *`) and `dentry`.
#[inline(always)]
pub(crate) fn path_facts(
    mnt: u64,
    dentry: u64,
    offsets: &KernelOffsets,
) -> Result<FileFacts, ReadError> {
    let inode = read_ptr(dentry, offsets.dentry_inode)?;
    let sb = read_ptr(inode, offsets.inode_sb)?;
    let mnt_ns: u64 = read(mnt, offsets.vfsmount_mnt_ns)?;
    Ok(FileFacts {
        inode,
        dentry,
        mnt,
        mnt_ns,
        mnt_internal: mnt_ns >= ERR_PTR_MIN,
        sb,
        ino: read(inode, offsets.inode_ino)?,
        dev: read(sb, offsets.sb_dev)?,
        fs_magic: read(sb, offsets.sb_magic)?,
        sb_flags: read(sb, offsets.sb_flags)?,
        mnt_flags: read(mnt, offsets.vfsmount_flags)?,
    })
}

/// The user-visible overlay file behind `file`, when `file` is an overlayfs
/// backing file (6.6+): `backing_file.user_path`, right after the embedded
/// `struct file`. Whether a file is a backing file is a `FMODE_*` bit whose
/// value changed between kernels, so the path is read and trusted only when
/// it leads to an overlayfs inode.
#[inline(always)]
pub(crate) fn backing_user_path(file: u64, offsets: &KernelOffsets) -> Option<FileFacts> {
    if offsets.backing_file_user_path == 0 {
        return None;
    }
    let mnt = read_ptr(file, offsets.backing_file_user_path).ok()?;
    let dentry = read_ptr(file, offsets.backing_file_user_path + 8).ok()?;
    if mnt < KERNEL_SPACE || dentry < KERNEL_SPACE {
        return None;
    }
    path_facts(mnt, dentry, offsets)
        .ok()
        .filter(|facts| facts.fs_magic == OVERLAYFS_SUPER_MAGIC)
}

/// A kernel pointer read through an offset that may be derived rather than
/// read from BTF: anything that is not a kernel address is a read error.
#[inline(always)]
pub(crate) fn read_kernel_ptr(base: u64, offset: u32) -> Result<u64, ReadError> {
    match read::<u64>(base, offset)? {
        0 => Ok(0),
        pointer if pointer >= KERNEL_SPACE => Ok(pointer),
        _ => Err(ReadError),
    }
}

/// The inode an overlay inode was copied up from or still lives on, or 0
/// when it has none (created in the upper layer).
#[inline(always)]
pub(crate) fn lower_inode(
    inode: u64,
    lower: &OverlayLower,
    offsets: &KernelOffsets,
) -> Result<u64, ReadError> {
    let field = read_kernel_ptr(inode, lower.lower)?;
    if field == 0 {
        return Ok(0);
    }
    match lower.kind {
        overlay_lower::INODE => Ok(field),
        overlay_lower::DENTRY => read_kernel_ptr(field, offsets.dentry_inode),
        overlay_lower::ENTRY => {
            let layers: u32 = read(field, lower.entry_numlower)?;
            if layers == 0 {
                return Ok(0);
            }
            let dentry = read_kernel_ptr(field, lower.entry_dentry)?;
            if dentry == 0 {
                return Ok(0);
            }
            read_kernel_ptr(dentry, offsets.dentry_inode)
        }
        _ => Err(ReadError),
    }
}

/// The inode whose bytes an overlay inode shows: its upper inode when it
/// has one (created or copied up), else its lower one.
#[inline(always)]
pub(crate) fn overlay_real_inode(
    inode: u64,
    lower: &OverlayLower,
    offsets: &KernelOffsets,
) -> Result<u64, ReadError> {
    let upper = read_kernel_ptr(inode, offsets.ovl_inode_upperdentry)?;
    if upper != 0 {
        return read_ptr(upper, offsets.dentry_inode);
    }
    match lower_inode(inode, lower, offsets)? {
        0 => Err(ReadError),
        lower => Ok(lower),
    }
}

/// Whether the user namespace at `user_ns` (a `struct user_namespace *`) is
/// the initial one, whose root is the host's: a filesystem or mount
/// namespace it owns cannot be changed by a container process without
/// `CAP_SYS_ADMIN` on the host.
#[inline(always)]
pub(crate) fn is_initial_user_ns(user_ns: u64, offsets: &KernelOffsets) -> Result<bool, ReadError> {
    Ok(read::<u32>(user_ns, offsets.user_ns_level)? == 0)
}

/// `current->mm->exe_file`: the program the task runs (null for kernel
/// threads, which never reach the hooks here).
#[inline(always)]
fn current_exe_file(offsets: &KernelOffsets) -> Result<u64, ReadError> {
    let mm = read_ptr(current_task(), offsets.task_mm)?;
    read(mm, offsets.mm_exe_file)
}

/// Whether `file` is the program the current task runs: its own mappings
/// were decided at exec.
#[inline(always)]
pub(crate) fn is_current_exe(file: u64, offsets: &KernelOffsets) -> bool {
    matches!(current_exe_file(offsets), Ok(exe) if exe == file)
}

/// Kernel addresses are the upper half of the address space on x86-64 and
/// arm64. Nothing tighter holds: with 5-level paging the x86-64 direct map
/// starts at `0xff11_0000_0000_0000`.
pub(crate) const KERNEL_SPACE: u64 = 1 << 63;

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
