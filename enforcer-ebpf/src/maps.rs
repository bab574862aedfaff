//! Maps and load-time globals shared by every program.

use aya_ebpf::{
    Global,
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::InodeStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use enforcer_common::{
    AgentConfig, CONTAINER_MOUNT_NS_MAX, CONTAINER_ROOTS_MAX, CONTAINER_SCOPES_MAX, ContainerRoot,
    DRIFT_POLICIES_MAX, DriftSettings, FileId, KernelOffsets, MmapOffsets, MountOffsets,
    OverlayLower, PATH_BUF_LEN, PathDfaBank, REPORT_KEYS_MAX, ReportKey, ReportWindow, TaskOffsets,
    VSHIELD_FILES_MAX, VSHIELD_RULES_MAX, VSHIELD_SLOTS, VShieldKey, VShieldRule,
    WRITTEN_FILES_MAX, counter,
};

/// Kernel structure offsets, overridden by the agent at load time.
#[unsafe(no_mangle)]
// SAFETY: every field is a plain integer, so all-zero is a valid value.
pub(crate) static OFFSETS: Global<KernelOffsets> = Global::new(unsafe { core::mem::zeroed() });

/// Offsets for the signal backend's `mmap` check, overridden at load time.
#[unsafe(no_mangle)]
// SAFETY: as above.
pub(crate) static MMAP_OFFSETS: Global<MmapOffsets> = Global::new(unsafe { core::mem::zeroed() });

/// Where overlayfs keeps an overlay inode's lower inode, overridden at load
/// time.
#[unsafe(no_mangle)]
// SAFETY: as above.
pub(crate) static OVERLAY_LOWER: Global<OverlayLower> = Global::new(unsafe { core::mem::zeroed() });

/// Offsets for the lineage in decision records, overridden at load time.
#[unsafe(no_mangle)]
// SAFETY: as above.
pub(crate) static TASK_OFFSETS: Global<TaskOffsets> = Global::new(unsafe { core::mem::zeroed() });

/// Offsets for the walk over a filesystem's mounts, overridden at load time.
#[unsafe(no_mangle)]
// SAFETY: as above.
pub(crate) static MOUNT_OFFSETS: Global<MountOffsets> = Global::new(unsafe { core::mem::zeroed() });

/// Settings fixed while the programs are loaded, overridden at load time.
#[unsafe(no_mangle)]
// SAFETY: as above.
pub(crate) static CONFIG: Global<AgentConfig> = Global::new(unsafe { core::mem::zeroed() });

/// Audit records for userspace.
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// The rate limit of decision records: the keys seen most recently. An
/// evicted key starts a new window when it comes back, so the table's size
/// bounds memory, never the records of a key that is busy now.
#[map]
pub(crate) static REPORTED: LruHashMap<ReportKey, ReportWindow> =
    LruHashMap::with_max_entries(REPORT_KEYS_MAX, 0);

/// Per-CPU counters, indexed by [`counter`].
#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Files written in containers whose root is not overlayfs, keyed by the
/// address of their `struct inode`. Entries are deleted when the kernel
/// frees the inode, so a reused address never inherits a mark.
#[map]
pub(crate) static WRITTEN_FILES: HashMap<u64, u32> =
    HashMap::with_max_entries(WRITTEN_FILES_MAX, BPF_F_NO_PREALLOC);

/// Whether writes on roots that are not overlayfs are tracked: one of
/// [`enforcer_common::tracking`], written by the agent.
#[map]
pub(crate) static TRACKING: Array<u32> = Array::with_max_entries(1, 0);

/// Drift settings, by [`enforcer_common::drift_policy`] index.
#[map]
pub(crate) static DRIFT_POLICY: Array<DriftSettings> =
    Array::with_max_entries(DRIFT_POLICIES_MAX, 0);

/// The `DRIFT_POLICY` index of each cgroup of the containers the agent
/// knows, by cgroup id; a container not here is under
/// [`enforcer_common::drift_policy::UNKNOWN`].
#[map]
pub(crate) static CONTAINER_DRIFT: HashMap<u64, u32> =
    HashMap::with_max_entries(CONTAINER_SCOPES_MAX, BPF_F_NO_PREALLOC);

/// What each container's processes are measured against, by cgroup id:
/// its root filesystem and mount namespace as the kernel first saw them (at
/// the first exec in the group, before any program of the container ran),
/// or as the agent found them for containers already running when it
/// started. A process whose group is here is a container process whatever
/// it does to its root directory or namespaces afterwards.
#[map]
pub(crate) static CONTAINER_ROOTS: LruHashMap<u64, ContainerRoot> =
    LruHashMap::with_max_entries(CONTAINER_ROOTS_MAX, 0);

/// The mount namespaces container processes have run programs in, by id
/// (`KernelOffsets::mnt_namespace_id`): a writable mount in one of them is
/// one a container can write through ([`crate::mounts`]).
#[map]
pub(crate) static CONTAINER_MOUNT_NS: LruHashMap<u64, u32> =
    LruHashMap::with_max_entries(CONTAINER_MOUNT_NS_MAX, 0);

/// Superblocks a container process created or remounted, by address
/// ([`crate::mount_changes`]); deleted when the kernel frees the superblock.
#[map]
pub(crate) static CONTAINER_SUPERBLOCKS: LruHashMap<u64, u32> =
    LruHashMap::with_max_entries(CONTAINER_MOUNT_NS_MAX, 0);

/// Mount namespaces, by id, in which a container process mounted, moved or
/// re-flagged anything ([`crate::mount_changes`]). By id: the inode number
/// of a namespace that is gone goes to the next one made.
#[map]
pub(crate) static CONTAINER_REMOUNTS: LruHashMap<u64, u32> =
    LruHashMap::with_max_entries(CONTAINER_MOUNT_NS_MAX, 0);

/// The walk over a filesystem's mounts ([`crate::mounts`]).
#[map]
pub(crate) static MOUNT_WALK: PerCpuArray<crate::mounts::Walk> =
    PerCpuArray::with_max_entries(1, 0);

/// Allowed-path automata: two banks; [`DriftSettings::path_dfa_bank`] says
/// which one is in force.
#[map]
pub(crate) static PATH_DFA: Array<PathDfaBank> = Array::with_max_entries(2, 0);

/// Files some vShield shields, by identity: the union of the operations
/// ([`enforcer_common::vshield_op`]) any scope stops. The hot path's only
/// lookup; it misses for every other file.
#[map]
pub(crate) static VSHIELD_FILES: HashMap<FileId, u32> =
    HashMap::with_max_entries(VSHIELD_FILES_MAX, BPF_F_NO_PREALLOC);

/// The vShield that decides one operation on one file for one scope.
#[map]
pub(crate) static VSHIELD_RULES: HashMap<VShieldKey, VShieldRule> =
    HashMap::with_max_entries(VSHIELD_RULES_MAX, BPF_F_NO_PREALLOC);

/// The vShield scope ([`enforcer_common::scope`]) of each cgroup of the
/// containers the agent knows, by cgroup id; written before a container's
/// first exec when the runtime runs the agent's OCI hook.
#[map]
pub(crate) static CONTAINER_SCOPES: HashMap<u64, u32> =
    HashMap::with_max_entries(CONTAINER_SCOPES_MAX, BPF_F_NO_PREALLOC);

/// Uses each vShield decided, indexed by its slot.
#[map]
pub(crate) static VSHIELD_HITS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(VSHIELD_SLOTS + 1, 0);

/// What the open hook remembers about an overlay inode ([`OVERLAY_FILES`]).
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct OverlayEntry {
    /// The inode's identity; `ino` 0: not known yet (a new entry is zeroed).
    pub(crate) id: FileId,
    /// `generation << 32 | operations`: the vShield operations on `id` in
    /// [`VSHIELD_GENERATION`] `generation`; 0 when not looked up yet. One
    /// 64-bit word, written and read whole, so that a racing open never
    /// pairs one generation with another's answer.
    pub(crate) shielded: u64,
}

/// The identity of each overlay inode an open has seen, and whether the
/// vShields in force shield it, kept with the inode and freed with it. An
/// overlay inode's identity (its lower inode, or its upper one when it has
/// none) is fixed for its lifetime, and the answer holds until the agent
/// changes the vShields, so a repeated open of a container file costs one
/// lookup here instead of the walk through the overlay stack and the
/// vShield lookup.
#[btf_map]
pub(crate) static OVERLAY_FILES: InodeStorage<OverlayEntry> = InodeStorage::new();

/// The vShield generation: the agent adds one after every change to
/// [`VSHIELD_FILES`], which makes every [`OVERLAY_FILES`] answer stale.
#[map]
pub(crate) static VSHIELD_GENERATION: Array<u32> = Array::with_max_entries(1, 0);

/// Where `vshield_identity` leaves the identity it resolved for the agent.
#[map]
pub(crate) static RESOLVED_ID: Array<FileId> = Array::with_max_entries(1, 0);

/// The signal backend's walk through the task works of an exec
/// ([`crate::script`]).
#[map]
pub(crate) static SCRIPT_WALK: PerCpuArray<crate::script::Walk> =
    PerCpuArray::with_max_entries(1, 0);

/// Where a file's path is built for the allowed-path check.
#[map]
pub(crate) static PATH_BUF: PerCpuArray<[u8; PATH_BUF_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// One field of [`OFFSETS`], read with a single load from the frozen
/// read-only map, so that the verifier knows its value. Typed pointer loads
/// (`*(file + offset)` on a hook's BTF argument) need a known offset.
macro_rules! offset {
    ($field:ident) => {{
        let offsets =
            core::ptr::from_ref(&$crate::maps::OFFSETS).cast::<enforcer_common::KernelOffsets>();
        // SAFETY: `Global<T>` is `repr(transparent)` over an initialised `T`.
        unsafe { core::ptr::read_volatile(&raw const (*offsets).$field) }
    }};
}
pub(crate) use offset;

/// [`offset!`] for a field of [`OVERLAY_LOWER`].
macro_rules! lower_offset {
    ($field:ident) => {{
        let lower = core::ptr::from_ref(&$crate::maps::OVERLAY_LOWER)
            .cast::<enforcer_common::OverlayLower>();
        // SAFETY: `Global<T>` is `repr(transparent)` over an initialised `T`.
        unsafe { core::ptr::read_volatile(&raw const (*lower).$field) }
    }};
}
pub(crate) use lower_offset;

/// [`offset!`] for a field of [`TASK_OFFSETS`].
macro_rules! task_offset {
    ($field:ident) => {{
        let task =
            core::ptr::from_ref(&$crate::maps::TASK_OFFSETS).cast::<enforcer_common::TaskOffsets>();
        // SAFETY: `Global<T>` is `repr(transparent)` over an initialised `T`.
        unsafe { core::ptr::read_volatile(&raw const (*task).$field) }
    }};
}
pub(crate) use task_offset;

#[inline(always)]
pub(crate) fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful lookup in this CPU's
        // slot of a per-CPU array, which nothing else writes concurrently.
        unsafe { *slot += 1 };
    }
}
