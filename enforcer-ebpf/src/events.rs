//! Audit records written to the ring buffer.

use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    bpf_ktime_get_boot_ns,
    generated::{bpf_get_current_comm, bpf_probe_read_kernel, bpf_probe_read_kernel_str},
};
use enforcer_common::{
    COMM_LEN, DecisionEvent, EXEC_PATH_LEN, EventHeader, KernelOffsets, LINEAGE_MAX,
    LINEAGE_WALK_MAX, NAME_LEN, RootNotice, counter, event_flags, event_kind, reason,
};

use crate::{
    drift::Drift,
    kernel::{self, FileFacts},
    maps::{EVENTS, count, task_offset},
    vshield::Hit,
};

/// Copies a kernel string into `dst` (`size` bytes); returns the length
/// without the NUL, or `None` when nothing could be read.
///
/// # Safety
/// `dst` must point at `size` writable bytes.
#[inline(always)]
unsafe fn read_str(dst: *mut u8, size: usize, src: u64) -> Option<u32> {
    // SAFETY: per the contract; the helper validates `src`.
    let copied = unsafe {
        bpf_probe_read_kernel_str(dst.cast::<c_void>(), size as u32, src as *const c_void)
    };
    // The helper counts the terminating NUL; errors are negative.
    if let Ok(copied @ 1..) = u32::try_from(copied) {
        Some(copied - 1)
    } else {
        // SAFETY: per the contract, `size` is at least 1.
        unsafe { *dst = 0 };
        None
    }
}

/// Copies task `task`'s `comm` into `dst`, zeroed when unreadable (the
/// helper zeroes it on failure: no branch, see [`kernel::read_or_zero`]).
///
/// # Safety
/// `dst` must point at [`COMM_LEN`] writable bytes.
#[inline(always)]
unsafe fn read_comm(dst: *mut [u8; COMM_LEN], task: u64) {
    let src = task + u64::from(task_offset!(task_comm));
    // SAFETY: per the contract; the helper validates `src`.
    unsafe {
        bpf_probe_read_kernel(dst.cast::<c_void>(), COMM_LEN as u32, src as *const c_void);
    }
}

/// `task`'s mount namespace (`struct mnt_namespace *`); null for a task
/// that has exited (its `nsproxy` is gone) or a null `task`.
#[inline(always)]
fn mnt_ns_of(task: u64, offsets: &KernelOffsets) -> u64 {
    let nsproxy: u64 = kernel::read_or_zero(task, offsets.task_nsproxy);
    kernel::read_or_zero(nsproxy, offsets.nsproxy_mnt_ns)
}

/// Fills the record's lineage: the parent's name, the ancestors that share
/// the task's mount namespace and the entry leader, the topmost of them.
///
/// Read here, while the task is in its exec or open, because the agent reads
/// the record later: a refused program's process is often gone by then (a
/// `kubectl exec` of a dropped binary ends with the refusal), and the walk
/// through `/proc` would find nothing to tell an exec session by.
///
/// Every read is [`kernel::read_or_zero`] (a null task reads as zeroes) and
/// nothing after the walk depends on where it stopped, so the verifier
/// checks each step of the walk about once: with a branch per failed read
/// and the count decided after the loop, the walk's states multiplied into
/// most of the exec programs' load time (seconds each under emulation).
///
/// # Safety
/// `event` must point at a reserved record owned by the caller.
#[inline(always)]
unsafe fn lineage(event: *mut DecisionEvent, offsets: &KernelOffsets) {
    let task = kernel::current_task();
    let mnt_ns = mnt_ns_of(task, offsets);
    let mut child = task;
    let mut leader = 0u64;
    // SAFETY: per the contract; each place is written through raw pointers.
    unsafe {
        read_comm(
            &raw mut (*event).parent_comm,
            kernel::read_or_zero(task, offsets.task_real_parent),
        );
        (*event).ancestors_len = 0;
    }
    if mnt_ns != 0 {
        for step in 0..LINEAGE_WALK_MAX {
            let parent: u64 = kernel::read_or_zero(child, offsets.task_real_parent);
            // `init_task` is its own parent.
            if parent == 0 || parent == child {
                break;
            }
            if mnt_ns_of(parent, offsets) != mnt_ns {
                leader = child;
                break;
            }
            // `step` is a constant in each pass of the verifier through the
            // unrolled walk, so this is no branch to it.
            if step < LINEAGE_MAX {
                // SAFETY: `step` is in bounds of both arrays.
                unsafe {
                    (*event).ancestor_pids[step] = kernel::read_or_zero(parent, offsets.task_tgid);
                    read_comm(&raw mut (*event).ancestor_comms[step], parent);
                    (*event).ancestors_len = step as u32 + 1;
                }
            } else {
                // SAFETY: per the contract.
                unsafe { (*event).flags |= event_flags::ANCESTORS_TRUNCATED };
            }
            child = parent;
        }
    }
    // A null leader (none found) reads as zeroes.
    let (leader_tgid, nspid, pid_ns) = leader_ids(leader, offsets);
    // SAFETY: per the contract.
    unsafe {
        (*event).leader_tgid = leader_tgid;
        (*event).leader_nspid = nspid;
        (*event).leader_pid_ns = pid_ns;
    }
}

/// Task `task`'s process id, its process id in its own pid namespace
/// (`task->thread_pid->numbers[level].nr`), and that namespace's inode
/// number; zeroes for a null `task`.
#[inline(always)]
fn leader_ids(task: u64, offsets: &KernelOffsets) -> (u32, u32, u32) {
    let tgid = kernel::read_or_zero(task, offsets.task_tgid);
    let pid: u64 = kernel::read_or_zero(task, task_offset!(task_thread_pid));
    let level: u32 = kernel::read_or_zero(pid, task_offset!(pid_level));
    let upid = pid
        + u64::from(task_offset!(pid_numbers))
        + u64::from(level) * u64::from(task_offset!(upid_size));
    let ns: u64 = kernel::read_or_zero(upid, task_offset!(upid_ns));
    (
        tgid,
        kernel::read_or_zero(upid, task_offset!(upid_nr)),
        kernel::read_or_zero(ns, task_offset!(pid_namespace_inum)),
    )
}

