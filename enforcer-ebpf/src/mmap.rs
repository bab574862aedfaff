//! Executable mappings: how a dropped program runs through the dynamic
//! loader (`ld.so ./tool`) and how a dropped library is loaded
//! (`LD_PRELOAD`, `dlopen`). Both end in an mmap or mprotect with `PROT_EXEC`.
//! The LSM hooks decide them; the signal backend sees both at system call
//! entry ([`sys_enter_exec_map`]), when asked to.

use aya_ebpf::{
    cty::{c_long, c_void},
    helpers::{
        bpf_probe_read_user,
        generated::{bpf_find_vma, bpf_get_current_task_btf, bpf_probe_read_kernel},
    },
    macros::{lsm, raw_tracepoint},
    programs::{LsmContext, RawTracePointContext},
};
use enforcer_common::{
    KernelOffsets, MAP_ANONYMOUS, MmapOffsets, PROT_EXEC, TS_COMPAT, backend, compat_syscall,
    via,
};

use crate::{
    drift::{self, Verdict},
    events, exec,
    kernel::{self, ReadError},
    maps::{CONFIG, MMAP_OFFSETS},
    mount_changes,
    path,
};

/// Carries out and reports the verdict on an executable mapping; returns
/// the hook's result.
#[inline(always)]
fn respond(checked: Result<Verdict, ReadError>, how: u32, offsets: &KernelOffsets) -> i32 {
    match drift::or_unreadable(checked, how) {
        Verdict::Allow => 0,
        Verdict::Drift(drift) => {
            let (decision, verdict) = exec::lsm_verdict(drift.mode);
            events::decided(&drift, None, offsets, decision, backend::LSM);
            verdict
        }
    }
}

/// `mmap_file(struct file *file, unsigned long reqprot, unsigned long prot,
/// unsigned long flags)`; `file` is null for anonymous mappings.
#[lsm(hook = "mmap_file")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
#[inline(always)]
pub(crate) fn mmap_file(ctx: LsmContext) -> i32 {
    let file: u64 = ctx.arg(0);
    let prot: u64 = ctx.arg(2);
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    if file == 0 || prot & PROT_EXEC == 0 {
        return 0;
    }
    // The kernel mapping the program it is executing (and the program
    // mapping itself later): already decided at exec.
    let offsets = drift::offsets();
    if kernel::is_current_exe(file, offsets) {
        return 0;
    }
    let checked = drift::check_file(file, via::MMAP, offsets);
    respond(checked, via::MMAP, offsets)
}

/// `file_mprotect(struct vm_area_struct *vma, unsigned long reqprot,
/// unsigned long prot)`.
#[lsm(hook = "file_mprotect")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
#[inline(always)]
pub(crate) fn file_mprotect(ctx: LsmContext) -> i32 {
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
        0 => Ok(Verdict::Allow),
        file => drift::check_file(file, via::MPROTECT, offsets),
    });
    respond(checked, via::MPROTECT, offsets)
}

/// `sys_enter(struct pt_regs *regs, long id)`, for the signal backend, which
/// has no hook with the file of a mapping: `mmap(..., PROT_EXEC, flags, fd)`
/// of a drift file, and `mprotect(addr, len, PROT_EXEC)` of a mapping of
/// one (found with `bpf_find_vma`, 5.17+). The mapping is still made or
/// changed, but the SIGKILL sent here is delivered before the system call
/// returns, so none of the code runs. Every system call on the machine
/// passes here; all others leave at the first comparisons.
#[raw_tracepoint(tracepoint = "sys_enter")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
#[inline(always)]
pub(crate) fn sys_enter_exec_map(ctx: RawTracePointContext) -> i32 {
    on_sys_enter(&ctx, true)
}

/// [`sys_enter_exec_map`] without `mprotect`, for kernels without
/// `bpf_find_vma` (before 5.17), which refuse to load that program.
#[raw_tracepoint(tracepoint = "sys_enter")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
#[inline(always)]
pub(crate) fn sys_enter_mmap(ctx: RawTracePointContext) -> i32 {
    on_sys_enter(&ctx, false)
}

/// What a system call at `sys_enter` asks for that the mapping check
/// decides, and where its arguments are.
#[derive(Clone, Copy)]
struct Request {
    /// Maps a descriptor (`mmap`), rather than changing a mapping
    /// (`mprotect`, `pkey_mprotect`).
    maps: bool,
    /// `mmap`: `prot`, `flags`, `fd`; `mprotect`: `addr`, `prot`, unused.
    args: [u64; 3],
}

