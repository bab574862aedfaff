//! The drift decision: is a container process about to run a file that is
//! not part of its image?

use aya_ebpf::helpers::bpf_get_current_cgroup_id;
use enforcer_common::{
    ABI_VERSION, AgentConfig, DriftSettings, HUGETLBFS_MAGIC, KernelOffsets, MNT_LOCK_READONLY,
    MNT_READONLY, OVERLAY_STACK_MAX, OVERLAYFS_SUPER_MAGIC, SB_KERNMOUNT, SB_RDONLY, TMPFS_MAGIC,
    counter, drift_flags, drift_policy, event_flags, layer, mode, overlay_lower, tracking, via,
};

use crate::{
    events,
    kernel::{self, Container, FileFacts, ReadError},
    maps::{
        CONFIG, CONTAINER_DRIFT, CONTAINER_ROOTS, CONTAINER_SUPERBLOCKS, DRIFT_POLICY, OFFSETS,
        OVERLAY_LOWER, TRACKING, WRITTEN_FILES, count,
    },
    mounts, path,
};

/// A container process is about to run a file that is not from its image.
#[derive(Clone, Copy)]
pub(crate) struct Drift {
    /// One of `mode::ENFORCE`, `mode::AUDIT`.
    pub(crate) mode: u32,
    pub(crate) mnt_ns: u32,
    /// The file's `struct dentry *` (for its name), inode number and
    /// device: what the record says of it, and no more, since a `Drift`
    /// sits on stacks the exec programs have nearly filled.
    pub(crate) dentry: u64,
    pub(crate) ino: u64,
    pub(crate) dev: u32,
    /// One of `layer::*`.
    pub(crate) layer: u32,
    /// One of `via::*`.
    pub(crate) via: u32,
    /// The `DRIFT_POLICY` index that decided.
    pub(crate) policy: u32,
    /// Bits of `event_flags` for the record.
    pub(crate) flags: u32,
}

pub(crate) enum Verdict {
    Allow,
    Drift(Drift),
}

/// The offsets the agent resolved at load time, read where they are.
///
/// `Global::load` is one volatile read of the whole struct (so that LLVM
/// cannot fold the object's zeroes into the code): 168 bytes copied onto
/// every program's stack, which the exec programs cannot spare. A reference
/// to the read-only map whose address LLVM cannot see through (`black_box`)
/// keeps the values unfolded without the copy; each field is then one load
/// from the frozen map, a constant to the verifier.
#[inline(always)]
pub(crate) fn offsets() -> &'static KernelOffsets {
    let offsets = core::ptr::from_ref(&OFFSETS).cast::<KernelOffsets>();
    // SAFETY: `Global<T>` is `repr(transparent)` over an initialised `T`,
    // which lives as long as the program.
    unsafe { &*core::hint::black_box(offsets) }
}

/// The drift policy over the current task, when it is a container process
/// under a policy that checks.
#[derive(Clone, Copy)]
pub(crate) struct Scope {
    pub(crate) settings: DriftSettings,
    /// The `DRIFT_POLICY` index of `settings`.
    pub(crate) policy: u32,
    pub(crate) container: Container,
}

/// The current task's [`Scope`], or `None` for a host process or a policy
/// that is off.
#[inline(always)]
pub(crate) fn scope(offsets: &KernelOffsets) -> Result<Option<Scope>, ReadError> {
    let config: AgentConfig = CONFIG.load();
    if config.abi_version != ABI_VERSION {
        return Err(ReadError);
    }
    // SAFETY: the value is a plain u32, copied out at once.
    let policy = unsafe { CONTAINER_DRIFT.get(bpf_get_current_cgroup_id()) }
        .copied()
        .unwrap_or(drift_policy::UNKNOWN);
    // A constant on a miss and a map value on a hit would be two verifier
    // states through everything below, the path walk included (a program
    // too complex to load); made opaque, they are one.
    let policy = path::opaque(policy);
    let settings: DriftSettings = match DRIFT_POLICY.get(policy) {
        Some(settings) => *settings,
        None => return Err(ReadError),
    };
    if settings.mode == mode::OFF {
        return Ok(None);
    }
    // Host processes are never subject to container drift rules, whatever
    // filesystem they run from.
    let Some(container) = kernel::current_container(offsets, &config)? else {
        return Ok(None);
    };
    Ok(Some(Scope {
        settings,
        policy,
        container,
    }))
}

