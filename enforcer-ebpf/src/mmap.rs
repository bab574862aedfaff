//! Executable mappings: how a dropped program runs through the dynamic
//! loader (`ld.so ./tool`) and how a dropped library is loaded
//! (`LD_PRELOAD`, `dlopen`). Both end in an mmap or mprotect with `PROT_EXEC`.
//! LSM only: there is no raw tracepoint with the file of a mapping.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use enforcer_common::{EPERM, PROT_EXEC, backend, counter, decision, mode, via};

use crate::{
    drift::{self, Verdict},
    events, kernel,
    maps::count,
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
