//! Policy: what the agent enforces, compiled into kernel map entries.
//!
//! Policy flows one way: policy -> [`compile`] (pure) -> [`apply`] (map
//! writes). Drift settings compile here; vShields compile in [`vshield`],
//! after their paths are resolved into file identities.

pub mod document;
pub mod load;
pub mod paths;
pub mod vshield;

use std::fmt;

use aya::{Ebpf, maps::Array};
use enforcer_common::{
    DriftSettings, PATH_DFA_STATES_MAX, PathDfaBank, PathDfaState, drift_flags, mode,
};

use crate::maps::{self, MapAccessError};

pub use paths::PathGlobError;

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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriftRule {
    pub mode: Mode,
    /// Allow executing memfd files (`fexecve`).
    pub allow_memfd: bool,
    /// Allow running files from writable mounts other than the container's
    /// root filesystem (tmpfs such as /dev/shm, emptyDir, volumes).
    pub allow_writable_mounts: bool,
    /// Globs over a file's path in its container: matching files may run
    /// although they are not from the image (see [`paths`]).
    pub allowed_paths: Vec<String>,
}

impl DriftRule {
    /// Everything that is not from the image is drift.
    pub const fn strict(mode: Mode) -> Self {
        Self {
            mode,
            allow_memfd: false,
            allow_writable_mounts: false,
            allowed_paths: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Name reported in events as `rule.ruleset`.
    pub name: String,
    /// Applies to every container.
    pub drift: DriftRule,
    /// Virtual patches, in policy order.
    pub vshields: Vec<vshield::VShield>,
}

impl Policy {
    /// The policy `enforcer run` enforces without a policy file: drift
    /// prevention for every container.
    pub fn builtin(drift: DriftRule) -> Self {
        Self {
            name: "builtin-default".to_owned(),
            drift,
            vshields: Vec::new(),
        }
    }

    /// Whether a vShield selects containers by their pods' labels.
    pub fn selects_pod_labels(&self) -> bool {
        self.vshields.iter().any(|shield| {
            matches!(&shield.scope, vshield::Scope::Selected(selector) if !selector.pod_labels.is_empty())
        })
    }
}

/// Kernel map entries for a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    /// `DRIFT_POLICY[0]`, without the automaton's bank (chosen by [`apply`]).
    pub drift_all_containers: DriftSettings,
    /// The allowed-path automaton; empty when no path is allowed.
    pub path_dfa: Vec<PathDfaState>,
}

/// Compiles a policy into map entries. Pure: no I/O, no kernel.
///
/// # Errors
/// An allowed path that is not a valid glob, or too many of them.
pub fn compile(policy: &Policy) -> Result<Compiled, PathGlobError> {
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
    let path_dfa = if policy.drift.allowed_paths.is_empty() {
        Vec::new()
    } else {
        flags |= drift_flags::ALLOW_PATHS;
        paths::compile(&policy.drift.allowed_paths)?
    };
    Ok(Compiled {
        drift_all_containers: DriftSettings {
            mode,
            flags,
            path_dfa_bank: 0,
            pad: 0,
        },
        path_dfa,
    })
}

/// Writes compiled entries into the kernel maps. The automaton goes into
/// the bank the programs are not reading; the settings that switch to it
/// are one atomic map update, so programs see the old policy or the new
/// one, never a mix or a gap.
pub fn apply(ebpf: &mut Ebpf, compiled: &Compiled) -> Result<(), MapAccessError> {
    let map_error = |map| move |source| MapAccessError::Map { map, source };
    let mut settings = compiled.drift_all_containers;
    {
        let drift: Array<_, DriftSettings> = maps::borrow(ebpf, maps::DRIFT_POLICY)?;
        let current = drift
            .get(&ALL_CONTAINERS, 0)
            .map_err(map_error(maps::DRIFT_POLICY))?;
        settings.path_dfa_bank = 1 - current.path_dfa_bank.min(1);
    }
    if !compiled.path_dfa.is_empty() {
        // 516 KiB: on the heap. States past the automaton's stay DEAD.
        let mut bank = vec![PathDfaState::default(); PATH_DFA_STATES_MAX as usize];
        if compiled.path_dfa.len() > bank.len() {
            return Err(MapAccessError::PathDfaTooLarge(compiled.path_dfa.len()));
        }
        for (slot, state) in bank.iter_mut().zip(&compiled.path_dfa) {
            *slot = *state;
        }
        let Ok(bank) = <&PathDfaBank>::try_from(bank.as_slice()) else {
            return Err(MapAccessError::PathDfaTooLarge(compiled.path_dfa.len()));
        };
        let mut dfa: Array<_, PathDfaBank> = maps::borrow_mut(ebpf, maps::PATH_DFA)?;
        dfa.set(settings.path_dfa_bank, bank, 0)
            .map_err(map_error(maps::PATH_DFA))?;
    }
    let mut drift: Array<_, DriftSettings> = maps::borrow_mut(ebpf, maps::DRIFT_POLICY)?;
    drift
        .set(ALL_CONTAINERS, settings, 0)
        .map_err(map_error(maps::DRIFT_POLICY))
}

#[cfg(test)]
mod tests {
    use enforcer_common::{drift_flags, mode};

    use super::*;

    #[test]
    fn builtin_policy_enforces_drift_for_all_containers() {
        let compiled = compile(&Policy::builtin(DriftRule::strict(Mode::Enforce))).unwrap();
        assert_eq!(compiled.drift_all_containers.mode, mode::ENFORCE);
        assert_eq!(compiled.drift_all_containers.flags, 0);
        assert!(compiled.path_dfa.is_empty());
    }

    #[test]
    fn audit_mode_compiles_to_audit() {
        let compiled = compile(&Policy::builtin(DriftRule::strict(Mode::Audit))).unwrap();
        assert_eq!(compiled.drift_all_containers.mode, mode::AUDIT);
    }

    #[test]
    fn allowances_compile_to_flags() {
        let rule = DriftRule {
            allow_memfd: true,
            ..DriftRule::strict(Mode::Enforce)
        };
        assert_eq!(
            compile(&Policy::builtin(rule.clone()))
                .unwrap()
                .drift_all_containers
                .flags,
            drift_flags::ALLOW_MEMFD
        );
        let rule = DriftRule {
            allow_writable_mounts: true,
            ..rule
        };
        assert_eq!(
            compile(&Policy::builtin(rule.clone()))
                .unwrap()
                .drift_all_containers
                .flags,
            drift_flags::ALLOW_MEMFD | drift_flags::ALLOW_WRITABLE_MOUNTS
        );
        let rule = DriftRule {
            allowed_paths: vec!["/opt/plugins/*.so".to_owned()],
            ..rule
        };
        let compiled = compile(&Policy::builtin(rule)).unwrap();
        assert_eq!(
            compiled.drift_all_containers.flags,
            drift_flags::ALLOW_MEMFD
                | drift_flags::ALLOW_WRITABLE_MOUNTS
                | drift_flags::ALLOW_PATHS
        );
        assert!(paths::accepts(&compiled.path_dfa, b"/opt/plugins/a.so"));
    }

    #[test]
    fn an_invalid_allowed_path_fails_compilation() {
        let rule = DriftRule {
            allowed_paths: vec!["opt/*".to_owned()],
            ..DriftRule::strict(Mode::Enforce)
        };
        assert!(matches!(
            compile(&Policy::builtin(rule)),
            Err(PathGlobError::NotAbsolute { .. })
        ));
    }
}
