//! The kernel programs' per-CPU counters.

use aya::maps::{MapData, MapError, PerCpuArray};
use enforcer_common::counter;

/// Sums over all CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub exec_checked: u64,
    pub drift_detected: u64,
    pub read_errors: u64,
    pub events_lost: u64,
    pub signal_failed: u64,
    pub written_table_full: u64,
    pub allowed_by_path: u64,
    pub path_unresolved: u64,
    pub script_unresolved: u64,
    pub vshield_hits: u64,
    pub events_suppressed: u64,
    pub unchecked_mounts: u64,
}

impl KernelCounters {
    /// Each counter with its name (`metrics`: `enforcer_kernel_NAME_total`,
    /// `enforcer status`: `kernel.NAME`) and what it counts.
    pub const fn named(&self) -> [(&'static str, &'static str, u64); 12] {
        [
            (
                "exec_checked",
                "Execs of container processes the kernel programs decided.",
                self.exec_checked,
            ),
            (
                "drift_detected",
                "Drift found by the kernel programs (blocked, killed or audited).",
                self.drift_detected,
            ),
            (
                "vshield_hits",
                "Uses of shielded files the kernel programs decided.",
                self.vshield_hits,
            ),
            (
                "events_lost",
                "Events the kernel could not put in the full ring buffer.",
                self.events_lost,
            ),
            (
                "events_suppressed",
                "Decision records the rate limit left out (the decisions were carried out).",
                self.events_suppressed,
            ),
            (
                "read_errors",
                "Checks a failed kernel read left undecided (each reported; refused for container processes in \
                 enforce mode).",
                self.read_errors,
            ),
            (
                "unchecked_mounts",
                "Container files run from read-only mounts the kernel could not check for a writable mount of \
                 the same filesystem (before 5.17; allowed, each reported).",
                self.unchecked_mounts,
            ),
            (
                "signal_failed",
                "SIGKILLs the signal backend could not send (the program ran).",
                self.signal_failed,
            ),
            (
                "drift_allowed_by_path",
                "Drift files run because an allowed path matched.",
                self.allowed_by_path,
            ),
            (
                "path_unresolved",
                "Drift files whose path was too long or deep to match allowed paths.",
                self.path_unresolved,
            ),
            (
                "script_unresolved",
                "Scripts the signal backend could not find (ran, not decided).",
                self.script_unresolved,
            ),
            (
                "written_table_full",
                "Written files not marked because the tracking table was full.",
                self.written_table_full,
            ),
        ]
    }
}

pub fn read(map: &PerCpuArray<MapData, u64>) -> Result<KernelCounters, MapError> {
    let sum = |index: u32| -> Result<u64, MapError> { Ok(map.get(&index, 0)?.iter().sum()) };
    Ok(KernelCounters {
        exec_checked: sum(counter::EXEC_CHECKED)?,
        drift_detected: sum(counter::DRIFT_DETECTED)?,
        read_errors: sum(counter::READ_ERRORS)?,
        events_lost: sum(counter::EVENTS_LOST)?,
        signal_failed: sum(counter::SIGNAL_FAILED)?,
        written_table_full: sum(counter::WRITTEN_TABLE_FULL)?,
        allowed_by_path: sum(counter::DRIFT_ALLOWED_BY_PATH)?,
        path_unresolved: sum(counter::PATH_UNRESOLVED)?,
        script_unresolved: sum(counter::SCRIPT_UNRESOLVED)?,
        vshield_hits: sum(counter::VSHIELD_HITS)?,
        events_suppressed: sum(counter::EVENTS_SUPPRESSED)?,
        unchecked_mounts: sum(counter::UNCHECKED_MOUNTS)?,
    })
}
