//! Whether a filesystem reached through a read-only mount is also mounted
//! writable where a container can write it.
//!
//! A read-only mount says nothing about who wrote the files it shows: one
//! volume (an `emptyDir`, a host directory) mounted read-write in one
//! container, or at another path of the same container, and read-only in
//! another shows in the read-only mount what the first one wrote. The
//! kernel lists every mount of a filesystem on its superblock
//! (`super_block.s_mounts`, see [`MountOffsets::sb_mounts`]); a writable one whose root is the file's
//! directory or one above it, in a container's mount namespace (or in one a
//! user namespace owns, or detached from every namespace, or a layer mount
//! overlayfs made for a container's root), is a way for a container to
//! have written the file.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::{self, bpf_loop};
use enforcer_common::{
    MNT_READONLY, MOUNT_ANCESTORS_MAX, MOUNT_WALK_MAX, MountOffsets, mount_walk,
};

use crate::{
    kernel::{ERR_PTR_MIN, KERNEL_SPACE, read_or_zero},
    maps::{CONTAINER_MOUNT_NS, CONTAINER_REMOUNTS, MOUNT_OFFSETS, MOUNT_WALK, offset},
};

const _: () = assert!(MOUNT_ANCESTORS_MAX.is_power_of_two());
// The comparison in `mount` is written out for each of these.
const _: () = assert!(MOUNT_ANCESTORS_MAX == 64);

/// What the walk found: plain integers rather than an enum, which would
/// put a Rust type into the object's BTF for the function that returns it.
pub(crate) mod found {
    /// No mount a container can write the file through.
    pub(crate) const NOTHING: u32 = 0;
    /// A writable mount of the file's filesystem, in reach of a container,
    /// whose root is the file's directory or above it.
    pub(crate) const WRITABLE: u32 = 1;
    /// The walk could not finish (a list longer than
    /// [`MOUNT_WALK_MAX`](enforcer_common::MOUNT_WALK_MAX), a file deeper
    /// than [`MOUNT_ANCESTORS_MAX`](enforcer_common::MOUNT_ANCESTORS_MAX), a
    /// read that failed).
    pub(crate) const UNKNOWN: u32 = 2;
}

/// The state of one walk; plain integers only, since the `bpf_loop`
/// callback that takes it is not inlined and its types go into the
/// object's BTF.
#[repr(C)]
pub(crate) struct Walk {
    /// `&sb->s_mounts`: the list's head.
    head: u64,
    /// While 0, the directory whose parent is taken next; then the next
    /// node of the mount list.
    node: u64,
    /// 0 while the file's ancestors are gathered, 1 while the mounts are
    /// looked at.
    phase: u64,
    /// How many of `ancestors` are set.
    depth: u64,
    /// 1 once a writable mount was found.
    writable: u64,
    /// 1 once the walk reached the end of the list.
    ended: u64,
    /// A map key read straight from the kernel, for lookups that must not
    /// take a slot of the decision's stack ([`namespace_changed`]).
    key: u64,
    /// The file's dentry, then each parent up to the filesystem's root.
    ancestors: [u64; MOUNT_ANCESTORS_MAX],
}

/// One field of [`MOUNT_OFFSETS`], read with a single load from the frozen
/// read-only map: the verifier then knows its value, and no copy of the
/// whole struct takes room on a stack that the decision's callers have
/// nearly filled.
macro_rules! mount_offset {
    ($field:ident) => {{
        let offsets = core::ptr::from_ref(&MOUNT_OFFSETS).cast::<MountOffsets>();
        // SAFETY: `Global<T>` is `repr(transparent)` over an initialised `T`.
        unsafe { core::ptr::read_volatile(&raw const (*offsets).$field) }
    }};
}

/// Whether walking the mounts is possible on this kernel (the agent says at
/// start-up when it is not): only with `bpf_loop` (5.17+). Unrolled for
/// older kernels, the walk made the exec programs more than the verifier
/// takes (5.10), and their object does not have it at all.
#[inline(always)]
pub(crate) fn enabled() -> bool {
    crate::WITH_LOOP && mount_offset!(walk) == mount_walk::LOOP
}

/// Whether a container process mounted, moved or re-flagged anything in the
/// mount namespace at `mnt_ns` (a `struct mnt_namespace *`), by its id
/// ([`crate::mount_changes`]). The id is read into this CPU's slot of the
/// map and looked up from there: on the stack, it took the exec programs
/// past what a kernel that counts a callback's frame on top of its caller's
/// (6.1) allows. When the slot cannot be had, the namespace counts as
/// changed.
#[inline(always)]
pub(crate) fn namespace_changed(mnt_ns: u64) -> bool {
    let Some(walk) = MOUNT_WALK.get_ptr_mut(0) else {
        return true;
    };
    let source = mnt_ns + u64::from(offset!(mnt_namespace_id));
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "the key must be looked up where it is, in the map: a copy would go on the stack"
    )]
    // SAFETY: this CPU's slot of a per-CPU array; the helper checks the
    // source address and zeroes the key when it cannot read it.
    unsafe {
        generated::bpf_probe_read_kernel(
            (&raw mut (*walk).key).cast::<c_void>(),
            8,
            source as *const c_void,
        );
        CONTAINER_REMOUNTS.get(&(*walk).key).is_some()
    }
}

