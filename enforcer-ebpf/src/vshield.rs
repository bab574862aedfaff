//! vShields: files a policy shields from being executed, opened or loaded.
//!
//! The rules are keyed by file identity ([`FileId`]), not by path: the hot
//! path computes the identity of the file's inode (a few reads) and looks it
//! up in a hash map, which misses for every file no vShield names. The agent
//! resolves the policy's paths into identities with [`vshield_identity`],
//! which runs this same code on descriptors the agent opened, so the two can
//! never disagree about what a file is.

use aya_ebpf::{
    helpers::bpf_get_current_cgroup_id,
    macros::{lsm, raw_tracepoint},
    programs::{LsmContext, RawTracePointContext},
};
use enforcer_common::{
    ABI_VERSION, FileId, KernelOffsets, O_FMODE_EXEC, OVERLAY_STACK_MAX, OVERLAYFS_SUPER_MAGIC,
    OverlayLower, PROT_EXEC, VShieldKey, VShieldRule, backend, counter, mode, overlay_lower, scope, via,
    vshield_op,
};

use crate::{
    drift, events, exec,
    kernel::{self, ReadError},
    maps::{
        CONFIG, CONTAINER_SCOPES, MMAP_OFFSETS, OVERLAY_FILES, OVERLAY_LOWER, RESOLVED_ID,
        VSHIELD_FILES, VSHIELD_GENERATION, VSHIELD_HITS, VSHIELD_RULES, count, lower_offset,
        offset,
    },
};

/// A vShield decided a use of a file.
#[derive(Clone, Copy)]
pub(crate) struct Hit {
    pub(crate) rule: VShieldRule,
    /// The identity the rule matched; the agent knows its path.
    pub(crate) id: FileId,
    pub(crate) mnt_ns: u32,
    /// The file's `struct dentry *`, for the record's name.
    pub(crate) dentry: u64,
    /// One of `via::*`.
    pub(crate) via: u32,
}

#[inline(always)]
fn overlay_lower() -> OverlayLower {
    OVERLAY_LOWER.load()
}

/// The identity of the file whose inode is `inode` (see [`FileId`]).
#[inline(always)]
pub(crate) fn identity(inode: u64, offsets: &KernelOffsets) -> Result<FileId, ReadError> {
    let lower = overlay_lower();
    let mut inode = inode;
    let mut sb = kernel::read_ptr(inode, offsets.inode_sb)?;
    if lower.kind != overlay_lower::UNKNOWN {
        for _ in 0..OVERLAY_STACK_MAX {
            let magic: u64 = kernel::read(sb, offsets.sb_magic)?;
            if magic != OVERLAYFS_SUPER_MAGIC {
                break;
            }
            let mut next = kernel::lower_inode(inode, &lower, offsets)?;
            if next == 0 {
                let upper = kernel::read_kernel_ptr(inode, offsets.ovl_inode_upperdentry)?;
                if upper == 0 {
                    return Err(ReadError);
                }
                next = kernel::read_ptr(upper, offsets.dentry_inode)?;
            }
            inode = next;
            sb = kernel::read_ptr(inode, offsets.inode_sb)?;
        }
    }
    Ok(FileId {
        ino: kernel::read(inode, offsets.inode_ino)?,
        dev: kernel::read(sb, offsets.sb_dev)?,
        pad: 0,
    })
}

/// `file.f_inode`.
#[inline(always)]
fn file_inode(file: u64) -> Result<u64, ReadError> {
    kernel::read_ptr(file, overlay_lower().file_inode)
}

/// Whether a vShield shields `inode` (of `file`) from `op` for the current
/// task; `None` for the common case, a file no vShield names.
#[inline(always)]
pub(crate) fn check(
    file: u64,
    inode: u64,
    op: u32,
    how: u32,
    offsets: &KernelOffsets,
) -> Result<Option<Hit>, ReadError> {
    check_id(file, inode, identity(inode, offsets)?, op, how, offsets)
}

