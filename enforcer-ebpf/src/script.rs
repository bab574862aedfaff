//! Scripts on the signal backend.
//!
//! When `sched_process_exec` fires, the exec has already put the interpreter
//! in `bprm->file` and released the script's file. The release is deferred:
//! `fput` queues the file's `callback_head` on `current->task_works`, which
//! the kernel runs on the way back to user space, after this tracepoint. So
//! the script's file is still on that list.
//!
//! Task works run at every return to user space, so the list holds only what
//! this exec queued (and works of other kinds, told apart by their function):
//! the scripts first (each level of nested scripts), then whatever the exec
//! released after them (close-on-exec descriptors, and the previous
//! program and its ELF interpreter when their last user was this process).
//! New works go at the head, so the scripts are the *last* files on the list
//! that the kernel opened for execution (`__FMODE_EXEC`).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::bpf_loop, macros::raw_tracepoint, programs::RawTracePointContext,
};
use enforcer_common::{
    ENOEXEC, KernelOffsets, O_FMODE_EXEC, SCRIPT_FILES_MAX, SCRIPT_WALK_BOUNDED, SCRIPT_WALK_MAX,
    TS_COMPAT, compat_syscall, counter, layer, via,
};

use crate::{
    drift::{self, Verdict},
    exec,
    kernel::{self, KERNEL_SPACE, ReadError},
    maps::{CONFIG, MMAP_OFFSETS, SCRIPT_WALK, count, offset},
};

/// `sched_process_exec`, like [`exec::sched_process_exec`], for the scripts
/// an exec ran, walking the task works with `bpf_loop` (5.17+). A program
/// of its own: one program deciding both files is more than the verifier
/// can check in reasonable time.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
// Into the function the macro wraps it in: a frame of its own would take
// 32 bytes from those the decision and the walks' callbacks share.
#[inline(always)]
pub(crate) fn sched_process_exec_script(ctx: RawTracePointContext) -> i32 {
    on_exec(&ctx, true)
}

/// [`sched_process_exec_script`] for kernels without `bpf_loop`, which
/// refuse that program: the walk is unrolled, [`SCRIPT_WALK_BOUNDED`] steps.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
// Into the function the macro wraps it in: a frame of its own would take
// 32 bytes from those the decision and the walks' callbacks share.
#[inline(always)]
pub(crate) fn sched_process_exec_script_bounded(ctx: RawTracePointContext) -> i32 {
    on_exec(&ctx, false)
}

#[inline(always)]
fn on_exec(ctx: &RawTracePointContext, with_loop: bool) -> i32 {
    let bprm: u64 = ctx.arg(2);
    let offsets = drift::offsets();
    // Inlined, with or without `bpf_loop`: a kernel that counts a
    // callback's frame on top of the frame that passes it (6.1) allows the
    // program 480 bytes beside the callbacks' 32 (the task works walk's,
    // and the mount walk's inside the decision), and a function of its own
    // for the decision would take 32 more. A walk that failed leaves
    // unknown whether the exec ran a script: a container process in enforce
    // mode is stopped, since it may have.
    let checked = match walk_works(bprm, with_loop) {
        Ok(true) => script_verdict(bprm, offsets),
        Ok(false) => return 0,
        Err(ReadError) => Err(ReadError),
    };
    // One place that kills and reports: two would each take their own
    // stack, and this function's must leave room for the walk's callback.
    if let Verdict::Drift(drift) = drift::or_unreadable(checked, via::EXEC) {
        let filename: u64 = kernel::read_or_zero(bprm, offsets.binprm_filename);
        exec::kill(&drift, Some(filename), offsets);
    }
    0
}

/// `callback_head.next` and `callback_head.func`: two pointers, a layout that
/// has not changed since task works exist.
const WORK_NEXT: u32 = 0;
const WORK_FUNC: u32 = 8;

/// The state of a walk through `current->task_works`; plain integers only,
/// since the `bpf_loop` callback that takes it is not inlined and its types
/// go into the object's BTF.
#[repr(C)]
pub(crate) struct Walk {
    /// The next `callback_head`; a user-space value (null) ends the list.
    work: u64,
    /// `____fput`: the function of a deferred file release.
    fput_fn: u64,
    /// [`KernelOffsets::file_task_work`].
    file_task_work: u64,
    /// [`KernelOffsets::file_flags`].
    file_flags: u64,
    /// Files the kernel opened for execution, the oldest (the outermost
    /// script) first.
    files: [u64; SCRIPT_FILES_MAX],
    /// How many such files the walk found.
    found: u64,
    /// 1 once the walk reached the end of the list.
    ended: u64,
}