/// Marks of whole containers in `CONTAINER_REMOUNTS` sit beside the mount
/// namespaces' ids: a namespace id is a counter that never comes near this
/// bit, and a container is named by the inode number of the mount
/// namespace its runtime made ([`ContainerRoot::mnt_ns`](enforcer_common::ContainerRoot)),
/// which every cgroup of the container carries and no process in it can
/// change.
const CONTAINER_KEY: u64 = 1 << 62;

/// The `CONTAINER_REMOUNTS` key of the container whose runtime made the
/// mount namespace numbered `home_mnt_ns`.
#[inline(always)]
pub(crate) fn container_key(home_mnt_ns: u32) -> u64 {
    CONTAINER_KEY | u64::from(home_mnt_ns)
}

/// The `CONTAINER_REMOUNTS` key of that container, written into this CPU's
/// slot of the walk's map, where the lookup takes it from, as in
/// [`namespace_changed`]; `None` when the slot cannot be had.
#[inline(always)]
fn container_key_in_slot(home_mnt_ns: u32) -> Option<&'static u64> {
    let walk = MOUNT_WALK.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot of a per-CPU array, which only the program
    // running on this CPU uses.
    unsafe {
        core::ptr::write_volatile(&raw mut (*walk).key, container_key(home_mnt_ns));
        Some(&(*walk).key)
    }
}

/// Whether a process of the container whose runtime made the mount
/// namespace numbered `home_mnt_ns` changed mounts with the host's
/// privileges ([`crate::mount_changes`]): then no read-only flag in any
/// mount namespace it has or made is trusted. Counts as changed when the
/// slot for the key cannot be had.
#[inline(always)]
pub(crate) fn container_changed_mounts(home_mnt_ns: u32) -> bool {
    // A match rather than a closure, which LLVM may leave out of line with
    // a Rust type in the object's BTF that the kernel refuses.
    match container_key_in_slot(home_mnt_ns) {
        // SAFETY: a plain value, only tested for presence.
        Some(key) => unsafe { CONTAINER_REMOUNTS.get(key) }.is_some(),
        None => true,
    }
}

/// Drops the mark of the container whose runtime made the mount namespace
/// numbered `home_mnt_ns`, when the kernel records a new container with it:
/// inode numbers of namespaces that are gone are given to new ones, and a
/// mark left by an earlier container must not follow its number.
#[inline(always)]
pub(crate) fn forget_container(home_mnt_ns: u32) {
    if let Some(key) = container_key_in_slot(home_mnt_ns) {
        let _ = CONTAINER_REMOUNTS.remove(key);
    }
}

/// Looks through the mounts of the superblock `sb` for one a container can
/// write the file at `dentry` through. Inlined, and all of the work is in
/// the callback: a kernel that counts a callback's frame on top of the
/// frame that passes it (6.1) allows the programs' frames 480 bytes and the
/// callback's 32, and a function of its own would take 32 more.
#[inline(always)]
pub(crate) fn writable_by_a_container(sb: u64, dentry: u64) -> u32 {
    let Some(walk) = MOUNT_WALK.get_ptr_mut(0) else {
        return found::UNKNOWN;
    };
    let head = sb + u64::from(mount_offset!(sb_mounts));
    // SAFETY: this CPU's slot of a per-CPU array, which only the program
    // running on this CPU uses. Field by field and volatile: zeroed fields
    // side by side become a call to `memset`, one more frame.
    unsafe {
        core::ptr::write_volatile(&raw mut (*walk).head, head);
        core::ptr::write_volatile(&raw mut (*walk).node, dentry);
        core::ptr::write_volatile(&raw mut (*walk).phase, 0);
        core::ptr::write_volatile(&raw mut (*walk).depth, 0);
        core::ptr::write_volatile(&raw mut (*walk).writable, 0);
        core::ptr::write_volatile(&raw mut (*walk).ended, 0);
    }
    // Zero, read back from the map: a flags argument the verifier knows to
    // be zero makes it inline the loop, with three registers saved on this
    // frame's stack, more than the callers leave (6.1 then refuses the
    // program).
    // SAFETY: this CPU's slot, as above.
    let flags = unsafe { core::ptr::read_volatile(&raw const (*walk).depth) };
    // SAFETY: the callback only touches this CPU's slot of the map; no
    // context, which would take a slot of the caller's stack.
    unsafe {
        bpf_loop(
            MOUNT_WALK_MAX + MOUNT_ANCESTORS_MAX as u32,
            step as *mut c_void,
            core::ptr::null_mut(),
            flags,
        );
    }
    // SAFETY: as above.
    let (writable, ended) = unsafe { ((*walk).writable, (*walk).ended) };
    if writable != 0 {
        found::WRITABLE
    } else if ended != 0 {
        found::NOTHING
    } else {
        found::UNKNOWN
    }
}