/// The request system call `id` makes, if it is one the check decides:
/// native `mmap`, `mprotect` and `pkey_mprotect`, and the same through the
/// 32-bit gate (`mmap2`, `old_mmap`, `mprotect`, `pkey_mprotect`), told
/// apart by `TS_COMPAT` (each gate's numbers mean other calls on the other).
#[inline(always)]
fn request(
    id: u64,
    regs: u64,
    with_mprotect: bool,
    mmap: &MmapOffsets,
) -> Result<Option<Request>, ReadError> {
    let config = CONFIG.load();
    let native = |number: u32| number != 0 && id == u64::from(number);
    let native_map = native(config.mmap_syscall);
    let native_protect =
        with_mprotect && (native(config.mprotect_syscall) || native(config.pkey_mprotect_syscall));
    let compat_map = id == compat_syscall::MMAP2 || id == compat_syscall::OLD_MMAP;
    let compat_protect =
        with_mprotect && (id == compat_syscall::MPROTECT || id == compat_syscall::PKEY_MPROTECT);
    let compat_candidate = config.compat_syscalls != 0 && (compat_map || compat_protect);
    if !native_map && !native_protect && !compat_candidate {
        return Ok(None);
    }
    let status: u32 = kernel::read_or_zero(kernel::current_task(), mmap.thread_status);
    let reg = |offset: u32| kernel::read::<u64>(regs, offset);
    if status & TS_COMPAT == 0 {
        return Ok(if native_map {
            Some(Request {
                maps: true,
                args: [
                    reg(mmap.regs_arg3)?,
                    reg(mmap.regs_arg4)?,
                    reg(mmap.regs_arg5)?,
                ],
            })
        } else if native_protect {
            Some(Request {
                maps: false,
                args: [reg(mmap.regs_arg1)?, reg(mmap.regs_arg3)?, 0],
            })
        } else {
            None
        });
    }
    if !compat_candidate {
        return Ok(None);
    }
    Ok(Some(if id == compat_syscall::MMAP2 {
        // ebx, ecx, edx, esi, edi, ebp: addr, len, prot, flags, fd, pgoff.
        Request {
            maps: true,
            args: [
                reg(mmap.regs_arg3)?,
                reg(mmap.regs_si)?,
                reg(mmap.regs_arg1)?,
            ],
        }
    } else if id == compat_syscall::OLD_MMAP {
        // One pointer to six 32-bit values: addr, len, prot, flags, fd, offset.
        let block = reg(mmap.regs_bx)? & 0xffff_ffff;
        // SAFETY: the helper checks the user address itself.
        let user = |at: u64| unsafe { bpf_probe_read_user((block + at) as *const u32) };
        match (user(8), user(12), user(16)) {
            (Ok(prot), Ok(flags), Ok(fd)) => Request {
                maps: true,
                args: [u64::from(prot), u64::from(flags), u64::from(fd)],
            },
            // The system call will fail the same way.
            _ => return Ok(None),
        }
    } else {
        Request {
            maps: false,
            args: [reg(mmap.regs_bx)? & 0xffff_ffff, reg(mmap.regs_arg3)?, 0],
        }
    }))
}

/// Whether system call `id` is one that changes mounts (`mount`,
/// `move_mount`, `fsconfig`, `mount_setattr`), on either gate; marks the
/// change when a container process makes it ([`mount_changes`]). The signal
/// backend has no hook on mounts: this program, already on every system
/// call, is where it sees them.
#[inline(always)]
fn mount_call(id: u64, regs: u64, mmap: &MmapOffsets) -> bool {
    let config = CONFIG.load();
    let native = |number: u32| number != 0 && id == u64::from(number);
    let native_mount = native(config.mount_syscall);
    let native_call = native_mount
        || native(config.move_mount_syscall)
        || native(config.fsconfig_syscall)
        || native(config.mount_setattr_syscall);
    let compat_mount = id == compat_syscall::MOUNT;
    let compat_call = config.compat_syscalls != 0
        && (compat_mount
            || id == compat_syscall::MOVE_MOUNT
            || id == compat_syscall::FSCONFIG
            || id == compat_syscall::MOUNT_SETATTR);
    if !native_call && !compat_call {
        return false;
    }
    // Each gate's numbers mean other calls on the other.
    let status: u32 = kernel::read_or_zero(kernel::current_task(), mmap.thread_status);
    let (ours, flags) = if status & TS_COMPAT == 0 {
        (native_call, kernel::read_or_zero(regs, mmap.regs_arg4))
    } else {
        (compat_call, kernel::read_or_zero::<u64>(regs, mmap.regs_si) & 0xffff_ffff)
    };
    let is_mount = if status & TS_COMPAT == 0 {
        native_mount
    } else {
        compat_mount
    };
    if ours && !(is_mount && mount_changes::propagation_only(flags)) {
        mount_changes::mark_mount_change(0);
    }
    ours
}

