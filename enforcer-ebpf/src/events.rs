//! Audit records written to the ring buffer.

use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    bpf_ktime_get_boot_ns,
    generated::{bpf_get_current_comm, bpf_probe_read_kernel_str},
};
use enforcer_common::{
    COMM_LEN, EXEC_PATH_LEN, EventHeader, ExecEvent, KernelOffsets, counter, event_kind,
    exec_flags, reason,
};

use crate::{
    drift::Drift,
    kernel,
    maps::{EVENTS, count},
};

/// Reports a drift decision. A full ring buffer is counted, never silent.
#[inline(always)]
pub(crate) fn exec_drift(
    drift: &Drift,
    bprm: u64,
    offsets: &KernelOffsets,
    decision: u32,
    backend: u32,
) {
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        count(counter::EVENTS_LOST);
        return;
    };
    let event = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // The reserved record is uninitialised ring memory: every field is written
    // through raw places, never through references.
    // SAFETY: `event` points at a reserved record of `size_of::<ExecEvent>()`
    // bytes that this program owns until submit.
    unsafe {
        (*event).header = EventHeader {
            kind: event_kind::EXEC,
            pad: 0,
            boot_ns: bpf_ktime_get_boot_ns(),
        };
        (*event).pid = pid_tgid as u32;
        (*event).tgid = (pid_tgid >> 32) as u32;
        (*event).ppid = kernel::current_parent_tgid(offsets).unwrap_or(0);
        (*event).uid = uid_gid as u32;
        (*event).gid = (uid_gid >> 32) as u32;
        (*event).mnt_ns = drift.mnt_ns;
        (*event).cgroup_id = bpf_get_current_cgroup_id();
        (*event).inode = drift.ino;
        (*event).dev = drift.dev;
        (*event).decision = decision;
        (*event).reason = reason::DRIFT;
        (*event).backend = backend;
        (*event).layer = drift.layer;
        (*event).pad = 0;

        let comm = (&raw mut (*event).comm).cast::<c_void>();
        if bpf_get_current_comm(comm, COMM_LEN as u32) < 0 {
            (*event).comm = [0; COMM_LEN];
        }

        let path = (&raw mut (*event).path).cast::<c_void>();
        let copied = match kernel::read::<u64>(bprm, offsets.binprm_filename) {
            Ok(filename) => {
                bpf_probe_read_kernel_str(path, EXEC_PATH_LEN as u32, filename as *const c_void)
            }
            Err(_) => -1,
        };
        // The helper returns the bytes copied including the NUL, or a
        // negative error.
        if let Ok(copied @ 1..) = u32::try_from(copied) {
            (*event).path_len = copied - 1;
            (*event).flags = if copied as usize == EXEC_PATH_LEN {
                exec_flags::PATH_TRUNCATED
            } else {
                0
            };
        } else {
            (*event).path[0] = 0;
            (*event).path_len = 0;
            (*event).flags = exec_flags::PATH_UNREADABLE;
        }
    }
    entry.submit(0);
}