/// Whether `file` is not image content for `scope` (its layer), before
/// allowed paths and exec sessions are considered: the cheap part of
/// [`check_file`], to pick among several files the one to decide.
#[inline(always)]
pub(crate) fn layer_of(
    file: u64,
    via: u32,
    scope: &Scope,
    offsets: &KernelOffsets,
) -> Result<Option<u32>, ReadError> {
    let facts = kernel::file_facts(file, offsets)?;
    classify(&facts, &scope.container, via, scope.settings.flags, offsets)
}

/// Drift the kernel could not decide on: `file` stands for a file that ran
/// but could not be found (`layer`), refused in enforce mode (fail closed)
/// and reported, whatever allowed paths say.
#[inline(always)]
pub(crate) fn undecided(
    file: u64,
    via: u32,
    layer: u32,
    offsets: &KernelOffsets,
) -> Result<Verdict, ReadError> {
    let Some(scope) = scope(offsets)? else {
        return Ok(Verdict::Allow);
    };
    let facts = kernel::file_facts(file, offsets)?;
    Ok(Verdict::Drift(Drift {
        mode: scope.settings.mode,
        mnt_ns: scope.container.mnt_ns,
        dentry: facts.dentry,
        ino: facts.ino,
        dev: facts.dev,
        layer,
        via,
        policy: scope.policy,
        flags: 0,
    }))
}

/// The verdict on a check that a failed read of kernel memory left
/// undecided (`via`): drift of layer `READ_ERROR`, so that it is reported.
/// For a process of a container the kernel recorded or the agent placed, in
/// its drift policy's mode: refused in enforce mode (fail closed). For any
/// other process in audit mode, allowed: it may be the host's, which must
/// keep running.
#[inline(always)]
pub(crate) fn unreadable(via: u32) -> Verdict {
    count(counter::READ_ERRORS);
    // SAFETY: a plain helper call.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: a plain value, copied out.
    let placed = unsafe { CONTAINER_DRIFT.get(cgroup) }.copied();
    let policy = placed.unwrap_or(drift_policy::UNKNOWN);
    let mut mode = match DRIFT_POLICY.get(policy) {
        Some(settings) => settings.mode,
        None => mode::AUDIT,
    };
    if mode == mode::OFF {
        return Verdict::Allow;
    }
    // Nested rather than `placed.is_some() || recorded`, which LLVM makes
    // one OR of the two lookups' pointers, and the verifier refuses that.
    // SAFETY: a plain value, only tested for presence.
    if placed.is_none() && unsafe { CONTAINER_ROOTS.get(cgroup) }.is_none() {
        mode = mode::AUDIT;
    }
    Verdict::Drift(Drift {
        mode,
        mnt_ns: 0,
        dentry: 0,
        ino: 0,
        dev: 0,
        layer: layer::READ_ERROR,
        via,
        policy,
        flags: 0,
    })
}

/// `checked`, or [`unreadable`] when a read failed: one verdict, carried
/// out and reported at one place in each program.
#[inline(always)]
pub(crate) fn or_unreadable(checked: Result<Verdict, ReadError>, via: u32) -> Verdict {
    match checked {
        Ok(verdict) => verdict,
        Err(ReadError) => unreadable(via),
    }
}

/// Decides whether the current task may run `file` (a `struct file *`)
/// `via` exec or an executable mapping.
#[inline(always)]
pub(crate) fn check_file(
    file: u64,
    via: u32,
    offsets: &KernelOffsets,
) -> Result<Verdict, ReadError> {
    let Some(Scope {
        settings,
        policy,
        container,
    }) = scope(offsets)?
    else {
        return Ok(Verdict::Allow);
    };
    let facts = kernel::file_facts(file, offsets)?;
    // A mapping of an overlay file is made through a backing file on the
    // layer's private mount (6.6+): decide on the overlay file it stands for.
    let facts = if facts.outside_namespaces() {
        kernel::backing_user_path(file, offsets).unwrap_or(facts)
    } else {
        facts
    };
    let Some(layer) = classify(&facts, &container, via, settings.flags, offsets)? else {
        return Ok(Verdict::Allow);
    };
    // Each layer `classify` returns would otherwise be one more pass of the
    // verifier through the path walk (three times the load time).
    let layer = path::opaque(layer);
    // memfds have no path; --allow-memfd is their knob.
    if settings.flags & drift_flags::ALLOW_PATHS != 0 && layer != layer::MEMFD {
        let accepted = path::accepted(
            facts.mnt,
            facts.dentry,
            container.mnt_ns_ptr,
            settings.path_dfa_bank,
            offsets,
        )?;
        // Every bit of the mask: the strictest policy (unknown containers)
        // has one bit per policy, and allows only what all of them allow.
        let mask = settings.path_mask;
        if mask != 0 && accepted & mask == mask {
            count(counter::DRIFT_ALLOWED_BY_PATH);
            return Ok(Verdict::Allow);
        }
    }
    // Only where it changes the outcome: the walk is a few dozen reads.
    let exec_session = settings.mode == mode::ENFORCE
        && settings.flags & drift_flags::AUDIT_EXEC_SESSIONS != 0
        && events::in_exec_session(offsets);
    let (mode, flags) = if exec_session {
        (mode::AUDIT, event_flags::EXEC_SESSION)
    } else if layer == layer::UNCHECKED_MOUNT {
        count(counter::UNCHECKED_MOUNTS);
        (mode::AUDIT, 0)
    } else {
        (settings.mode, 0)
    };
    Ok(Verdict::Drift(Drift {
        // One verifier state for either outcome, as for `layer`.
        mode: path::opaque(mode),
        flags: path::opaque(flags),
        mnt_ns: container.mnt_ns,
        dentry: facts.dentry,
        ino: facts.ino,
        dev: facts.dev,
        layer,
        via,
        policy,
    }))
}

