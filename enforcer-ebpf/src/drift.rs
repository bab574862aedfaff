//! The drift decision: is a container process about to run a file that is
//! not part of its image?

use aya_ebpf::helpers::bpf_get_current_cgroup_id;
use enforcer_common::{
    ABI_VERSION, AgentConfig, DriftSettings, HUGETLBFS_MAGIC, KernelOffsets, MNT_READONLY,
    OVERLAYFS_SUPER_MAGIC, SB_KERNMOUNT, SB_RDONLY, TMPFS_MAGIC, counter, drift_flags,
    drift_policy, event_flags, layer, mode, tracking, via,
};

use crate::{
    events,
    kernel::{self, Container, FileFacts, ReadError},
    maps::{CONFIG, CONTAINER_DRIFT, DRIFT_POLICY, OFFSETS, TRACKING, WRITTEN_FILES, count},
    path,
};

/// A container process is about to run a file that is not from its image.
#[derive(Clone, Copy)]
pub(crate) struct Drift {
    /// One of `mode::ENFORCE`, `mode::AUDIT`.
    pub(crate) mode: u32,
    pub(crate) mnt_ns: u32,
    pub(crate) file: FileFacts,
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

/// The offsets the agent resolved at load time.
#[inline(always)]
pub(crate) fn offsets() -> KernelOffsets {
    OFFSETS.load()
}

/// Decides whether the current task may run `file` (a `struct file *`)
/// `via` exec or an executable mapping.
#[inline(always)]
pub(crate) fn check_file(
    file: u64,
    via: u32,
    offsets: &KernelOffsets,
) -> Result<Verdict, ReadError> {
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
        return Ok(Verdict::Allow);
    }
    // Host processes are never subject to container drift rules, whatever
    // filesystem they run from.
    let Some(container) = kernel::current_container(offsets, &config)? else {
        return Ok(Verdict::Allow);
    };
    let facts = kernel::file_facts(file, offsets)?;
    // A mapping of an overlay file is made through a backing file on the
    // layer's private mount (6.6+): decide on the overlay file it stands for.
    let facts = if facts.mnt_internal {
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
    } else {
        (settings.mode, 0)
    };
    Ok(Verdict::Drift(Drift {
        // One verifier state for either outcome, as for `layer`.
        mode: path::opaque(mode),
        flags: path::opaque(flags),
        mnt_ns: container.mnt_ns,
        file: facts,
        layer,
        via,
        policy,
    }))
}

/// Why `facts` is not an image file, or `None` when it is (or is allowed).
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
    let read_only = facts.mnt_flags & MNT_READONLY != 0 || facts.sb_flags & SB_RDONLY != 0;
    if facts.mnt_internal {
        // A file on an overlay layer's private mount: the lower layers'
        // mounts are read-only, the upper layer's is writable. (With stacked
        // overlays the user path of a lower layer's mapping is itself on a
        // read-only layer mount.)
        return Ok((!read_only).then_some(layer::OVERLAY_UPPER));
    }
    if facts.mnt != container.root_mnt {
        // Another mount in the container. Read-only ones (secrets, config
        // maps, host binaries bind-mounted read-only) cannot have been
        // written from inside; writable ones (tmpfs, emptyDir, volumes) can.
        let allowed = read_only || flags & drift_flags::ALLOW_WRITABLE_MOUNTS != 0;
        return Ok((!allowed).then_some(layer::WRITABLE_MOUNT));
    }
    if facts.fs_magic == OVERLAYFS_SUPER_MAGIC {
        return Ok(kernel::overlay_has_upper(facts.inode, offsets)?.then_some(layer::OVERLAY_UPPER));
    }
    // A root that is not overlayfs (btrfs or zfs snapshotters, bind-mounted
    // directories): what container processes wrote is tracked (tracking.rs),
    // once the agent has attached the tracking programs.
    if TRACKING.get(0).copied() == Some(tracking::ON_DEMAND) {
        events::untracked_root(container.mnt_ns, facts);
    }
    // SAFETY: the value is a plain u32 read once; deletions only happen when
    // the inode is freed, which cannot happen while this file is open.
    Ok(unsafe { WRITTEN_FILES.get(facts.inode) }.map(|_| layer::WRITTEN))
}
