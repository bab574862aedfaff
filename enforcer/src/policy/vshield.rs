//! vShields compiled into kernel map entries, and applied by diff.
//!
//! A vShield names files by path or glob; the kernel decides by file
//! identity ([`FileId`]). [`crate::resolve`] turns the paths into
//! identities; [`entries`] (pure) turns vShields and their identities into
//! the two maps' entries; [`Applied::update`] writes only what changed.

use std::collections::{BTreeMap, BTreeSet};

use aya::{Ebpf, maps::HashMap as BpfHashMap};
use enforcer_common::{FileId, VSHIELD_SLOTS, VShieldKey, VShieldRule, mode, scope, vshield_op};

use super::Mode;
use crate::maps::{self, MapAccessError};

/// Whom a vShield applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// The host's own processes.
    Host,
    /// Every container.
    Containers,
}

impl Scope {
    const fn code(self) -> u32 {
        match self {
            Self::Host => scope::HOST,
            Self::Containers => scope::CONTAINERS,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Containers => "containers",
        }
    }
}

/// One vShield as the agent enforces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VShield {
    /// `metadata.name`, unique.
    pub name: String,
    pub vulnerability: String,
    pub mode: Mode,
    /// Bits of `vshield_op`.
    pub ops: u32,
    /// Absolute paths or globs of the vulnerable files.
    pub files: Vec<String>,
    pub scope: Scope,
}

impl VShield {
    /// The names of the operations it stops.
    pub fn operations(&self) -> Vec<&'static str> {
        [
            (vshield_op::EXEC, "exec"),
            (vshield_op::OPEN, "open"),
            (vshield_op::LOAD, "load"),
        ]
        .into_iter()
        .filter(|(op, _)| self.ops & op != 0)
        .map(|(_, name)| name)
        .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VShieldError {
    #[error("{count} vShields, more than the {VSHIELD_SLOTS} the kernel's hit counters hold")]
    TooMany { count: usize },
}

/// A vShield with its slot (1-based: its hit counter and the rule id in
/// events) and the identities of the files it names.
#[derive(Clone, Debug)]
pub struct Resolved<'a> {
    pub slot: u32,
    pub shield: &'a VShield,
    pub files: BTreeSet<FileId>,
}

/// The entries of `VSHIELD_FILES` and `VSHIELD_RULES` for a policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entries {
    pub files: BTreeMap<FileId, u32>,
    pub rules: BTreeMap<VShieldKey, VShieldRule>,
}

/// Slots for `shields`, in order: 1, 2, ...
pub fn slots(shields: &[VShield]) -> Result<Vec<u32>, VShieldError> {
    if shields.len() > VSHIELD_SLOTS as usize {
        return Err(VShieldError::TooMany {
            count: shields.len(),
        });
    }
    Ok((1..=shields.len() as u32).collect())
}

/// Compiles resolved vShields into map entries. Pure.
///
/// Where several vShields cover the same file, scope and operation, the
/// strictest decides: enforce over audit, then the lowest slot (the first
/// in the policy), so the outcome does not depend on map order.
pub fn entries(resolved: &[Resolved<'_>]) -> Entries {
    let mut out = Entries::default();
    for shield in resolved {
        let mode = match shield.shield.mode {
            Mode::Enforce => mode::ENFORCE,
            Mode::Audit => mode::AUDIT,
        };
        let rule = VShieldRule {
            rule: shield.slot,
            mode,
        };
        for file in &shield.files {
            for op in [vshield_op::EXEC, vshield_op::OPEN, vshield_op::LOAD] {
                if shield.shield.ops & op == 0 {
                    continue;
                }
                *out.files.entry(*file).or_default() |= op;
                let key = VShieldKey {
                    file: *file,
                    scope: shield.shield.scope.code(),
                    op,
                };
                out.rules
                    .entry(key)
                    .and_modify(|current| {
                        if stricter(rule, *current) {
                            *current = rule;
                        }
                    })
                    .or_insert(rule);
            }
        }
    }
    out
}

fn stricter(candidate: VShieldRule, current: VShieldRule) -> bool {
    let rank = |rule: VShieldRule| (rule.mode != mode::ENFORCE, rule.rule);
    rank(candidate) < rank(current)
}

/// What changes between two sets of entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub set_rules: Vec<(VShieldKey, VShieldRule)>,
    pub set_files: Vec<(FileId, u32)>,
    pub remove_files: Vec<FileId>,
    pub remove_rules: Vec<VShieldKey>,
}

impl Diff {
    /// Pure.
    pub fn between(old: &Entries, new: &Entries) -> Self {
        Self {
            set_rules: new
                .rules
                .iter()
                .filter(|(key, rule)| old.rules.get(key) != Some(rule))
                .map(|(key, rule)| (*key, *rule))
                .collect(),
            set_files: new
                .files
                .iter()
                .filter(|(file, ops)| old.files.get(file) != Some(ops))
                .map(|(file, ops)| (*file, *ops))
                .collect(),
            remove_files: old
                .files
                .keys()
                .filter(|file| !new.files.contains_key(file))
                .copied()
                .collect(),
            remove_rules: old
                .rules
                .keys()
                .filter(|key| !new.rules.contains_key(key))
                .copied()
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set_rules.is_empty()
            && self.set_files.is_empty()
            && self.remove_files.is_empty()
            && self.remove_rules.is_empty()
    }
}

/// The entries in the kernel maps.
#[derive(Debug, Default)]
pub struct Applied {
    entries: Entries,
}

impl Applied {
    pub fn entries(&self) -> &Entries {
        &self.entries
    }

