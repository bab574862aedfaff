//! Policy: what the agent enforces, compiled into kernel map entries.
//!
//! Policy flows one way: policy -> [`compile`] (pure) -> [`apply`] (map
//! writes). Today the only policy is the built-in default (drift prevention
//! for every container); policy files and selectors build on the same stages.

use std::fmt;

use aya::{Ebpf, maps::Array};
use enforcer_common::{DriftSettings, drift_flags, mode};

use crate::maps::{self, MapAccessError};

/// Index of the settings that apply to every container.
const ALL_CONTAINERS: u32 = 0;

/// What happens when a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Refuse (or kill) and report.
    Enforce,
    /// Allow and report what enforce would have refused.
    Audit,
}

impl Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Audit => "audit",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Drift prevention: containers may only run files from their image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriftRule {
    pub mode: Mode,
    /// Allow executing memfd files (`fexecve`).
    pub allow_memfd: bool,
    /// Allow running files from writable mounts other than the container's
    /// root filesystem (tmpfs such as /dev/shm, emptyDir, volumes).
    pub allow_writable_mounts: bool,
}

impl DriftRule {
    /// Everything that is not from the image is drift.
    pub const fn strict(mode: Mode) -> Self {
        Self {
            mode,
            allow_memfd: false,
            allow_writable_mounts: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Name reported in events as `rule.ruleset`.
    pub name: String,
    /// Applies to every container.
    pub drift: DriftRule,
}

impl Policy {
    /// The policy `enforcer run` enforces without a policy file: drift
    /// prevention for every container.
    pub fn builtin(drift: DriftRule) -> Self {
        Self {
            name: "builtin-default".to_owned(),
            drift,
        }
    }
}

/// Kernel map entries for a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compiled {
    /// `DRIFT_POLICY[0]`.
    pub drift_all_containers: DriftSettings,
}

/// Compiles a policy into map entries. Pure: no I/O, no kernel.
pub fn compile(policy: &Policy) -> Compiled {
    let mode = match policy.drift.mode {
        Mode::Enforce => mode::ENFORCE,
        Mode::Audit => mode::AUDIT,
    };
    let mut flags = 0;
    if policy.drift.allow_memfd {
        flags |= drift_flags::ALLOW_MEMFD;
    }
    if policy.drift.allow_writable_mounts {
        flags |= drift_flags::ALLOW_WRITABLE_MOUNTS;
    }
    Compiled {
        drift_all_containers: DriftSettings { mode, flags },
    }
}

/// Writes compiled entries into the kernel maps. Each entry is one atomic map
/// update, so programs see either the old or the new value, never a gap.
pub fn apply(ebpf: &mut Ebpf, compiled: &Compiled) -> Result<(), MapAccessError> {
    let mut drift: Array<_, DriftSettings> = maps::borrow_mut(ebpf, maps::DRIFT_POLICY)?;
    drift
        .set(ALL_CONTAINERS, compiled.drift_all_containers, 0)
        .map_err(|source| MapAccessError::Map {
            map: maps::DRIFT_POLICY,
            source,
        })
}

#[cfg(test)]
mod tests {
    use enforcer_common::{drift_flags, mode};

    use super::*;

    #[test]
    fn builtin_policy_enforces_drift_for_all_containers() {
        let compiled = compile(&Policy::builtin(DriftRule::strict(Mode::Enforce)));
        assert_eq!(compiled.drift_all_containers.mode, mode::ENFORCE);
        assert_eq!(compiled.drift_all_containers.flags, 0);
    }

    #[test]
    fn audit_mode_compiles_to_audit() {
        let compiled = compile(&Policy::builtin(DriftRule::strict(Mode::Audit)));
        assert_eq!(compiled.drift_all_containers.mode, mode::AUDIT);
    }

    #[test]
    fn allowances_compile_to_flags() {
        let rule = DriftRule {
            allow_memfd: true,
            ..DriftRule::strict(Mode::Enforce)
        };
        assert_eq!(
            compile(&Policy::builtin(rule)).drift_all_containers.flags,
            drift_flags::ALLOW_MEMFD
        );
        let rule = DriftRule {
            allow_writable_mounts: true,
            ..rule
        };
        assert_eq!(
            compile(&Policy::builtin(rule)).drift_all_containers.flags,
            drift_flags::ALLOW_MEMFD | drift_flags::ALLOW_WRITABLE_MOUNTS
        );
    }
}