/// `bpf_loop` callback: one ancestor of the file, or one mount of the list;
/// non-zero to stop. The helper's context must be on the caller's stack,
/// where the walk does not fit: the callback finds it in this CPU's slot of
/// the map.
unsafe extern "C" fn step(_index: u64, _context: *mut c_void) -> i64 {
    advance()
}

/// One step of the walk.
#[inline(always)]
fn advance() -> i64 {
    let Some(walk) = MOUNT_WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: as in `writable_by_a_container`.
    let walk = unsafe { &mut *walk };
    if walk.phase == 0 {
        ancestor(walk)
    } else {
        mount(walk)
    }
}

/// Keeps `walk.node`, a directory, and moves to its parent; at the
/// filesystem's root, starts on the mounts.
#[inline(always)]
fn ancestor(walk: &mut Walk) -> i64 {
    let depth = walk.depth as usize;
    if depth >= MOUNT_ANCESTORS_MAX {
        // Too deep: the walk ends undecided.
        return 1;
    }
    let at = walk.node;
    walk.ancestors[depth & (MOUNT_ANCESTORS_MAX - 1)] = at;
    walk.depth += 1;
    let parent: u64 = read_or_zero(at, mount_offset!(dentry_parent));
    if parent == at {
        walk.phase = 1;
        // The first node either way: the head's `next`, or the first mount.
        walk.node = read_or_zero(walk.head, 0);
        return 0;
    }
    if parent < KERNEL_SPACE {
        return 1;
    }
    walk.node = parent;
    0
}

/// Looks at the mount `walk.node` stands for and moves to the next one.
#[inline(always)]
fn mount(walk: &mut Walk) -> i64 {
    let node = walk.node;
    let list_head = mount_offset!(list_head) != 0;
    if (list_head && node == walk.head) || (!list_head && node == 0) {
        walk.ended = 1;
        return 1;
    }
    if node < KERNEL_SPACE {
        // A failed read: the walk ends undecided.
        return 1;
    }
    let link = u64::from(mount_offset!(mount_link));
    let (mount, next) = if list_head {
        (node - link, node)
    } else {
        (node, node + link)
    };
    let mnt = mount + u64::from(mount_offset!(mount_mnt));
    let flags: u32 = read_or_zero(mnt, mount_offset!(vfsmount_flags));
    if flags & MNT_READONLY == 0 && in_reach_of_a_container(mnt) {
        let root: u64 = read_or_zero(mnt, mount_offset!(vfsmount_mnt_root));
        // Straight-line code without a branch: a loop here is walked again
        // by the verifier for each state of the callback (6.7+ re-verify a
        // callback until its states converge, which took the exec program
        // past a million instructions), and each branch in it multiplies
        // the jumps it follows (6.1 gives up at 8,192).
        let depth = walk.depth;
        macro_rules! compare {
            ($($slot:literal)*) => {
                $(
                    // Volatile, into the map: one slot after the other, or
                    // LLVM loads them all first, onto more stack than a
                    // program has.
                    // SAFETY: fields of this CPU's slot of the map.
                    unsafe {
                        let ancestor = core::ptr::read_volatile(&raw const walk.ancestors[$slot]);
                        let different = ancestor ^ root;
                        let equal = 1 - ((different | different.wrapping_neg()) >> 63);
                        let set = u64::wrapping_sub($slot, depth) >> 63;
                        let found = core::ptr::read_volatile(&raw const walk.writable);
                        core::ptr::write_volatile(&raw mut walk.writable, found | (equal & set));
                    }
                )*
            };
        }
        compare!(
            0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
            32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60
            61 62 63
        );
        if walk.writable != 0 {
            return 1;
        }
    }
    walk.node = read_or_zero(next, 0);
    0
}

/// Whether a container process may write through the mount `mnt`: it is in
/// the mount namespace of a container, or of a user namespace (made by a
/// container process, or by a rootless runtime), or in none (detached, and
/// perhaps held by a container's descriptor), or it is one of the private
/// mounts overlayfs makes of its layers (a writable one is a container
/// root's upper layer). Mounts of the host and of its services' private
/// namespaces (systemd's `PrivateTmp=`) are not.
#[inline(always)]
fn in_reach_of_a_container(mnt: u64) -> bool {
    let ns: u64 = read_or_zero(mnt, mount_offset!(vfsmount_mnt_ns));
    if ns == 0 || ns >= ERR_PTR_MIN {
        return true;
    }
    let id: u64 = read_or_zero(ns, mount_offset!(mnt_namespace_id));
    // SAFETY: a plain value, only tested for presence.
    if unsafe { CONTAINER_MOUNT_NS.get(id) }.is_some() {
        return true;
    }
    let owner: u64 = read_or_zero(ns, mount_offset!(mnt_namespace_user_ns));
    read_or_zero::<u32>(owner, mount_offset!(user_ns_level)) != 0
}