    /// Makes the kernel maps hold `new`, writing only the difference. Rules
    /// go in before the file entries that lead to them, and file entries
    /// come out before their rules, so a lookup never finds a file without
    /// its rules; a rule that stays is never absent.
    pub fn update(&mut self, ebpf: &mut Ebpf, new: Entries) -> Result<Diff, MapAccessError> {
        let diff = Diff::between(&self.entries, &new);
        let map_error = |map| move |source| MapAccessError::Map { map, source };
        {
            let mut rules: BpfHashMap<_, VShieldKey, VShieldRule> =
                maps::borrow_mut(ebpf, maps::VSHIELD_RULES)?;
            for (key, rule) in &diff.set_rules {
                rules
                    .insert(key, rule, 0)
                    .map_err(map_error(maps::VSHIELD_RULES))?;
            }
        }
        {
            let mut files: BpfHashMap<_, FileId, u32> =
                maps::borrow_mut(ebpf, maps::VSHIELD_FILES)?;
            for (file, ops) in &diff.set_files {
                files
                    .insert(file, ops, 0)
                    .map_err(map_error(maps::VSHIELD_FILES))?;
            }
            for file in &diff.remove_files {
                files.remove(file).map_err(map_error(maps::VSHIELD_FILES))?;
            }
        }
        {
            let mut rules: BpfHashMap<_, VShieldKey, VShieldRule> =
                maps::borrow_mut(ebpf, maps::VSHIELD_RULES)?;
            for key in &diff.remove_rules {
                rules.remove(key).map_err(map_error(maps::VSHIELD_RULES))?;
            }
        }
        self.entries = new;
        Ok(diff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shield(name: &str, mode: Mode, ops: u32, scope: Scope) -> VShield {
        VShield {
            name: name.to_owned(),
            vulnerability: "CVE-2021-44228".to_owned(),
            mode,
            ops,
            files: vec!["/opt/app/log4j-core-2.14.1.jar".to_owned()],
            scope,
        }
    }

    fn id(ino: u64) -> FileId {
        FileId {
            ino,
            dev: 0x80_0001,
            pad: 0,
        }
    }

    #[test]
    fn each_operation_of_each_file_gets_a_rule() {
        let log4j = shield(
            "log4j",
            Mode::Audit,
            vshield_op::OPEN | vshield_op::LOAD,
            Scope::Containers,
        );
        let resolved = [Resolved {
            slot: 1,
            shield: &log4j,
            files: [id(10), id(11)].into(),
        }];
        let entries = entries(&resolved);
        assert_eq!(entries.files.len(), 2);
        assert_eq!(entries.files[&id(10)], vshield_op::OPEN | vshield_op::LOAD);
        assert_eq!(entries.rules.len(), 4);
        let key = VShieldKey {
            file: id(11),
            scope: scope::CONTAINERS,
            op: vshield_op::LOAD,
        };
        assert_eq!(
            entries.rules[&key],
            VShieldRule {
                rule: 1,
                mode: mode::AUDIT
            }
        );
    }

    #[test]
    fn enforce_wins_over_audit_then_the_first_vshield() {
        let audit = shield("a", Mode::Audit, vshield_op::EXEC, Scope::Containers);
        let enforce = shield("b", Mode::Enforce, vshield_op::EXEC, Scope::Containers);
        let enforce_too = shield("c", Mode::Enforce, vshield_op::EXEC, Scope::Containers);
        let host = shield("d", Mode::Audit, vshield_op::EXEC, Scope::Host);
        let files: BTreeSet<_> = [id(7)].into();
        let resolved = [
            Resolved {
                slot: 1,
                shield: &audit,
                files: files.clone(),
            },
            Resolved {
                slot: 3,
                shield: &enforce_too,
                files: files.clone(),
            },
            Resolved {
                slot: 2,
                shield: &enforce,
                files: files.clone(),
            },
            Resolved {
                slot: 4,
                shield: &host,
                files,
            },
        ];
        let entries = entries(&resolved);
        let key = |scope| VShieldKey {
            file: id(7),
            scope,
            op: vshield_op::EXEC,
        };
        assert_eq!(entries.rules[&key(scope::CONTAINERS)].rule, 2);
        assert_eq!(entries.rules[&key(scope::HOST)].rule, 4);
        assert_eq!(entries.rules.len(), 2);
    }

    #[test]
    fn the_diff_writes_only_what_changed() {
        let one = shield("one", Mode::Enforce, vshield_op::EXEC, Scope::Containers);
        let old = entries(&[Resolved {
            slot: 1,
            shield: &one,
            files: [id(1), id(2)].into(),
        }]);
        let new = entries(&[Resolved {
            slot: 1,
            shield: &one,
            files: [id(2), id(3)].into(),
        }]);
        let diff = Diff::between(&old, &new);
        assert_eq!(diff.set_files, [(id(3), vshield_op::EXEC)]);
        assert_eq!(diff.remove_files, [id(1)]);
        assert_eq!(diff.set_rules.len(), 1);
        assert_eq!(diff.remove_rules.len(), 1);
        assert!(Diff::between(&new, &new).is_empty());
    }

    #[test]
    fn slots_are_bounded() {
        let many = vec![shield("x", Mode::Audit, vshield_op::EXEC, Scope::Host); 3];
        assert_eq!(slots(&many).unwrap(), [1, 2, 3]);
        let too_many = vec![many[0].clone(); VSHIELD_SLOTS as usize + 1];
        assert!(slots(&too_many).is_err());
    }
}
