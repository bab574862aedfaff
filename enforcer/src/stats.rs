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
    })
}