/// What a decision record says, apart from the task's own context.
struct Report<'a> {
    mnt_ns: u32,
    /// For the name.
    file: &'a FileFacts,
    /// The inode number and device reported.
    ino: u64,
    dev: u32,
    /// One of `reason::*`.
    reason: u32,
    /// One of `layer::*`, 0 for vShields.
    layer: u32,
    /// One of `via::*`.
    via: u32,
    /// The vShield's slot, 0 for drift.
    rule: u32,
    decision: u32,
    backend: u32,
}

/// Writes a decision record. `filename` is the `char *` path given to exec,
/// absent for mappings and opens. A full ring buffer is counted, never
/// silent.
#[inline(always)]
fn report(report: &Report<'_>, filename: Option<u64>, offsets: &KernelOffsets) {
    let Some(mut entry) = EVENTS.reserve::<DecisionEvent>(0) else {
        count(counter::EVENTS_LOST);
        return;
    };
    let event = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // The reserved record is uninitialised ring memory: every field is written
    // through raw places, never through references.
    // SAFETY: `event` points at a reserved record of `size_of::<DecisionEvent>()`
    // bytes that this program owns until submit.
    unsafe {
        (*event).header = EventHeader {
            kind: event_kind::DECISION,
            pad: 0,
            boot_ns: bpf_ktime_get_boot_ns(),
        };
        (*event).pid = pid_tgid as u32;
        (*event).tgid = (pid_tgid >> 32) as u32;
        (*event).ppid = kernel::current_parent_tgid(offsets).unwrap_or(0);
        (*event).uid = uid_gid as u32;
        (*event).gid = (uid_gid >> 32) as u32;
        (*event).mnt_ns = report.mnt_ns;
        (*event).cgroup_id = bpf_get_current_cgroup_id();
        (*event).inode = report.ino;
        (*event).dev = report.dev;
        (*event).decision = report.decision;
        (*event).reason = report.reason;
        (*event).backend = report.backend;
        (*event).layer = report.layer;
        (*event).via = report.via;
        (*event).rule = report.rule;
        (*event).pad = 0;

        let comm = (&raw mut (*event).comm).cast::<c_void>();
        if bpf_get_current_comm(comm, COMM_LEN as u32) < 0 {
            (*event).comm = [0; COMM_LEN];
        }

        let name = kernel::read::<u64>(report.file.dentry, offsets.dentry_name).unwrap_or(0);
        let _ = read_str((&raw mut (*event).name).cast::<u8>(), NAME_LEN, name);

        let path = (&raw mut (*event).path).cast::<u8>();
        let copied = if let Some(filename) = filename {
            read_str(path, EXEC_PATH_LEN, filename)
        } else {
            *path = 0;
            None
        };
        if let Some(len) = copied {
            (*event).path_len = len;
            (*event).flags = if len as usize == EXEC_PATH_LEN - 1 {
                event_flags::PATH_TRUNCATED
            } else {
                0
            };
        } else {
            (*event).path_len = 0;
            (*event).flags = event_flags::NO_PATH;
        }
        lineage(event, offsets);
    }
    entry.submit(0);
}

/// Reports a drift decision.
#[inline(always)]
fn drift(
    drift: &Drift,
    filename: Option<u64>,
    offsets: &KernelOffsets,
    decision: u32,
    backend: u32,
) {
    report(
        &Report {
            mnt_ns: drift.mnt_ns,
            file: &drift.file,
            ino: drift.file.ino,
            dev: drift.file.dev,
            reason: reason::DRIFT,
            layer: drift.layer,
            via: drift.via,
            rule: drift.policy,
            decision,
            backend,
        },
        filename,
        offsets,
    );
}

/// Reports a vShield's decision.
#[inline(always)]
pub(crate) fn vshield(
    hit: &Hit,
    filename: Option<u64>,
    offsets: &KernelOffsets,
    decision: u32,
    backend: u32,
) {
    report(
        &Report {
            mnt_ns: hit.mnt_ns,
            file: &hit.file,
            ino: hit.id.ino,
            dev: hit.id.dev,
            reason: reason::VSHIELD,
            layer: 0,
            via: hit.via,
            rule: hit.rule.rule,
            decision,
            backend,
        },
        filename,
        offsets,
    );
}

/// Counts and reports a drift decision.
#[inline(always)]
pub(crate) fn decided(
    drift: &Drift,
    filename: Option<u64>,
    offsets: &KernelOffsets,
    decision: u32,
    backend: u32,
) {
    count(counter::DRIFT_DETECTED);
    self::drift(drift, filename, offsets, decision, backend);
}

/// Tells the agent that a container runs from a root that is not overlayfs
/// while such roots are not tracked. Sent until the agent has answered, so a
/// lost notice is followed by another; a full ring buffer is counted.
#[inline(always)]
pub(crate) fn untracked_root(mnt_ns: u32, root: &FileFacts) {
    // SAFETY: a helper without arguments.
    let boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    let notice = RootNotice {
        header: EventHeader {
            kind: event_kind::UNTRACKED_ROOT,
            pad: 0,
            boot_ns,
        },
        mnt_ns,
        dev: root.dev,
        fs_magic: root.fs_magic,
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        pad: 0,
    };
    if EVENTS.output::<RootNotice>(notice, 0).is_err() {
        count(counter::EVENTS_LOST);
    }
}