#[inline(always)]
fn on_sys_enter(ctx: &RawTracePointContext, with_mprotect: bool) -> i32 {
    let id: u64 = ctx.arg(1);
    let regs: u64 = ctx.arg(0);
    let mmap = MMAP_OFFSETS.load();
    if mount_call(id, regs, &mmap) {
        return 0;
    }
    let offsets = drift::offsets();
    // Plain matches rather than closures: a closure LLVM leaves out of line
    // puts a Rust enum layout in the object's BTF, which the kernel refuses.
    let (target, how) = match request(id, regs, with_mprotect, &mmap) {
        Ok(None) => return 0,
        Err(ReadError) => (Err(ReadError), via::MMAP),
        Ok(Some(request)) if request.maps => {
            (mapped_file(&request.args, &mmap, offsets), via::MMAP)
        }
        Ok(Some(request)) => {
            // Not reached without `with_mprotect`; the constant keeps
            // `bpf_find_vma` out of the program for kernels that do not
            // have it (before 5.17).
            if !with_mprotect {
                return 0;
            }
            (Ok(protected_file(&request.args, offsets)), via::MPROTECT)
        }
    };
    let checked = match target {
        Ok(Some(file)) => drift::check_file(file, path::opaque(how), offsets),
        Ok(None) => return 0,
        Err(ReadError) => Err(ReadError),
    };
    // One pass of the verifier through the check for both routes, and one
    // report for a decision and a read that failed.
    if let Verdict::Drift(drift) = drift::or_unreadable(checked, how) {
        exec::kill(&drift, None, offsets);
    }
    0
}

/// Where [`on_vma`] finds the offset of `vm_file` and leaves the file.
#[repr(C)]
struct VmaFile {
    /// `vm_area_struct.vm_file`, a constant to the verifier (read-only
    /// global), as pointer arithmetic on the callback's `vma` requires.
    vma_file: u64,
    file: u64,
}

/// `bpf_find_vma` callback: the file of the mapping, read under the mmap
/// lock the helper holds.
unsafe extern "C" fn on_vma(_task: *mut c_void, vma: *mut c_void, found: *mut c_void) -> c_long {
    // Plain integers and pointers only: this function is not inlined, so its
    // types go into the object's BTF, which the kernel checks, and it refuses
    // Rust's zero-sized types.
    let found = found.cast::<VmaFile>();
    let mut file: u64 = 0;
    // SAFETY: `found` is the caller's stack object passed to the helper;
    // `vma` is valid for the callback's duration, and the helper checks the
    // read.
    unsafe {
        let field = vma.cast::<u8>().add((*found).vma_file as usize);
        let status =
            bpf_probe_read_kernel((&raw mut file).cast::<c_void>(), 8, field.cast::<c_void>());
        (*found).file = if status == 0 { file } else { 0 };
    }
    0
}

/// The file of the mapping an `mprotect` of `[addr, prot, _]` makes
/// executable, if any.
#[inline(always)]
fn protected_file(args: &[u64; 3], offsets: &KernelOffsets) -> Option<u64> {
    let [addr, prot, _] = *args;
    if prot & PROT_EXEC == 0 {
        return None;
    }
    // No mapping at `addr` (the system call will fail), or the lock was
    // contended: nothing to decide.
    file_mapped_at(addr, offsets)
}

/// The file mapped at `addr` in the current task, if any (`bpf_find_vma`,
/// 5.17+); `None` also when the mmap lock was contended.
#[inline(always)]
pub(crate) fn file_mapped_at(addr: u64, offsets: &KernelOffsets) -> Option<u64> {
    let mut found = VmaFile {
        vma_file: u64::from(offsets.vma_file),
        file: 0,
    };
    // SAFETY: helper calls; the callback only writes `found`.
    let status = unsafe {
        bpf_find_vma(
            bpf_get_current_task_btf(),
            addr,
            on_vma as *mut c_void,
            (&raw mut found).cast::<c_void>(),
            0,
        )
    };
    (status == 0 && found.file != 0).then_some(found.file)
}

/// The file an `mmap` of `[prot, flags, fd]` maps executable, if any: the
/// descriptor looked up in the task's descriptor table.
#[inline(always)]
fn mapped_file(
    args: &[u64; 3],
    mmap: &MmapOffsets,
    offsets: &KernelOffsets,
) -> Result<Option<u64>, ReadError> {
    let [prot, flags, fd] = *args;
    // The kernel takes the descriptor as an int.
    let fd = fd as u32;
    if prot & PROT_EXEC == 0 || flags & MAP_ANONYMOUS != 0 || fd > i32::MAX as u32 {
        return Ok(None);
    }
    match kernel::current_fd_file(fd, mmap)? {
        Some(file) if !kernel::is_current_exe(file, offsets) => Ok(Some(file)),
        _ => Ok(None),
    }
}
