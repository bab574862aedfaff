//! Executable mappings: how a dropped program runs through the dynamic
//! loader (`ld.so ./tool`) and how a dropped library is loaded
//! (`LD_PRELOAD`, `dlopen`). Both end in an mmap or mprotect with `PROT_EXEC`.
//! The LSM hooks decide them; the signal backend sees `mmap` at system call
//! entry ([`sys_enter_mmap`]) and has no way to see `mprotect`'s file.

use aya_ebpf::{
    macros::{lsm, raw_tracepoint},
    programs::{LsmContext, RawTracePointContext},
};
use enforcer_common::{
    EPERM, KernelOffsets, MAP_ANONYMOUS, MmapOffsets, PROT_EXEC, backend, counter, decision, mode,
    via,
};

use crate::{
    drift::{self, Verdict},
    events, exec,
    kernel::{self, ReadError},
    maps::{CONFIG, MMAP_OFFSETS, count},
};

/// Decides on an executable mapping of `file`; returns the hook's result.
#[inline(always)]
fn decide(file: u64, how: u32) -> i32 {
    let offsets = drift::offsets();
    match drift::check_file(file, how, &offsets) {
        Ok(Verdict::Allow) => 0,
        Ok(Verdict::Drift(drift)) => {
            let enforce = drift.mode == mode::ENFORCE;
            let decision = if enforce {
                decision::BLOCKED
            } else {
                decision::AUDIT
            };
            events::decided(&drift, None, &offsets, decision, backend::LSM);
            if enforce { -EPERM } else { 0 }
        }
        Err(_) => {
            count(counter::READ_ERRORS);
            0
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
    match kernel::current_exe_file(&drift::offsets()) {
        Ok(exe) if exe == file => 0,
        _ => decide(file, via::MMAP),
    }
}

/// `file_mprotect(struct vm_area_struct *vma, unsigned long reqprot,
/// unsigned long prot)`.
#[lsm(hook = "file_mprotect")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
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
    match kernel::read::<u64>(vma, offsets.vma_file) {
        Ok(0) => 0,
        Ok(file) => decide(file, via::MPROTECT),
        Err(_) => {
            count(counter::READ_ERRORS);
            0
        }
    }
}

/// `sys_enter(struct pt_regs *regs, long id)`, for the signal backend, which
/// has no hook with the file of a mapping: `mmap(..., PROT_EXEC, flags, fd)`
/// of a drift file. The mapping is still made, but the SIGKILL sent here is
/// delivered before the system call returns, so none of the mapped code
/// runs. Every system call on the machine passes here; all but `mmap` leave
/// at the first comparison.
#[raw_tracepoint(tracepoint = "sys_enter")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
pub(crate) fn sys_enter_mmap(ctx: RawTracePointContext) -> i32 {
    let id: u64 = ctx.arg(1);
    let config = CONFIG.load();
    if config.mmap_syscall == 0 || id != u64::from(config.mmap_syscall) {
        return 0;
    }
    let regs: u64 = ctx.arg(0);
    let offsets = drift::offsets();
    let checked = mapped_file(regs, &MMAP_OFFSETS.load(), &offsets).and_then(|file| match file {
        Some(file) => Ok(Some(drift::check_file(file, via::MMAP, &offsets)?)),
        None => Ok(None),
    });
    match checked {
        Ok(Some(Verdict::Drift(drift))) => exec::kill(&drift, None, &offsets),
        Ok(_) => {}
        Err(_) => count(counter::READ_ERRORS),
    }
    0
}

/// The file an `mmap` with these registers maps executable, if any: the
/// `fd` argument looked up in the task's descriptor table.
#[inline(always)]
fn mapped_file(
    regs: u64,
    mmap: &MmapOffsets,
    offsets: &KernelOffsets,
) -> Result<Option<u64>, ReadError> {
    let prot: u64 = kernel::read(regs, mmap.regs_arg3)?;
    let flags: u64 = kernel::read(regs, mmap.regs_arg4)?;
    let fd: u64 = kernel::read(regs, mmap.regs_arg5)?;
    // The kernel takes the descriptor as an int.
    let fd = fd as u32;
    if prot & PROT_EXEC == 0 || flags & MAP_ANONYMOUS != 0 || fd > i32::MAX as u32 {
        return Ok(None);
    }
    let files = kernel::read_ptr(kernel::current_task(), mmap.task_files)?;
    let fdt = kernel::read_ptr(files, mmap.files_fdt)?;
    let max_fds: u32 = kernel::read(fdt, mmap.fdtable_max_fds)?;
    if fd >= max_fds {
        return Ok(None);
    }
    let fds = kernel::read_ptr(fdt, mmap.fdtable_fd)?;
    let file: u64 = kernel::read(fds + u64::from(fd) * 8, 0)?;
    if file == 0 {
        return Ok(None);
    }
    // The program mapping itself: decided at exec.
    match kernel::current_exe_file(offsets) {
        Ok(exe) if exe == file => Ok(None),
        _ => Ok(Some(file)),
    }
}