/// [`check`] for a file whose identity is known.
#[inline(always)]
fn check_id(
    file: u64,
    inode: u64,
    id: FileId,
    op: u32,
    how: u32,
    offsets: &KernelOffsets,
) -> Result<Option<Hit>, ReadError> {
    // SAFETY: a plain u32 read once; the agent replaces entries whole.
    let Some(ops) = (unsafe { VSHIELD_FILES.get(id) }).copied() else {
        return Ok(None);
    };
    if ops & op == 0 {
        return Ok(None);
    }
    let config = CONFIG.load();
    if config.abi_version != ABI_VERSION {
        return Err(ReadError);
    }
    let container = kernel::current_container(offsets, &config)?;
    let Some(rule) = rule_for(id, op, container.is_some()) else {
        return Ok(None);
    };
    let facts = kernel::file_facts(file, offsets)?;
    // Opening an overlay file makes overlayfs open the layer's file too: up
    // to 6.5 with the overlay's path (so its path's inode is not its
    // `f_inode`), from 6.6 as a backing file on the layer's private mount.
    // The user's open is decided; this one is neither counted nor reported.
    if op == vshield_op::OPEN && (facts.inode != inode || facts.outside_namespaces()) {
        return Ok(None);
    }
    count(counter::VSHIELD_HITS);
    if let Some(hits) = VSHIELD_HITS.get_ptr_mut(rule.rule) {
        // SAFETY: this CPU's slot of a per-CPU array.
        unsafe { *hits += 1 };
    }
    let mnt_ns = match container {
        Some(container) => container.mnt_ns,
        None => config.host_mnt_ns,
    };
    Ok(Some(Hit {
        rule,
        id,
        mnt_ns,
        dentry: facts.dentry,
        via: how,
    }))
}

/// The vShield that decides `op` on `id` for the current task: for a
/// container, its container's scope first, then the rules for every
/// container.
#[inline(always)]
fn rule_for(id: FileId, op: u32, in_container: bool) -> Option<VShieldRule> {
    if !in_container {
        let key = VShieldKey {
            file: id,
            scope: scope::HOST,
            op,
        };
        // SAFETY: the value is copied out at once; the agent replaces
        // entries whole.
        return unsafe { VSHIELD_RULES.get(key) }.copied();
    }
    // SAFETY: helper without arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: as above.
    let selected = unsafe { CONTAINER_SCOPES.get(cgroup) }
        .copied()
        .unwrap_or(scope::UNKNOWN);
    if selected != scope::CONTAINERS {
        let key = VShieldKey {
            file: id,
            scope: selected,
            op,
        };
        // SAFETY: as above.
        if let Some(rule) = unsafe { VSHIELD_RULES.get(key) } {
            return Some(*rule);
        }
    }
    let key = VShieldKey {
        file: id,
        scope: scope::CONTAINERS,
        op,
    };
    // SAFETY: as above.
    unsafe { VSHIELD_RULES.get(key) }.copied()
}

/// [`check`] for an exec of `file` (`bprm->file`, the file exec opened).
#[inline(always)]
pub(crate) fn check_exec(file: u64, offsets: &KernelOffsets) -> Result<Option<Hit>, ReadError> {
    check(
        file,
        file_inode(file)?,
        vshield_op::EXEC,
        via::EXEC,
        offsets,
    )
}

/// [`check`] for an executable mapping of `file`. A mapping of an overlay
/// file is made through a backing file on the layer's private mount (6.6+),
/// whose inode is the layer's: its overlay inode keeps the identity across
/// a copy-up.
#[inline(always)]
pub(crate) fn check_load(
    file: u64,
    how: u32,
    offsets: &KernelOffsets,
) -> Result<Option<Hit>, ReadError> {
    let facts = kernel::file_facts(file, offsets)?;
    let inode = if facts.outside_namespaces() {
        kernel::backing_user_path(file, offsets).map_or(facts.inode, |user| user.inode)
    } else {
        facts.inode
    };
    check(file, inode, vshield_op::LOAD, how, offsets)
}