/// Why `facts` is not an image file, or `None` when it is (or is allowed).
///
/// Decided on what no container process can change: the superblock that
/// holds the inode (the container's own root filesystem as the kernel first
/// saw it, or another one and the user namespace that owns it), the inode's
/// upper layer, and mount flags only where no container process could have
/// set them. Not on the task's root directory, its mount namespace, or the
/// mount the file was reached through alone.
#[inline(always)]
fn classify(
    facts: &FileFacts,
    container: &Container,
    via: u32,
    flags: u32,
    offsets: &KernelOffsets,
) -> Result<Option<u32>, ReadError> {
    // memfd and System V shm files live on the kernel's internal shmem mount.
    if (facts.fs_magic == TMPFS_MAGIC || facts.fs_magic == HUGETLBFS_MAGIC)
        && facts.sb_flags & SB_KERNMOUNT != 0
    {
        // Executable *mappings* of memfds are how JITs with W^X double
        // mapping work (.NET 7+ by default); only executing one is fileless
        // execution.
        let allowed = via != via::EXEC || flags & drift_flags::ALLOW_MEMFD != 0;
        return Ok((!allowed).then_some(layer::MEMFD));
    }
    if facts.mnt_internal {
        // A file on an overlay layer's private mount whose overlay file was
        // not found: the lower layers' mounts are read-only, the upper
        // layer's is writable. (With stacked overlays the user path of a
        // lower layer's mapping is itself on a read-only layer mount.)
        let read_only = facts.mnt_flags & MNT_READONLY != 0 || facts.sb_flags & SB_RDONLY != 0;
        return Ok((!read_only).then_some(layer::OVERLAY_UPPER));
    }
    // Overlays other than the container's root that a user namespace owns
    // (one the container mounted, `unshare -Urm` then `mount -t overlay`):
    // what counts is the file whose bytes they show, which may be one the
    // container wrote on its own root or elsewhere.
    let lower = OVERLAY_LOWER.load();
    let (mut inode, mut sb, mut dev, mut magic) =
        (facts.inode, facts.sb, facts.dev, facts.fs_magic);
    let mut stacked = false;
    for _ in 0..OVERLAY_STACK_MAX {
        if dev == container.home.root_dev || magic != OVERLAYFS_SUPER_MAGIC {
            break;
        }
        let owner = kernel::read_ptr(sb, offsets.sb_user_ns)?;
        if kernel::is_initial_user_ns(owner, offsets)? {
            break;
        }
        if lower.kind == overlay_lower::UNKNOWN {
            return Ok(Some(layer::CONTAINER_MOUNT));
        }
        inode = kernel::overlay_real_inode(inode, &lower, offsets)?;
        sb = kernel::read_ptr(inode, offsets.inode_sb)?;
        dev = kernel::read(sb, offsets.sb_dev)?;
        magic = kernel::read(sb, offsets.sb_magic)?;
        stacked = true;
    }
    // The container's own root filesystem, through whatever mount, bind
    // mount or chroot it is reached.
    if dev == container.home.root_dev {
        if magic == OVERLAYFS_SUPER_MAGIC {
            return Ok(kernel::overlay_has_upper(inode, offsets)?.then_some(layer::OVERLAY_UPPER));
        }
        // A root that is not overlayfs (btrfs or zfs snapshotters,
        // bind-mounted directories): what container processes wrote is
        // tracked (tracking.rs), once the agent has attached the tracking
        // programs.
        if TRACKING.get(0).copied() == Some(tracking::ON_DEMAND) {
            events::untracked_root(container.mnt_ns, facts);
        }
        // SAFETY: the value is a plain u32 read once; deletions only happen
        // when the inode is freed, which cannot happen while this file is
        // open.
        return Ok(unsafe { WRITTEN_FILES.get(inode) }.map(|_| layer::WRITTEN));
    }
    // Another filesystem. One that a user namespace owns was made by a
    // container process (or for one, by a rootless runtime): it could have
    // filled it and made it read-only, so nothing on it is image content.
    // So is an overlay of one nested deeper than overlayfs allows, and one
    // a container process made or remounted with the host's privileges.
    let owner = kernel::read_ptr(sb, offsets.sb_user_ns)?;
    // SAFETY: a plain value, only tested for presence.
    let made_by_a_container = unsafe { CONTAINER_SUPERBLOCKS.get(sb) }.is_some();
    if made_by_a_container || !kernel::is_initial_user_ns(owner, offsets)? {
        return Ok(Some(layer::CONTAINER_MOUNT));
    }
    let sb_flags: u64 = if stacked {
        kernel::read(sb, offsets.sb_flags)?
    } else {
        facts.sb_flags
    };
    // A read-only filesystem of the initial user namespace: only the host
    // can have made it so, or a process of this container that changed
    // mounts with the host's privileges (a tmpfs it filled and remounted
    // read-only, which the signal backend cannot mark by its superblock).
    if sb_flags & SB_RDONLY != 0 {
        return Ok(mounts::container_changed_mounts(container.home.mnt_ns)
            .then_some(layer::CONTAINER_MOUNT));
    }
    if stacked {
        // A layer of an overlay the container mounted, on a filesystem it
        // may be able to write: the mount the overlay reached it through,
        // and who made that read-only, is not known here.
        return Ok(Some(layer::CONTAINER_MOUNT));
    }
    if facts.mnt_flags & MNT_READONLY == 0 {
        // A writable mount (tmpfs, emptyDir and other volumes).
        let allowed = flags & drift_flags::ALLOW_WRITABLE_MOUNTS != 0;
        return Ok((!allowed).then_some(layer::WRITABLE_MOUNT));
    }
    if !read_only_by_the_host(facts, container, offsets)? {
        return Ok(Some(layer::CONTAINER_MOUNT));
    }
    // Read-only here, but perhaps written through another mount of the same
    // filesystem: one volume mounted read-write and read-only in one pod.
    if !mounts::enabled() {
        return Ok(Some(layer::UNCHECKED_MOUNT));
    }
    Ok(
        match mounts::writable_by_a_container(facts.sb, facts.dentry) {
            mounts::found::NOTHING => None,
            mounts::found::WRITABLE => Some(layer::CONTAINER_MOUNT),
            _ => Some(layer::UNRESOLVED),
        },
    )
}