impl Walk {
    /// Starts a walk at `work`, field by field: zeroed fields side by side
    /// become a call to `memset`, one more function frame on the stack.
    #[inline(always)]
    fn start(&mut self, work: u64, fput_fn: u64, file_task_work: u32, file_flags: u32) {
        self.work = work;
        self.fput_fn = fput_fn;
        self.file_task_work = u64::from(file_task_work);
        self.file_flags = u64::from(file_flags);
        // SAFETY: fields of `self`, written in place.
        unsafe {
            for slot in 0..SCRIPT_FILES_MAX {
                core::ptr::write_volatile(&raw mut self.files[slot], 0);
            }
            core::ptr::write_volatile(&raw mut self.found, 0);
            core::ptr::write_volatile(&raw mut self.ended, 0);
        }
    }
}

/// One work of the list; non-zero to stop. Without a branch but the one
/// at the end of the list: unrolled 256 times for kernels without
/// `bpf_loop`, each branch would double what the verifier walks (5.10
/// refuses the program as too large).
#[inline(always)]
fn step(walk: &mut Walk) -> i64 {
    let work = walk.work;
    if work < KERNEL_SPACE {
        walk.ended = 1;
        return 1;
    }
    let func: u64 = kernel::read_or_zero(work, WORK_FUNC);
    let file = work.wrapping_sub(walk.file_task_work);
    // Read whatever the work is: for other kinds of works these are bytes
    // of some other object, and the result is masked away.
    let flags: u32 = kernel::read_or_zero(file, walk.file_flags as u32);
    let different = func ^ walk.fput_fn;
    // 1 when `func` is `____fput` and the file was opened for execution.
    let is_fput = 1 - ((different | different.wrapping_neg()) >> 63);
    let hit = is_fput & u64::from((flags & O_FMODE_EXEC) >> O_FMODE_EXEC.trailing_zeros());
    let keep = hit.wrapping_sub(1);
    let take = !keep;
    // Each file found is older than those before it: the oldest are kept,
    // the newest dropped when there are more.
    let mut slot = SCRIPT_FILES_MAX - 1;
    while slot > 0 {
        walk.files[slot] = (walk.files[slot - 1] & take) | (walk.files[slot] & keep);
        slot -= 1;
    }
    walk.files[0] = (file & take) | (walk.files[0] & keep);
    walk.found += hit;
    // A failed read ends the list like a null one: what was found stays.
    walk.work = kernel::read_or_zero(work, WORK_NEXT);
    0
}

/// `bpf_loop` callback: one [`step`]. The helper's context must be on the
/// caller's stack, where the walk does not fit: the callback finds it in
/// this CPU's slot of the map, as its caller left it.
unsafe extern "C" fn walk_step(_index: u64, _context: *mut c_void) -> i64 {
    match walk_state() {
        Ok(walk) => step(walk),
        Err(ReadError) => 1,
    }
}

/// This CPU's walk state: too large for the stack beside the decision.
#[inline(always)]
fn walk_state() -> Result<&'static mut Walk, ReadError> {
    let walk = SCRIPT_WALK.get_ptr_mut(0).ok_or(ReadError)?;
    // SAFETY: this CPU's slot of a per-CPU array, which only the program
    // running on this CPU uses.
    Ok(unsafe { &mut *walk })
}

/// Walks the works the exec of `bprm` queued into `SCRIPT_WALK`, when the
/// exec ran a script; whether it did.
#[inline(always)]
fn walk_works(bprm: u64, with_loop: bool) -> Result<bool, ReadError> {
    let config = CONFIG.load();
    if config.fput_fn == 0 {
        return Ok(false);
    }
    // binfmt_script (and binfmt_misc) replace `interp` with the interpreter's
    // name; `filename` stays what the caller ran.
    let filename: u64 = kernel::read(bprm, offset!(binprm_filename))?;
    let interp: u64 = kernel::read(bprm, offset!(binprm_interp))?;
    if filename == interp {
        return Ok(false);
    }
    let walk = walk_state()?;
    walk.start(
        kernel::read(kernel::current_task(), offset!(task_task_works))?,
        config.fput_fn,
        offset!(file_task_work),
        offset!(file_flags),
    );
    if with_loop {
        let mut context = 0u64;
        // SAFETY: the callback only touches this CPU's slot of the map.
        unsafe {
            bpf_loop(
                SCRIPT_WALK_MAX,
                walk_step as *mut c_void,
                (&raw mut context).cast::<c_void>(),
                0,
            );
        }
    } else {
        for _ in 0..SCRIPT_WALK_BOUNDED {
            if step(walk) != 0 {
                break;
            }
        }
    }
    Ok(true)
}

