//! The kernel object's maps, by name, and typed access to them.

use aya::{
    Ebpf,
    maps::{Map, MapError},
};

/// Audit records (ring buffer).
pub const EVENTS: &str = "EVENTS";
/// Per-CPU counters, indexed by `enforcer_common::counter`.
pub const COUNTERS: &str = "COUNTERS";
/// Whether writes on roots that are not overlayfs are tracked (array of
/// one `enforcer_common::tracking` value).
pub const TRACKING: &str = "TRACKING";
/// Drift settings (array; index 0: every container).
pub const DRIFT_POLICY: &str = "DRIFT_POLICY";
/// Allowed-path automata, two banks (`enforcer_common::PathDfaBank` each).
pub const PATH_DFA: &str = "PATH_DFA";
/// Files vShields shield (hash: `FileId` -> operation bits).
pub const VSHIELD_FILES: &str = "VSHIELD_FILES";
/// vShield rules (hash: `VShieldKey` -> `VShieldRule`).
pub const VSHIELD_RULES: &str = "VSHIELD_RULES";
/// Per-CPU hit counters, indexed by vShield slot.
pub const VSHIELD_HITS: &str = "VSHIELD_HITS";
/// The vShield generation (array of one u32): one more after every change
/// to `VSHIELD_FILES`, which tells the open hook its remembered answers are
/// stale.
pub const VSHIELD_GENERATION: &str = "VSHIELD_GENERATION";
/// Where the identity program leaves its answer (array of one `FileId`).
pub const RESOLVED_ID: &str = "RESOLVED_ID";
/// Cgroup id of a known container -> its vShield scope.
pub const CONTAINER_SCOPES: &str = "CONTAINER_SCOPES";
pub const CONTAINER_DRIFT: &str = "CONTAINER_DRIFT";
/// Each container's root filesystem and mount namespace as first seen (LRU
/// hash: cgroup id -> `ContainerRoot`); the kernel fills it, the agent adds
/// the containers already running when it starts.
pub const CONTAINER_ROOTS: &str = "CONTAINER_ROOTS";
/// Files written in containers on roots that are not overlayfs.
pub const WRITTEN_FILES: &str = "WRITTEN_FILES";
/// The rate limit of decision records (LRU hash: `ReportKey` ->
/// `ReportWindow`).
pub const REPORTED: &str = "REPORTED";

#[derive(Debug, thiserror::Error)]
pub enum MapAccessError {
    #[error("the kernel object has no map {0}")]
    Missing(&'static str),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map {map}: {source}")]
    Io {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the allowed-path automaton has {0} states, more than a bank of the map holds")]
    PathDfaTooLarge(usize),
}

/// Takes map `name` out of the object, typed. The map outlives the object:
/// the audit pipeline keeps reading after the programs are detached.
pub fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, MapAccessError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(MapAccessError::Missing(name))?;
    T::try_from(map).map_err(|source| MapAccessError::Map { map: name, source })
}

/// Borrows map `name` from the object, typed.
pub fn borrow_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, MapAccessError>
where
    T: TryFrom<&'a mut Map, Error = MapError>,
{
    let map = ebpf.map_mut(name).ok_or(MapAccessError::Missing(name))?;
    T::try_from(map).map_err(|source| MapAccessError::Map { map: name, source })
}

/// Borrows map `name` from the object, typed, read-only.
pub fn borrow<'a, T>(ebpf: &'a Ebpf, name: &'static str) -> Result<T, MapAccessError>
where
    T: TryFrom<&'a Map, Error = MapError>,
{
    let map = ebpf.map(name).ok_or(MapAccessError::Missing(name))?;
    T::try_from(map).map_err(|source| MapAccessError::Map { map: name, source })
}