/// What a vShield check that a failed read of kernel memory left undecided
/// (`via`) reports: a hit of no vShield (slot 0) in audit mode. Allowed:
/// the checks run for every process on the machine (every open, with the
/// open vShields), and a file no vShield shields is the common case.
#[inline(always)]
pub(crate) fn unreadable(via: u32) -> Hit {
    count(counter::READ_ERRORS);
    Hit {
        rule: VShieldRule {
            rule: 0,
            mode: mode::AUDIT,
        },
        id: FileId {
            ino: 0,
            dev: 0,
            pad: 0,
        },
        mnt_ns: 0,
        dentry: 0,
        via,
    }
}

/// `checked`, or [`unreadable`] when a read failed.
#[inline(always)]
fn or_unreadable(checked: Result<Option<Hit>, ReadError>, via: u32) -> Option<Hit> {
    match checked {
        Ok(hit) => hit,
        Err(ReadError) => Some(unreadable(via)),
    }
}

/// The LSM answer to a hit: the hook's return value, after the event.
#[inline(always)]
pub(crate) fn refuse(hit: &Hit, filename: Option<u64>, offsets: &KernelOffsets) -> i32 {
    let (decision, verdict) = exec::lsm_verdict(hit.rule.mode);
    events::vshield(hit, filename, offsets, decision, backend::LSM);
    verdict
}

/// `bprm_check_security(struct linux_binprm *bprm)`: an exec of a shielded
/// file (also a script, and each interpreter of a script).
#[lsm(hook = "bprm_check_security")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
#[inline(always)]
pub(crate) fn bprm_check_vshield(ctx: LsmContext) -> i32 {
    let bprm: u64 = ctx.arg(0);
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let offsets = drift::offsets();
    let (hit, filename) = decide_exec(bprm, offsets);
    match hit {
        Some(hit) => refuse(&hit, Some(filename), offsets),
        None => 0,
    }
}

/// The hit of the exec of `bprm`'s file, if any (a read that failed is one:
/// [`unreadable`]), and `bprm->filename` for the record.
#[inline(always)]
fn decide_exec(bprm: u64, offsets: &KernelOffsets) -> (Option<Hit>, u64) {
    let filename: u64 = kernel::read_or_zero(bprm, offsets.binprm_filename);
    let checked = kernel::read_ptr(bprm, offsets.binprm_file)
        .and_then(|file| check_exec(file, offsets));
    (or_unreadable(checked, via::EXEC), filename)
}

/// `mmap_file(struct file *file, unsigned long reqprot, unsigned long prot,
/// unsigned long flags)`: an executable mapping of a shielded file.
#[lsm(hook = "mmap_file")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
#[inline(always)]
pub(crate) fn mmap_file_vshield(ctx: LsmContext) -> i32 {
    let file: u64 = ctx.arg(0);
    let prot: u64 = ctx.arg(2);
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let offsets = drift::offsets();
    // The kernel mapping the program it executes was decided at exec.
    if file == 0 || prot & PROT_EXEC == 0 || kernel::is_current_exe(file, offsets) {
        return 0;
    }
    decide_load(or_unreadable(check_load(file, via::MMAP, offsets), via::MMAP), offsets)
}

/// `file_mprotect(struct vm_area_struct *vma, unsigned long reqprot,
/// unsigned long prot)`: making a mapping of a shielded file executable.
#[lsm(hook = "file_mprotect")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
#[inline(always)]
pub(crate) fn file_mprotect_vshield(ctx: LsmContext) -> i32 {
    let vma: u64 = ctx.arg(0);
    let prot: u64 = ctx.arg(2);
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    if prot & PROT_EXEC == 0 {
        return 0;
    }
    let offsets = drift::offsets();
    let checked = kernel::read::<u64>(vma, offsets.vma_file).and_then(|file| match file {
        0 => Ok(None),
        file => check_load(file, via::MPROTECT, offsets),
    });
    decide_load(or_unreadable(checked, via::MPROTECT), offsets)
}

#[inline(always)]
fn decide_load(hit: Option<Hit>, offsets: &KernelOffsets) -> i32 {
    match hit {
        Some(hit) => refuse(&hit, None, offsets),
        None => 0,
    }
}

