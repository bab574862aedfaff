//! Policy: what the agent enforces, compiled into kernel map entries.
//!
//! Policy flows one way: policy -> [`compile`] (pure) -> [`apply`] (map
//! writes). Drift settings compile here; vShields compile in [`vshield`],
//! after their paths are resolved into file identities.

pub mod document;
pub mod load;
pub mod paths;
pub mod vshield;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use aya::{Ebpf, maps::Array};
use enforcer_common::{
    DRIFT_SELECTED_MAX, DriftSettings, PATH_DFA_STATES_MAX, PathDfaBank, PathDfaState, drift_flags,
    drift_policy, mode,
};

use crate::{
    container::kubernetes::ContainerKind,
    maps::{self, MapAccessError},
};

pub use paths::PathGlobError;

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
    /// Drift in exec sessions (a process under one that entered the running
    /// container from outside: `kubectl exec`) is audited where `mode`
    /// enforces.
    pub audit_exec_sessions: bool,
}

impl DriftRule {
    /// Everything that is not from the image is drift.
    pub const fn strict(mode: Mode) -> Self {
        Self {
            mode,
            allow_memfd: false,
            allow_writable_mounts: false,
            allowed_paths: Vec::new(),
            audit_exec_sessions: false,
        }
    }
}

/// Which containers a vShield or a `DriftPolicy` applies to: each part
/// given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContainerSelector {
    /// Globs over the image's `name:tag` and `name@digest` (any may match;
    /// see [`crate::container::ImageGlobs`]).
    pub images: Vec<String>,
    /// Globs over the pod's namespace (any may match).
    pub namespaces: Vec<String>,
    /// Labels the pod must all carry with these values.
    pub pod_labels: BTreeMap<String, String>,
    /// How the container came to be in its pod (any may match).
    pub container_kinds: BTreeSet<ContainerKind>,
}

impl ContainerSelector {
    /// Containers whose image matches one of `globs`.
    pub fn images(globs: &[&str]) -> Self {
        Self {
            images: globs.iter().map(|glob| (*glob).to_owned()).collect(),
            ..Self::default()
        }
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.images.is_empty() {
            parts.push(format!("images {}", self.images.join(",")));
        }
        if !self.namespaces.is_empty() {
            parts.push(format!("namespaces {}", self.namespaces.join(",")));
        }
        if !self.pod_labels.is_empty() {
            let labels: Vec<String> = self
                .pod_labels
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            parts.push(format!("podLabels {}", labels.join(",")));
        }
        if !self.container_kinds.is_empty() {
            let kinds: Vec<&str> = self
                .container_kinds
                .iter()
                .map(|kind| kind.as_str())
                .collect();
            parts.push(format!("containerKinds {}", kinds.join(",")));
        }
        parts.join("; ")
    }
}

/// A `DriftPolicy` for the containers its selector picks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectedDrift {
    /// `metadata.name`: the `rule.ruleset` of its events.
    pub name: String,
    pub selector: ContainerSelector,
    pub rule: DriftRule,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Name reported in events as `rule.ruleset`: that of the `DriftPolicy`
    /// for every container.
    pub name: String,
    /// Applies to every container no selected `DriftPolicy` selects.
    pub drift: DriftRule,
    /// `DriftPolicy`s with selectors, in policy order: the first that
    /// selects a container applies to it.
    pub selected_drift: Vec<SelectedDrift>,
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
            selected_drift: Vec::new(),
            vshields: Vec::new(),
        }
    }

    /// Whether a vShield or a `DriftPolicy` selects containers by what only
    /// the Kubernetes API tells: their pods' labels, or their kinds.
    pub fn selects_from_the_api(&self) -> bool {
        let from_api = |selector: &ContainerSelector| {
            !selector.pod_labels.is_empty() || !selector.container_kinds.is_empty()
        };
        self.vshields.iter().any(
            |shield| matches!(&shield.scope, vshield::Scope::Selected(selector) if from_api(selector)),
        ) || self
            .selected_drift
            .iter()
            .any(|selected| from_api(&selected.selector))
    }
}

