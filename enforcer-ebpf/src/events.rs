//! Audit records written to the ring buffer.

use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    bpf_ktime_get_boot_ns,
    generated::{bpf_get_current_comm, bpf_probe_read_kernel, bpf_probe_read_kernel_str},
};
use enforcer_common::{
    COMM_LEN, DecisionEvent, EXEC_PATH_LEN, EventHeader, KernelOffsets, LINEAGE_MAX,
    LINEAGE_WALK_MAX, NAME_LEN, ReportKey, ReportWindow, RootNotice, counter, event_flags,
    event_kind, layer, reason,
};

use crate::{
    drift::Drift,
    kernel::{self, FileFacts},
    maps::{CONFIG, EVENTS, REPORTED, count, task_offset},
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

/// `task`'s pid namespace (`struct pid_namespace *`) and its depth (0: the
/// initial one); zeroes for a null `task`.
#[inline(always)]
fn pid_ns_of(task: u64) -> (u64, u32) {
    let pid: u64 = kernel::read_or_zero(task, task_offset!(task_thread_pid));
    let level: u32 = kernel::read_or_zero(pid, task_offset!(pid_level));
    (
        kernel::read_or_zero(upid(pid, level), task_offset!(upid_ns)),
        level,
    )
}

/// `pid->numbers[level]`: the `struct upid` of the pid in its namespace at
/// depth `level`.
#[inline(always)]
fn upid(pid: u64, level: u32) -> u64 {
    pid + u64::from(task_offset!(pid_numbers))
        + u64::from(level) * u64::from(task_offset!(upid_size))
}

/// The id of `task`'s cgroup v2 group (`task->cgroups->dfl_cgrp->kn->id`, what
/// `bpf_get_current_cgroup_id` reports for the current task); 0 for a null
/// `task`.
#[inline(always)]
fn cgroup_of(task: u64) -> u64 {
    let css_set: u64 = kernel::read_or_zero(task, task_offset!(task_cgroups));
    let cgroup: u64 = kernel::read_or_zero(css_set, task_offset!(css_set_dfl_cgrp));
    let kn: u64 = kernel::read_or_zero(cgroup, task_offset!(cgroup_kn));
    kernel::read_or_zero(kn, task_offset!(kernfs_node_id))
}

/// All ones when `value` is above `floor`, zero otherwise, without a branch
/// (BPF has no conditional move: a comparison made into a value is a branch,
/// and a branch before the walk is two passes of the verifier through it).
#[inline(always)]
fn above(value: u64, floor: u64) -> u64 {
    // `floor - value` is negative exactly when `value` is above `floor`
    // (both are far below 2^63 here); its sign bit, spread.
    (floor.wrapping_sub(value).cast_signed() >> 63).cast_unsigned()
}

/// What ties a task's ancestors to its container: its mount namespace, and
/// its pid namespace and cgroup unless they are everyone's.
struct Membership {
    mnt_ns: u64,
    /// The task's pid namespace; all ones in the initial one.
    pid_ns: u64,
    /// The task's cgroup v2 group; all ones in the root group (hosts
    /// without cgroup v2 have every task there).
    cgroup: u64,
}

/// The cgroup v2 root's id.
const ROOT_CGROUP: u64 = 1;

#[inline(always)]
fn membership(task: u64, offsets: &KernelOffsets) -> Membership {
    let (pid_ns, level) = pid_ns_of(task);
    let cgroup = cgroup_of(task);
    Membership {
        mnt_ns: mnt_ns_of(task, offsets),
        pid_ns: pid_ns | !above(u64::from(level), 0),
        cgroup: cgroup | !above(cgroup, ROOT_CGROUP),
    }
}

/// Walks up from `task` through its ancestors in its container, calling
/// `each(step, ancestor)` for each, nearest first; returns the entry leader
/// (the topmost of the task and those ancestors), or 0 when the walk found
/// none (a host process, a deeper tree).
///
/// An ancestor is in the container when it shares the task's mount
/// namespace, its pid namespace or its cgroup: one of the three is not
/// enough, since a container process can leave the first two on its own
/// (`unshare -Urm`, or `setns` into a pid namespace it made), and would then
/// look like the first process of an exec session, whose parent (the
/// runtime's shim or monitor) is outside all three. Leaving its cgroup
/// takes write access to the cgroup tree, which only privileged containers
/// have.
///
/// Every read is [`kernel::read_or_zero`] (a null task reads as zeroes) and
/// nothing after the walk depends on where it stopped, so the verifier
/// checks each step of the walk about once: with a branch per failed read
/// and the count decided after the loop, the walk's states multiplied into
/// most of the exec programs' load time (seconds each under emulation).
#[inline(always)]
fn walk(task: u64, offsets: &KernelOffsets, mut each: impl FnMut(usize, u64)) -> u64 {
    let member = membership(task, offsets);
    let mut child = task;
    let mut leader = 0u64;
    if member.mnt_ns != 0 {
        for step in 0..LINEAGE_WALK_MAX {
            let parent: u64 = kernel::read_or_zero(child, offsets.task_real_parent);
            // `init_task` is its own parent.
            if parent == 0 || parent == child {
                break;
            }
            if mnt_ns_of(parent, offsets) != member.mnt_ns
                && pid_ns_of(parent).0 != member.pid_ns
                && cgroup_of(parent) != member.cgroup
            {
                leader = child;
                break;
            }
            each(step, parent);
            child = parent;
        }
    }
    leader
}

/// Whether the current task is in an exec session: its entry leader entered
/// the running container from outside (`kubectl exec`, `podman exec`) and is
/// not the container's first process (pid 1 of its pid namespace). A
/// container in the host's pid namespace (`hostPID`) has no pid 1 to tell
/// its first process by: never a session there.
///
/// A process an exec session left behind (orphaned, adopted by the
/// container's first process) counts as the container's own.
#[inline(always)]
pub(crate) fn in_exec_session(offsets: &KernelOffsets) -> bool {
    let leader = walk(kernel::current_task(), offsets, |_, _| {});
    let pid: u64 = kernel::read_or_zero(leader, task_offset!(task_thread_pid));
    let level: u32 = kernel::read_or_zero(pid, task_offset!(pid_level));
    let nspid: u32 = kernel::read_or_zero(upid(pid, level), task_offset!(upid_nr));
    level != 0 && nspid != 1
}

/// Fills the record's lineage: the parent's name, the ancestors in the
/// task's container ([`walk`]) and the entry leader.
///
/// Read here, while the task is in its exec or open, because the agent reads
/// the record later: a refused program's process is often gone by then (a
/// `kubectl exec` of a dropped binary ends with the refusal), and the walk
/// through `/proc` would find nothing to tell an exec session by.
///
/// # Safety
/// `event` must point at a reserved record owned by the caller.
#[inline(always)]
unsafe fn lineage(event: *mut DecisionEvent, offsets: &KernelOffsets) {
    let task = kernel::current_task();
    // SAFETY: per the contract; each place is written through raw pointers.
    unsafe {
        read_comm(
            &raw mut (*event).parent_comm,
            kernel::read_or_zero(task, offsets.task_real_parent),
        );
        (*event).ancestors_len = 0;
    }
    let leader = walk(task, offsets, |step, parent| {
        // `step` is a constant in each pass of the verifier through the
        // unrolled walk, so this is no branch to it.
        if step < LINEAGE_MAX {
            // SAFETY: `step` is in bounds of both arrays; per the contract.
            unsafe {
                (*event).ancestor_pids[step] = kernel::read_or_zero(parent, offsets.task_tgid);
                read_comm(&raw mut (*event).ancestor_comms[step], parent);
                (*event).ancestors_len = step as u32 + 1;
            }
        } else {
            // SAFETY: per the contract.
            unsafe { (*event).flags |= event_flags::ANCESTORS_TRUNCATED };
        }
    });
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
    let upid = upid(pid, level);
    let ns: u64 = kernel::read_or_zero(upid, task_offset!(upid_ns));
    (
        tgid,
        kernel::read_or_zero(upid, task_offset!(upid_nr)),
        kernel::read_or_zero(ns, task_offset!(pid_namespace_inum)),
    )
}

/// What a decision record says, apart from the task's own context.
struct Report {
    mnt_ns: u32,
    /// The file's `struct dentry *`, for the name.
    dentry: u64,
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
    /// Bits of `event_flags` the decision adds.
    flags: u32,
}

/// The rate limit of decision records: `None` when this one is suppressed
/// (counted), else how many of its key were suppressed before it.
///
/// The window's state is shared by every CPU and updated without atomics
/// (5.10 has no fetching atomic instructions): two CPUs deciding the same
/// key at once may both write a record where one was left in the window, or
/// lose one count of the carried number. The per-CPU counter of suppressed
/// records is exact.
#[inline(always)]
fn rate_limit(report: &Report, cgroup_id: u64, now: u64) -> Option<u32> {
    let config = CONFIG.load();
    if config.report_burst == 0 {
        return Some(0);
    }
    let key = ReportKey {
        cgroup_id,
        inode: report.ino,
        dev: report.dev,
        what: report.decision | report.reason << 8 | report.via << 16,
    };
    let Some(window) = REPORTED.get_ptr_mut(key) else {
        let fresh = ReportWindow {
            start_ns: now,
            reported: 1,
            suppressed: 0,
        };
        // A full table evicts the least recently used key.
        let _ = REPORTED.insert(key, fresh, 0);
        return Some(0);
    };
    // SAFETY: the pointer comes from a successful lookup; the value lives
    // until the entry is deleted, and a racing writer only changes numbers.
    unsafe {
        if now.wrapping_sub((*window).start_ns) >= config.report_window_ns {
            let carried = (*window).suppressed;
            (*window).start_ns = now;
            (*window).reported = 1;
            (*window).suppressed = 0;
            Some(carried)
        } else if (*window).reported < config.report_burst {
            (*window).reported += 1;
            let carried = (*window).suppressed;
            (*window).suppressed = 0;
            Some(carried)
        } else {
            (*window).suppressed += 1;
            count(counter::EVENTS_SUPPRESSED);
            None
        }
    }
}

/// Writes a decision record, unless the rate limit suppresses it. `filename`
/// is the `char *` path given to exec, absent for mappings and opens. A full
/// ring buffer is counted, never silent.
#[inline(always)]
fn report(report: &Report, filename: Option<u64>, offsets: &KernelOffsets) {
    // SAFETY: helpers without arguments, callable from every program type
    // that reports.
    let (now, cgroup_id) = unsafe { (bpf_ktime_get_boot_ns(), bpf_get_current_cgroup_id()) };
    let Some(suppressed) = rate_limit(report, cgroup_id, now) else {
        return;
    };
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
            boot_ns: now,
        };
        (*event).pid = pid_tgid as u32;
        (*event).tgid = (pid_tgid >> 32) as u32;
        (*event).ppid = kernel::current_parent_tgid(offsets).unwrap_or(0);
        (*event).uid = uid_gid as u32;
        (*event).gid = (uid_gid >> 32) as u32;
        (*event).mnt_ns = report.mnt_ns;
        (*event).cgroup_id = cgroup_id;
        (*event).inode = report.ino;
        (*event).dev = report.dev;
        (*event).decision = report.decision;
        (*event).reason = report.reason;
        (*event).backend = report.backend;
        (*event).layer = report.layer;
        (*event).via = report.via;
        (*event).rule = report.rule;
        (*event).suppressed = suppressed;

        let comm = (&raw mut (*event).comm).cast::<c_void>();
        if bpf_get_current_comm(comm, COMM_LEN as u32) < 0 {
            // Two plain stores: an array literal becomes a call to
            // `memset`, one more function frame on the stack, which the
            // script program's decision cannot spare beside the walk's
            // callback.
            // Volatile, or LLVM makes them one `memset` again.
            #[expect(
                clippy::cast_ptr_alignment,
                reason = "`comm` is at 96 in the 8-byte aligned record (pinned by the layout test)"
            )]
            let comm = (&raw mut (*event).comm).cast::<u64>();
            comm.write_volatile(0);
            comm.add(1).write_volatile(0);
        }

        let name = kernel::read::<u64>(report.dentry, offsets.dentry_name).unwrap_or(0);
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
            (*event).flags = report.flags
                | if len as usize == EXEC_PATH_LEN - 1 {
                    event_flags::PATH_TRUNCATED
                } else {
                    0
                };
        } else {
            (*event).path_len = 0;
            (*event).flags = report.flags | event_flags::NO_PATH;
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
            dentry: drift.dentry,
            ino: drift.ino,
            dev: drift.dev,
            reason: reason::DRIFT,
            layer: drift.layer,
            via: drift.via,
            rule: drift.policy,
            decision,
            backend,
            flags: drift.flags,
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
            dentry: hit.dentry,
            ino: hit.id.ino,
            dev: hit.id.dev,
            reason: reason::VSHIELD,
            // Slot 0 is no vShield: a check a failed read left undecided.
            layer: if hit.rule.rule == 0 { layer::READ_ERROR } else { 0 },
            via: hit.via,
            rule: hit.rule.rule,
            decision,
            backend,
            flags: 0,
        },
        filename,
        offsets,
    );
}

/// Counts and reports a drift decision. What the kernel could not decide
/// (`READ_ERROR`, `UNCHECKED_MOUNT`) has counters of its own.
#[inline(always)]
pub(crate) fn decided(
    drift: &Drift,
    filename: Option<u64>,
    offsets: &KernelOffsets,
    decision: u32,
    backend: u32,
) {
    if drift.layer < layer::READ_ERROR {
        count(counter::DRIFT_DETECTED);
    }
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