/// `sched_process_exec`, for the signal backend: an exec of a shielded file
/// is killed before the program's first instruction (see
/// [`exec::sched_process_exec`]).
#[raw_tracepoint(tracepoint = "sched_process_exec")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
#[inline(always)]
pub(crate) fn sched_process_exec_vshield(ctx: RawTracePointContext) -> i32 {
    let bprm: u64 = ctx.arg(2);
    let offsets = drift::offsets();
    if let (Some(hit), filename) = decide_exec(bprm, offsets) {
        let decision = exec::kill_current(hit.rule.mode);
        events::vshield(&hit, Some(filename), offsets, decision, backend::SIGNAL);
    }
    0
}

/// `file_open(struct file *file)`, for vShields that stop opens. Attached
/// only while a policy has such a vShield: it runs for every open on the
/// machine.
#[lsm(hook = "file_open")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
#[inline(always)]
pub(crate) fn file_open_vshield(ctx: LsmContext) -> i32 {
    let file: u64 = ctx.arg(0);
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let offsets = drift::offsets();
    match or_unreadable(on_open(file, offsets), via::OPEN) {
        Some(hit) => refuse(&hit, None, offsets),
        None => 0,
    }
}

/// `*(base + offset)` as a typed load, without a helper call: `base` is a
/// BTF-typed pointer of an LSM hook (or one loaded from it this way), and
/// `offset` a constant to the verifier (a field of a frozen read-only
/// global), which checks the access against BTF.
///
/// # Safety
/// `base` must be such a pointer and `offset` a field of `T`'s size there.
#[inline(always)]
unsafe fn load<T: Copy>(base: *const u8, offset: u32) -> T {
    // SAFETY: per the contract; kernel struct fields are aligned.
    unsafe { base.add(offset as usize).cast::<T>().read_volatile() }
}

/// Every open on the machine comes here, so the way to the identity of a
/// file that is not on overlayfs is typed loads only; overlay files take
/// the walk of [`identity`].
#[inline(always)]
fn on_open(file: u64, offsets: &KernelOffsets) -> Result<Option<Hit>, ReadError> {
    let typed = file as *const u8;
    let (flags_at, inode_at) = (offset!(file_flags), lower_offset!(file_inode));
    let (sb_at, ino_at) = (offset!(inode_sb), offset!(inode_ino));
    let (magic_at, dev_at) = (offset!(sb_magic), offset!(sb_dev));
    // SAFETY: `file` is the hook's `struct file *`; the offsets are fields
    // resolved from BTF, of the loaded types' sizes.
    let (flags, inode) = unsafe {
        (
            load::<u32>(typed, flags_at),
            load::<*const u8>(typed, inode_at),
        )
    };
    // Exec opens its file (and the ELF interpreter) with `__FMODE_EXEC`:
    // those are exec and load decisions, made by their own hooks.
    if flags & O_FMODE_EXEC != 0 || inode.is_null() {
        return Ok(None);
    }
    // Up to 6.5 overlayfs opens the layer's file under the overlay's path:
    // its path's inode is not its `f_inode`. That open is overlayfs' own
    // (the user's open of the overlay file is decided), left here before
    // any lookup.
    let (dentry_at, d_inode_at) = (offset!(file_path_dentry), offset!(dentry_inode));
    // SAFETY: as above; `f_path.dentry` of the hook's file.
    let dentry = unsafe { load::<*const u8>(typed, dentry_at) };
    // SAFETY: as above; `dentry` was loaded as `file.f_path.dentry`.
    if !dentry.is_null() && unsafe { load::<*const u8>(dentry, d_inode_at) } != inode {
        return Ok(None);
    }
    // SAFETY: as above; `inode` was loaded as `file.f_inode`.
    let (sb, ino) = unsafe { (load::<*const u8>(inode, sb_at), load::<u64>(inode, ino_at)) };
    if sb.is_null() {
        return Err(ReadError);
    }
    // SAFETY: as above; `sb` was loaded as `inode.i_sb`.
    let (magic, dev) = unsafe { (load::<u64>(sb, magic_at), load::<u32>(sb, dev_at)) };
    let id = if magic == OVERLAYFS_SUPER_MAGIC {
        match overlay_open(inode, offsets)? {
            Some(id) => id,
            None => return Ok(None),
        }
    } else {
        FileId { ino, dev, pad: 0 }
    };
    check_id(file, inode as u64, id, vshield_op::OPEN, via::OPEN, offsets)
}