/// Whether the read-only flag of the mount `facts` was reached through is
/// one no container process could have set (`Secret`s, `ConfigMap`s and
/// `hostPath`s the runtime mounted read-only): the flag is locked (it was
/// read-only before the mount was copied into a user namespace's mount
/// namespace, and stays so there), or the mount is in a mount namespace
/// that the initial user namespace owns, or in the container's own, made by
/// its runtime. A read-only bind mount a container process made in a user
/// namespace of its own, or a mount detached from every namespace, is not;
/// nor is any mount of a namespace in which a container process mounted,
/// moved or re-flagged anything, or any mount at all once the container did
/// so with the host's privileges ([`crate::mount_changes`]).
#[inline(always)]
fn read_only_by_the_host(
    facts: &FileFacts,
    container: &Container,
    offsets: &KernelOffsets,
) -> Result<bool, ReadError> {
    if facts.mnt_flags & MNT_LOCK_READONLY != 0 {
        return Ok(true);
    }
    if facts.mnt_ns == 0 {
        return Ok(false);
    }
    if mounts::namespace_changed(facts.mnt_ns)
        || mounts::container_changed_mounts(container.home.mnt_ns)
    {
        return Ok(false);
    }
    let inum: u32 = kernel::read(facts.mnt_ns, offsets.mnt_namespace_inum)?;
    if inum == container.home.mnt_ns {
        return Ok(true);
    }
    let owner = kernel::read_ptr(facts.mnt_ns, offsets.mnt_namespace_user_ns)?;
    kernel::is_initial_user_ns(owner, offsets)
}