/// The `rule.ruleset` of drift events of containers the agent has not
/// placed yet (under the strictest of all `DriftPolicy`s).
pub const UNKNOWN_CONTAINER_RULESET: &str = "unknown-container";

/// Kernel map entries for a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    /// `DRIFT_POLICY[ALL_CONTAINERS]`, without the automaton's bank (chosen
    /// by [`apply`]).
    pub drift_all_containers: DriftSettings,
    /// `DRIFT_POLICY[UNKNOWN]`: the strictest of all.
    pub drift_unknown: DriftSettings,
    /// The selected `DriftPolicy`s' settings, in policy order.
    pub drift_selected: Vec<DriftSettings>,
    /// The allowed-path automaton of all of them (bit 0: every container,
    /// bit `1 + i`: `drift_selected[i]`); empty when no path is allowed.
    pub path_dfa: Vec<PathDfaState>,
}

fn settings(rule: &DriftRule, bit: u32) -> DriftSettings {
    let mut flags = 0;
    if rule.allow_memfd {
        flags |= drift_flags::ALLOW_MEMFD;
    }
    if rule.allow_writable_mounts {
        flags |= drift_flags::ALLOW_WRITABLE_MOUNTS;
    }
    if !rule.allowed_paths.is_empty() {
        flags |= drift_flags::ALLOW_PATHS;
    }
    if rule.audit_exec_sessions {
        flags |= drift_flags::AUDIT_EXEC_SESSIONS;
    }
    DriftSettings {
        mode: match rule.mode {
            Mode::Enforce => mode::ENFORCE,
            Mode::Audit => mode::AUDIT,
        },
        flags,
        path_dfa_bank: 0,
        path_mask: if rule.allowed_paths.is_empty() {
            0
        } else {
            1 << bit
        },
    }
}

/// Compiles a policy into map entries. Pure: no I/O, no kernel.
///
/// # Errors
/// An allowed path that is not a valid glob, too many of them, or more
/// selected `DriftPolicy`s than the kernel's map holds.
pub fn compile(policy: &Policy) -> Result<Compiled, PathGlobError> {
    if policy.selected_drift.len() > DRIFT_SELECTED_MAX as usize {
        return Err(PathGlobError::TooManySets {
            sets: policy.selected_drift.len() + 1,
        });
    }
    let rules: Vec<&DriftRule> = std::iter::once(&policy.drift)
        .chain(policy.selected_drift.iter().map(|selected| &selected.rule))
        .collect();
    let sets: Vec<&[String]> = rules
        .iter()
        .map(|rule| rule.allowed_paths.as_slice())
        .collect();
    let path_dfa = paths::compile_sets(&sets)?;
    let all: Vec<DriftSettings> = rules
        .iter()
        .zip(0..)
        .map(|(rule, bit)| settings(rule, bit))
        .collect();
    // The strictest of all: what any of them blocks is blocked, an
    // allowance holds only where every one allows it (a path must be
    // accepted by every set).
    let flags = all.iter().fold(u32::MAX, |flags, one| flags & one.flags);
    let drift_unknown = DriftSettings {
        mode: if all.iter().any(|one| one.mode == mode::ENFORCE) {
            mode::ENFORCE
        } else {
            mode::AUDIT
        },
        flags,
        path_dfa_bank: 0,
        path_mask: if flags & drift_flags::ALLOW_PATHS == 0 {
            0
        } else {
            all.iter().fold(0, |mask, one| mask | one.path_mask)
        },
    };
    Ok(Compiled {
        drift_all_containers: all[0],
        drift_unknown,
        drift_selected: all[1..].to_vec(),
        path_dfa,
    })
}

