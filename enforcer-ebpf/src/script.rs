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
//! the script first, then whatever the exec released after it (the previous
//! program, close-on-exec descriptors, the ELF interpreter). New works go at
//! the head, so the script is the *last* file on the list that the kernel
//! opened for execution (`__FMODE_EXEC`).

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use enforcer_common::{AgentConfig, KernelOffsets, O_FMODE_EXEC, SCRIPT_WALK_MAX, counter, via};

use crate::{
    drift::{self, Verdict},
    exec,
    kernel::{self, KERNEL_SPACE, ReadError},
    maps::{CONFIG, count},
    path,
};

/// `sched_process_exec`, like [`exec::sched_process_exec`], for the script
/// an exec ran. A program of its own: one program deciding both files is
/// more than the verifier can check in reasonable time.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the program macro passes the context by value"
)]
pub(crate) fn sched_process_exec_script(ctx: RawTracePointContext) -> i32 {
    let bprm: u64 = ctx.arg(2);
    let offsets = drift::offsets();
    let config = CONFIG.load();
    let checked = find(bprm, &offsets, &config).and_then(|script| match script {
        Script::File { file, filename } => Ok(Some((
            drift::check_file(file, via::EXEC, &offsets)?,
            filename,
        ))),
        Script::Unresolved => {
            if kernel::current_container(&offsets, &config)?.is_some() {
                count(counter::SCRIPT_UNRESOLVED);
            }
            Ok(None)
        }
        Script::None => Ok(None),
    });
    match checked {
        Ok(Some((Verdict::Drift(drift), filename))) => exec::kill(&drift, Some(filename), &offsets),
        Ok(_) => {}
        Err(_) => count(counter::READ_ERRORS),
    }
    0
}

/// `callback_head.next` and `callback_head.func`: two pointers, a layout that
/// has not changed since task works exist.
const WORK_NEXT: u32 = 0;
const WORK_FUNC: u32 = 8;

pub(crate) enum Script {
    /// The exec ran a program, not a script (`bprm->interp` is the file run).
    None,
    /// `struct file *` of the script, and the `bprm->filename` it ran as.
    File { file: u64, filename: u64 },
    /// A script, whose file was not on the list (more than
    /// [`SCRIPT_WALK_MAX`] works queued, or works run early).
    Unresolved,
}

/// The script the exec of `bprm` ran, if it ran one.
#[inline(always)]
pub(crate) fn find(
    bprm: u64,
    offsets: &KernelOffsets,
    config: &AgentConfig,
) -> Result<Script, ReadError> {
    if config.fput_fn == 0 {
        return Ok(Script::None);
    }
    // binfmt_script (and binfmt_misc) replace `interp` with the interpreter's
    // name; `filename` stays what the caller ran.
    let filename: u64 = kernel::read(bprm, offsets.binprm_filename)?;
    let interp: u64 = kernel::read(bprm, offsets.binprm_interp)?;
    if filename == interp {
        return Ok(Script::None);
    }
    let mut work: u64 = kernel::read(kernel::current_task(), offsets.task_task_works)?;
    let mut found = 0;
    for _ in 0..SCRIPT_WALK_MAX {
        if work < KERNEL_SPACE {
            return Ok(if found == 0 {
                Script::Unresolved
            } else {
                Script::File {
                    file: found,
                    filename,
                }
            });
        }
        let func: u64 = kernel::read(work, WORK_FUNC)?;
        if func == config.fput_fn {
            let file = work - u64::from(offsets.file_task_work);
            let flags: u32 = kernel::read(file, offsets.file_flags)?;
            if flags & O_FMODE_EXEC != 0 {
                found = file;
            }
        }
        // One verifier state per step, whether a file was found yet or not.
        found = path::opaque(found);
        work = kernel::read(work, WORK_NEXT)?;
    }
    Ok(Script::Unresolved)
}