/// The verdict on the scripts the exec of `bprm` ran, from the walk
/// [`walk_works`] left in `SCRIPT_WALK`.
///
/// Every file on the list that the kernel opened for execution is a
/// candidate: each level of nested scripts (a dropped script used as the
/// interpreter of an image script: `#!/usr/bin/env sh` with `/usr/bin/env`
/// replaced), and, when the exec released the previous program's memory
/// (`exec` in a shell), the previous program and its ELF interpreter,
/// which were decided when they ran. The first one that is not image
/// content is decided in full (allowed paths, exec sessions). A script
/// whose file is not on the list (works run early, or more than the walk
/// takes) is refused in enforce mode and reported as `unresolved`.
#[inline(always)]
fn script_verdict(bprm: u64, offsets: &KernelOffsets) -> Result<Verdict, ReadError> {
    let Some(scope) = drift::scope(offsets)? else {
        return Ok(Verdict::Allow);
    };
    // As `walk_works` left it.
    let walk = walk_state()?;
    let verdict = if walk.ended != 1 || walk.found == 0 {
        count(counter::SCRIPT_UNRESOLVED);
        // The interpreter stands for the script that was not found.
        let file = kernel::read_ptr(bprm, offsets.binprm_file)?;
        drift::undecided(file, via::EXEC, layer::UNRESOLVED, offsets)?
    } else {
        let mut chosen = 0;
        for slot in 0..SCRIPT_FILES_MAX {
            let file = walk.files[slot];
            if file == 0 {
                break;
            }
            if drift::layer_of(file, via::EXEC, &scope, offsets)?.is_some() {
                chosen = file;
                break;
            }
        }
        if chosen == 0 {
            return Ok(Verdict::Allow);
        }
        drift::check_file(chosen, via::EXEC, offsets)?
    };
    Ok(verdict)
}

/// `sys_exit(struct pt_regs *regs, long ret)`, with the mapping check: an
/// `execve` or `execveat` of a file with no format the kernel knows (a
/// script without `#!`) fails with `ENOEXEC`, and the caller (a shell,
/// glibc's `execvp`, `env`, `find -exec`) then runs the file with `/bin/sh`
/// itself, which no exec tracepoint sees. The file the failed exec opened
/// is on the task works as a script's is; when it is not image content, the
/// caller is killed before it returns to user space and can read it.
#[raw_tracepoint(tracepoint = "sys_exit")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
#[inline(always)]
pub(crate) fn sys_exit_exec(ctx: RawTracePointContext) -> i32 {
    let ret: i64 = ctx.arg(1);
    if ret != -ENOEXEC {
        return 0;
    }
    let regs: u64 = ctx.arg(0);
    let offsets = drift::offsets();
    if let Verdict::Drift(drift) = drift::or_unreadable(failed_exec(regs, offsets), via::EXEC) {
        exec::kill(&drift, None, offsets);
    }
    0
}

/// Works a failed exec leaves: its own file, and whatever else the system
/// call released (works run at every return to user space).
const FAILED_EXEC_WALK: u32 = 16;

/// The verdict on the file of a failed exec, if the system call was one.
#[inline(always)]
fn failed_exec(regs: u64, offsets: &KernelOffsets) -> Result<Verdict, ReadError> {
    let config = CONFIG.load();
    let mmap = MMAP_OFFSETS.load();
    let id: u64 = kernel::read(regs, mmap.regs_orig_ax)?;
    let status: u32 = kernel::read_or_zero(kernel::current_task(), mmap.thread_status);
    let is_exec = if status & TS_COMPAT == 0 {
        (config.execve_syscall != 0 && id == u64::from(config.execve_syscall))
            || (config.execveat_syscall != 0 && id == u64::from(config.execveat_syscall))
    } else {
        config.compat_syscalls != 0
            && (id == compat_syscall::EXECVE || id == compat_syscall::EXECVEAT)
    };
    if !is_exec || config.fput_fn == 0 || drift::scope(offsets)?.is_none() {
        return Ok(Verdict::Allow);
    }
    let walk = walk_state()?;
    walk.start(
        kernel::read(kernel::current_task(), offsets.task_task_works)?,
        config.fput_fn,
        offsets.file_task_work,
        offsets.file_flags,
    );
    for _ in 0..FAILED_EXEC_WALK {
        if step(walk) != 0 {
            break;
        }
    }
    match walk.files[0] {
        0 => Ok(Verdict::Allow),
        file => drift::check_file(file, via::EXEC, offsets),
    }
}