/// The identity of an overlay inode, and whether a vShield stops opens of
/// it (`None` when none does), remembered in the inode's storage.
#[inline(always)]
fn overlay_open(inode: *const u8, offsets: &KernelOffsets) -> Result<Option<FileId>, ReadError> {
    // Read before the vShield lookup: an answer computed while the agent
    // changes the maps is stored under the old generation, and so is stale
    // once the agent has added one.
    let generation = u64::from(VSHIELD_GENERATION.get(0).copied().unwrap_or(0));
    // SAFETY: `inode` is a BTF-typed `struct inode *` (loaded as
    // `file.f_inode`), which is what the helper takes; the entry is this
    // inode's and lives as long as it does.
    let entry = unsafe { OVERLAY_FILES.get_or_insert_ptr_mut(inode.cast_mut().cast(), None) };
    if entry.is_null() {
        // No memory for the entry: decide without it.
        let id = identity(inode as u64, offsets)?;
        return Ok(shields_open(id).then_some(id));
    }
    // SAFETY: this inode's entry. Racing opens of the same inode write the
    // same identity, and `shielded` is one word (see `OverlayEntry`).
    let (known, shielded) = unsafe {
        (
            (*entry).id,
            core::ptr::read_volatile(&raw const (*entry).shielded),
        )
    };
    let id = if known.ino == 0 {
        let id = identity(inode as u64, offsets)?;
        // SAFETY: as above.
        unsafe { (*entry).id = id };
        id
    } else {
        known
    };
    if shielded >> 32 == generation && shielded != 0 {
        return Ok((shielded & u64::from(vshield_op::OPEN) != 0).then_some(id));
    }
    // SAFETY: a plain u32 read once; the agent replaces entries whole.
    let ops = unsafe { VSHIELD_FILES.get(id) }.copied().unwrap_or(0);
    // SAFETY: as above; one aligned 64-bit store.
    unsafe {
        core::ptr::write_volatile(
            &raw mut (*entry).shielded,
            generation << 32 | u64::from(ops),
        );
    }
    Ok((ops & vshield_op::OPEN != 0).then_some(id))
}

/// Whether a vShield stops opens of `id` (in some scope).
#[inline(always)]
fn shields_open(id: FileId) -> bool {
    // SAFETY: a plain u32 read once.
    unsafe { VSHIELD_FILES.get(id) }.is_some_and(|ops| ops & vshield_op::OPEN != 0)
}

/// Resolves the identity of the agent's descriptor `args[0]` into
/// `RESOLVED_ID[0]`. Never attached: the agent runs it with
/// `BPF_PROG_TEST_RUN`, which calls it in the agent's own task. Returns 0,
/// or 1 for a descriptor that is not open, 2 for a failed read.
#[raw_tracepoint(tracepoint = "sys_enter")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
#[inline(always)]
pub(crate) fn vshield_identity(ctx: RawTracePointContext) -> i32 {
    let fd: u64 = ctx.arg(0);
    let offsets = drift::offsets();
    match resolve(fd, offsets) {
        Ok(Some(id)) => match RESOLVED_ID.get_ptr_mut(0) {
            Some(slot) => {
                // SAFETY: the map's only value; the agent reads it after this
                // run returns.
                unsafe { *slot = id };
                0
            }
            None => 2,
        },
        Ok(None) => 1,
        Err(_) => 2,
    }
}

#[inline(always)]
fn resolve(fd: u64, offsets: &KernelOffsets) -> Result<Option<FileId>, ReadError> {
    let Ok(fd) = u32::try_from(fd) else {
        return Ok(None);
    };
    match kernel::current_fd_file(fd, &MMAP_OFFSETS.load())? {
        Some(file) => identity(file_inode(file)?, offsets).map(Some),
        None => Ok(None),
    }
}
