//! Exec hooks: the LSM decision point and the signal-backend fallback.

use aya_ebpf::{
    helpers::generated::bpf_send_signal,
    macros::{lsm, raw_tracepoint},
    programs::{LsmContext, RawTracePointContext},
};
use enforcer_common::{
    AT_BASE, AUXV_PAIRS_MAX, EPERM, KernelOffsets, SIGKILL, backend, counter, decision, mode, via,
};

use crate::{
    drift::{self, Drift, Verdict},
    events, kernel,
    maps::{MMAP_OFFSETS, count},
    mmap,
};

/// `bprm_check_security(struct linux_binprm *bprm)`: runs before the new
/// program is loaded, for the file and again for each interpreter (scripts).
#[lsm(hook = "bprm_check_security")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
#[inline(always)]
pub(crate) fn bprm_check_security(ctx: LsmContext) -> i32 {
    let bprm: u64 = ctx.arg(0);
    // A previous LSM's refusal stands.
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    count(counter::EXEC_CHECKED);
    let offsets = drift::offsets();
    kernel::note_mount_namespace();
    match drift::or_unreadable(check_exec(bprm, offsets), via::EXEC) {
        Verdict::Allow => 0,
        Verdict::Drift(drift) => {
            let (decision, verdict) = lsm_verdict(drift.mode);
            let filename = kernel::read_or_zero(bprm, offsets.binprm_filename);
            events::decided(&drift, Some(filename), offsets, decision, backend::LSM);
            verdict
        }
    }
}

/// The verdict on the exec of `bprm`'s file. For the record, the path is
/// `bprm->filename` (null when unreadable: the record then has none).
#[inline(always)]
fn check_exec(bprm: u64, offsets: &KernelOffsets) -> Result<Verdict, kernel::ReadError> {
    kernel::read_ptr(bprm, offsets.binprm_file)
        .and_then(|file| drift::check_file(file, via::EXEC, offsets))
}

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`:
/// fires after the point of no return of an exec, in the context of the new
/// program, before its first user-space instruction. SIGKILL sent here is
/// delivered on the way back to user space, so the program never runs. For a
/// script, `bprm->file` is the interpreter by now: the script is decided by
/// [`crate::script::sched_process_exec_script`] on the same tracepoint.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
#[inline(always)]
pub(crate) fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    let bprm: u64 = ctx.arg(2);
    count(counter::EXEC_CHECKED);
    let offsets = drift::offsets();
    if let Verdict::Drift(drift) = drift::or_unreadable(check_exec(bprm, offsets), via::EXEC) {
        let filename = kernel::read_or_zero(bprm, offsets.binprm_filename);
        kill(&drift, Some(filename), offsets);
    }
    kernel::note_mount_namespace();
    0
}

/// `sched_process_exec`, like [`sched_process_exec`], for the program's ELF
/// interpreter (the dynamic loader), which the kernel opened and mapped
/// itself: no system call to see, and the signal backend has no hook on the
/// mapping (the lsm backend decides it on `mmap_file`). A dropped loader
/// written over the image's would otherwise run under every dynamic image
/// program's name. Found at `AT_BASE` of the new program's auxiliary vector
/// (`bpf_find_vma`, 5.17+).
#[raw_tracepoint(tracepoint = "sched_process_exec")]
#[inline(always)]
pub(crate) fn sched_process_exec_interp(_ctx: RawTracePointContext) -> i32 {
    let offsets = drift::offsets();
    let checked = elf_interpreter(offsets).and_then(|file| match file {
        Some(file) => drift::check_file(file, via::EXEC, offsets),
        None => Ok(Verdict::Allow),
    });
    if let Verdict::Drift(drift) = drift::or_unreadable(checked, via::EXEC) {
        kill(&drift, None, offsets);
    }
    0
}

/// The file of the current program's ELF interpreter, if it has one.
#[inline(always)]
fn elf_interpreter(offsets: &KernelOffsets) -> Result<Option<u64>, kernel::ReadError> {
    let auxv_at = MMAP_OFFSETS.load().mm_saved_auxv;
    let mm = kernel::read_ptr(kernel::current_task(), offsets.task_mm)?;
    let mut base = 0;
    let mut pair = 0;
    while pair < AUXV_PAIRS_MAX {
        let entry = mm + u64::from(auxv_at) + u64::from(pair) * 16;
        let kind: u64 = kernel::read_or_zero(entry, 0);
        if kind == 0 {
            break;
        }
        if kind == AT_BASE {
            base = kernel::read_or_zero(entry, 8);
            break;
        }
        pair += 1;
    }
    // 0: a static program, or the loader run as the program itself.
    if base == 0 {
        return Ok(None);
    }
    Ok(mmap::file_mapped_at(base, offsets))
}

/// The signal backend's answer to drift: SIGKILL (enforce), then the event.
/// `filename` is an exec's `bprm->filename`.
#[inline(always)]
pub(crate) fn kill(drift: &Drift, filename: Option<u64>, offsets: &KernelOffsets) {
    let decision = kill_current(drift.mode);
    events::decided(drift, filename, offsets, decision, backend::SIGNAL);
}

/// An LSM hook's answer in `mode`: the decision to report, and the value
/// to return (EPERM refuses in enforce mode).
///
/// Newer verifiers (6.12 here, not 6.1) check that an LSM program returns a
/// value in [-4095, 0], and 6.12's loses every bound across a negation. Left
/// to itself LLVM derives the return value from the mode
/// (`-(mode == ENFORCE)`), which 6.12 then rejects; `black_box` keeps
/// `-EPERM` a constant the verifier sees on its own branch. It is a 64-bit
/// value because the verifier checks all 64 bits of R0, and a 32-bit
/// reload would come back zero-extended (4294967295).
#[inline(always)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "-EPERM fits; the wide value only exists for the reload"
)]
pub(crate) fn lsm_verdict(mode: u32) -> (u32, i32) {
    if mode == mode::ENFORCE {
        (
            decision::BLOCKED,
            core::hint::black_box(-i64::from(EPERM)) as i32,
        )
    } else {
        (decision::AUDIT, 0)
    }
}

/// SIGKILL for the current task in enforce mode; the decision to report.
#[inline(always)]
pub(crate) fn kill_current(mode: u32) -> u32 {
    if mode == mode::ENFORCE {
        // SAFETY: plain helper call; signals the current task.
        if unsafe { bpf_send_signal(SIGKILL) } == 0 {
            decision::KILLED
        } else {
            count(counter::SIGNAL_FAILED);
            decision::KILL_FAILED
        }
    } else {
        decision::AUDIT
    }
}