/// The `DRIFT_POLICY` index of each `DriftPolicy` once [`apply`] wrote them
/// into `base`: every container's, then the selected ones' in order.
pub fn drift_indices(policy: &Policy, base: u32) -> BTreeMap<u32, String> {
    // Without selected DriftPolicies the strictest of all is the one for
    // every container (and containers the agent cannot place, as on hosts
    // without cgroup v2, are under it by its name).
    let unknown = if policy.selected_drift.is_empty() {
        policy.name.clone()
    } else {
        UNKNOWN_CONTAINER_RULESET.to_owned()
    };
    let mut names = BTreeMap::from([
        (drift_policy::ALL_CONTAINERS, policy.name.clone()),
        (drift_policy::UNKNOWN, unknown),
    ]);
    names.extend(
        policy
            .selected_drift
            .iter()
            .zip(base..)
            .map(|(selected, index)| (index, selected.name.clone())),
    );
    names
}

/// Writes compiled entries into the kernel maps; returns the index of the
/// first selected `DriftPolicy` (see [`drift_policy::FIRST_SELECTED`]).
///
/// The automaton goes into the bank the programs are not reading, the
/// selected `DriftPolicy`s into the bank of indices no container points at
/// (the containers are pointed at them afterwards, see
/// [`crate::active::ActiveVShields::set_drift`]); the settings for every
/// container and for unknown containers switch in one atomic map update
/// each, so programs see the old policy or the new one, never a mix or a
/// gap.
pub fn apply(ebpf: &mut Ebpf, compiled: &Compiled) -> Result<u32, MapAccessError> {
    let map_error = |map| move |source| MapAccessError::Map { map, source };
    let bank = {
        let drift: Array<_, DriftSettings> = maps::borrow(ebpf, maps::DRIFT_POLICY)?;
        let current = drift
            .get(&drift_policy::ALL_CONTAINERS, 0)
            .map_err(map_error(maps::DRIFT_POLICY))?;
        1 - current.path_dfa_bank.min(1)
    };
    if !compiled.path_dfa.is_empty() {
        // 516 KiB: on the heap. States past the automaton's stay DEAD.
        let mut states = vec![PathDfaState::default(); PATH_DFA_STATES_MAX as usize];
        if compiled.path_dfa.len() > states.len() {
            return Err(MapAccessError::PathDfaTooLarge(compiled.path_dfa.len()));
        }
        for (slot, state) in states.iter_mut().zip(&compiled.path_dfa) {
            *slot = *state;
        }
        let Ok(states) = <&PathDfaBank>::try_from(states.as_slice()) else {
            return Err(MapAccessError::PathDfaTooLarge(compiled.path_dfa.len()));
        };
        let mut dfa: Array<_, PathDfaBank> = maps::borrow_mut(ebpf, maps::PATH_DFA)?;
        dfa.set(bank, states, 0)
            .map_err(map_error(maps::PATH_DFA))?;
    }
    let base = drift_policy::FIRST_SELECTED + bank * DRIFT_SELECTED_MAX;
    let in_bank = |settings: &DriftSettings| DriftSettings {
        path_dfa_bank: bank,
        ..*settings
    };
    let mut drift: Array<_, DriftSettings> = maps::borrow_mut(ebpf, maps::DRIFT_POLICY)?;
    for (settings, index) in compiled.drift_selected.iter().zip(base..) {
        drift
            .set(index, in_bank(settings), 0)
            .map_err(map_error(maps::DRIFT_POLICY))?;
    }
    for (index, settings) in [
        (drift_policy::UNKNOWN, &compiled.drift_unknown),
        (drift_policy::ALL_CONTAINERS, &compiled.drift_all_containers),
    ] {
        drift
            .set(index, in_bank(settings), 0)
            .map_err(map_error(maps::DRIFT_POLICY))?;
    }
    Ok(base)
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
    fn exec_sessions_are_audited_under_the_strictest_policy_only_if_every_one_audits_them() {
        let sessions = DriftRule {
            audit_exec_sessions: true,
            ..DriftRule::strict(Mode::Enforce)
        };
        let selected = |rule: &DriftRule| SelectedDrift {
            name: "debuggable".to_owned(),
            selector: ContainerSelector::images(&["tools:*"]),
            rule: rule.clone(),
        };
        let compiled = compile(&Policy {
            selected_drift: vec![selected(&DriftRule::strict(Mode::Enforce))],
            ..Policy::builtin(sessions.clone())
        })
        .unwrap();
        assert_eq!(
            compiled.drift_all_containers.flags,
            drift_flags::AUDIT_EXEC_SESSIONS
        );
        assert_eq!(compiled.drift_selected[0].flags, 0);
        assert_eq!(compiled.drift_unknown.flags, 0);
        let compiled = compile(&Policy {
            selected_drift: vec![selected(&sessions)],
            ..Policy::builtin(sessions.clone())
        })
        .unwrap();
        assert_eq!(
            compiled.drift_unknown.flags,
            drift_flags::AUDIT_EXEC_SESSIONS
        );
    }

    #[test]
    fn selected_drift_policies_get_a_path_bit_each_and_unknown_containers_the_strictest() {
        let ci = SelectedDrift {
            name: "ci-runners".to_owned(),
            selector: ContainerSelector {
                namespaces: vec!["ci-*".to_owned()],
                ..ContainerSelector::default()
            },
            rule: DriftRule {
                allow_memfd: true,
                allowed_paths: vec!["/workspace/**".to_owned()],
                ..DriftRule::strict(Mode::Audit)
            },
        };
        let tools = SelectedDrift {
            name: "tools".to_owned(),
            selector: ContainerSelector::images(&["tools:*"]),
            rule: DriftRule {
                allow_memfd: true,
                allowed_paths: vec!["/workspace/bin/*".to_owned()],
                ..DriftRule::strict(Mode::Audit)
            },
        };
        let policy = Policy {
            selected_drift: vec![ci, tools],
            ..Policy::builtin(DriftRule {
                allowed_paths: vec!["/workspace/bin/*".to_owned(), "/opt/*".to_owned()],
                ..DriftRule::strict(Mode::Enforce)
            })
        };
        let compiled = compile(&policy).unwrap();
        assert_eq!(compiled.drift_all_containers.path_mask, 0b001);
        assert_eq!(compiled.drift_selected[0].mode, mode::AUDIT);
        assert_eq!(
            compiled.drift_selected[0].flags,
            drift_flags::ALLOW_MEMFD | drift_flags::ALLOW_PATHS
        );
        assert_eq!(compiled.drift_selected[0].path_mask, 0b010);
        assert_eq!(compiled.drift_selected[1].path_mask, 0b100);
        let dfa = &compiled.path_dfa;
        assert!(paths::accepts_for(dfa, b"/workspace/src/x", 0b010));
        assert!(!paths::accepts_for(dfa, b"/workspace/src/x", 0b001));
        // Unknown: enforce (one enforces), no memfd (one forbids it), and
        // only the paths every one allows.
        let unknown = compiled.drift_unknown;
        assert_eq!(unknown.mode, mode::ENFORCE);
        assert_eq!(unknown.flags, drift_flags::ALLOW_PATHS);
        assert_eq!(unknown.path_mask, 0b111);
        assert!(paths::accepts_for(
            dfa,
            b"/workspace/bin/t",
            unknown.path_mask
        ));
        assert!(!paths::accepts_for(
            dfa,
            b"/workspace/src/x",
            unknown.path_mask
        ));
        assert!(!paths::accepts_for(dfa, b"/opt/x", unknown.path_mask));
        // Without allowed paths in one of them, none are allowed when unknown.
        let mut strict = policy.clone();
        strict.selected_drift[1].rule.allowed_paths.clear();
        let unknown = compile(&strict).unwrap().drift_unknown;
        assert_eq!(unknown.flags & drift_flags::ALLOW_PATHS, 0);
        assert_eq!(unknown.path_mask, 0);
        let names = drift_indices(&policy, 33);
        assert_eq!(names[&33], "ci-runners");
        assert_eq!(names[&34], "tools");
        assert_eq!(names[&drift_policy::UNKNOWN], UNKNOWN_CONTAINER_RULESET);
        let alone = drift_indices(&Policy::builtin(DriftRule::strict(Mode::Enforce)), 2);
        assert_eq!(alone[&drift_policy::UNKNOWN], "builtin-default");
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
