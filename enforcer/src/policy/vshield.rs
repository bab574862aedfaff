//! vShields compiled into kernel map entries, and applied by diff.
//!
//! A vShield names files by path or glob; the kernel decides by file
//! identity ([`FileId`]). [`crate::resolve`] turns the paths into
//! identities; [`entries`] (pure) turns vShields and their identities into
//! the two maps' entries; [`Applied::update`] writes only what changed.

use std::collections::{BTreeMap, BTreeSet};

use aya::{Ebpf, maps::HashMap as BpfHashMap};
use enforcer_common::{FileId, VSHIELD_SLOTS, VShieldKey, VShieldRule, mode, scope, vshield_op};

use super::{ContainerSelector, Mode};
use crate::maps::{self, MapAccessError};

/// Whom a vShield applies to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// The host's own processes.
    Host,
    /// Every container.
    Containers,
    /// The containers a selector picks.
    Selected(ContainerSelector),
}

impl Scope {
    /// The scope code of its rules, for a vShield without a selector.
    const fn code(&self) -> Option<u32> {
        match self {
            Self::Host => Some(scope::HOST),
            Self::Containers => Some(scope::CONTAINERS),
            Self::Selected(_) => None,
        }
    }

    /// Whether it applies to containers (all or some).
    pub const fn is_containers(&self) -> bool {
        !matches!(self, Self::Host)
    }

    /// For `enforcer vshield list`.
    pub fn describe(&self) -> String {
        match self {
            Self::Host => "host".to_owned(),
            Self::Containers => "containers".to_owned(),
            Self::Selected(selector) => selector.describe(),
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
        operation_names(self.ops)
    }
}

/// The names of the operations in `ops` (bits of `vshield_op`).
pub fn operation_names(ops: u32) -> Vec<&'static str> {
    [
        (vshield_op::EXEC, "exec"),
        (vshield_op::OPEN, "open"),
        (vshield_op::LOAD, "load"),
    ]
    .into_iter()
    .filter(|(op, _)| ops & op != 0)
    .map(|(_, name)| name)
    .collect()
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

/// Each vShield's slot, by name: its hit counter and its rule id in events.
/// A vShield keeps its slot while it stays in the policy, so reloads keep
/// its counts and events in flight keep their meaning.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Slots {
    by_name: BTreeMap<String, u32>,
}

/// The slots of a new policy ([`Slots::assign`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub slots: Slots,
    /// Each vShield's slot, in policy order.
    pub of_shield: Vec<u32>,
    /// Slots that now belong to a vShield that had none: their counters must
    /// start from zero.
    pub fresh: Vec<u32>,
}

impl Slots {
    pub fn get(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// Slots for `shields` (names are unique). Pure. A vShield that has a
    /// slot keeps it; a new one gets the lowest slot that no vShield of the
    /// previous policy had, so a slot is not reused in the reload that freed
    /// it (events read after the reload still name the right vShield), unless
    /// there is no other.
    ///
    /// # Errors
    /// More vShields than slots.
    pub fn assign(&self, shields: &[VShield]) -> Result<Assignment, VShieldError> {
        if shields.len() > VSHIELD_SLOTS as usize {
            return Err(VShieldError::TooMany {
                count: shields.len(),
            });
        }
        let kept: BTreeSet<u32> = shields
            .iter()
            .filter_map(|shield| self.get(&shield.name))
            .collect();
        let previous: BTreeSet<u32> = self.by_name.values().copied().collect();
        let mut unused = (1..=VSHIELD_SLOTS)
            .filter(|slot| !previous.contains(slot))
            .chain(previous.iter().copied().filter(|slot| !kept.contains(slot)));
        let mut assignment = Assignment {
            slots: Self::default(),
            of_shield: Vec::with_capacity(shields.len()),
            fresh: Vec::new(),
        };
        for shield in shields {
            let slot = if let Some(slot) = self.get(&shield.name) {
                slot
            } else {
                // At most VSHIELD_SLOTS names, each with its own slot.
                let slot = unused.next().ok_or(VShieldError::TooMany {
                    count: shields.len(),
                })?;
                assignment.fresh.push(slot);
                slot
            };
            assignment.slots.by_name.insert(shield.name.clone(), slot);
            assignment.of_shield.push(slot);
        }
        Ok(assignment)
    }
}

/// The vShields with selectors that apply in each selected container scope:
/// scope code ([`scope::UNKNOWN`], or [`scope::FIRST_SELECTED`] and up) ->
/// their slots.
pub type Selected = BTreeMap<u32, BTreeSet<u32>>;

/// Compiles resolved vShields into map entries. Pure.
///
/// Where several vShields cover the same file, scope and operation, the
/// strictest decides: enforce over audit, then the first in `resolved`
/// (policy order), so the outcome does not depend on map order or slots.
///
/// A vShield with a selector has rules only in the scopes of `selected`
/// that hold its slot. Those rules also weigh the vShields for every
/// container on the same file and operation, since the kernel looks there
/// only when the container's scope has no rule.
pub fn entries(resolved: &[Resolved<'_>], selected: &Selected) -> Entries {
    let mut out = Entries::default();
    // The rank of the vShield that set each rule.
    let mut ranks: BTreeMap<VShieldKey, (bool, usize)> = BTreeMap::new();
    let mut offer = |out: &mut Entries, key: VShieldKey, rank: (bool, usize), rule| {
        let current = ranks.entry(key).or_insert(rank);
        if rank <= *current {
            *current = rank;
            out.rules.insert(key, rule);
        }
    };
    // Every-container rules first, in full, so that the selected scopes
    // below can start from them.
    let mut sorted: Vec<(usize, &Resolved<'_>)> = resolved.iter().enumerate().collect();
    sorted.sort_by_key(|(_, shield)| shield.shield.scope.code().is_none());
    let mut everywhere: BTreeMap<(FileId, u32), ((bool, usize), VShieldRule)> = BTreeMap::new();
    for (index, shield) in sorted {
        let rule = VShieldRule {
            rule: shield.slot,
            mode: match shield.shield.mode {
                Mode::Enforce => mode::ENFORCE,
                Mode::Audit => mode::AUDIT,
            },
        };
        let rank = (rule.mode != mode::ENFORCE, index);
        let scopes: Vec<u32> = match shield.shield.scope.code() {
            Some(code) => vec![code],
            None => selected
                .iter()
                .filter(|(_, slots)| slots.contains(&shield.slot))
                .map(|(code, _)| *code)
                .collect(),
        };
        for file in &shield.files {
            for op in [vshield_op::EXEC, vshield_op::OPEN, vshield_op::LOAD] {
                if shield.shield.ops & op == 0 {
                    continue;
                }
                *out.files.entry(*file).or_default() |= op;
                if shield.shield.scope == Scope::Containers {
                    let best = everywhere.entry((*file, op)).or_insert((rank, rule));
                    if rank <= best.0 {
                        *best = (rank, rule);
                    }
                }
                for scope in &scopes {
                    let key = VShieldKey {
                        file: *file,
                        scope: *scope,
                        op,
                    };
                    if *scope >= scope::UNKNOWN
                        && let Some((rank, rule)) = everywhere.get(&(*file, op))
                    {
                        offer(&mut out, key, *rank, *rule);
                    }
                    offer(&mut out, key, rank, rule);
                }
            }
        }
    }
    out
}

impl Entries {
    /// Both: the files' operations together, `new`'s rule where both have
    /// one. Pure.
    #[must_use]
    pub fn union(&self, new: &Self) -> Self {
        let mut out = self.clone();
        for (file, ops) in &new.files {
            *out.files.entry(*file).or_default() |= ops;
        }
        out.rules
            .extend(new.rules.iter().map(|(key, rule)| (*key, *rule)));
        out
    }
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

    /// What maps an agent before this one left hold: the first update
    /// then removes what the new policy does not have, after its own
    /// entries are in (see [`Applied::update`]).
    pub fn adopt(ebpf: &Ebpf) -> Result<Self, MapAccessError> {
        let map_error = |map| move |source| MapAccessError::Map { map, source };
        let rules: BpfHashMap<_, VShieldKey, VShieldRule> =
            maps::borrow(ebpf, maps::VSHIELD_RULES)?;
        let files: BpfHashMap<_, FileId, u32> = maps::borrow(ebpf, maps::VSHIELD_FILES)?;
        Ok(Self {
            entries: Entries {
                files: files
                    .iter()
                    .collect::<Result<_, _>>()
                    .map_err(map_error(maps::VSHIELD_FILES))?,
                rules: rules
                    .iter()
                    .collect::<Result<_, _>>()
                    .map_err(map_error(maps::VSHIELD_RULES))?,
            },
        })
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
        let entries = entries(&resolved, &Selected::new());
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
    fn enforce_wins_over_audit_then_the_first_vshield_in_the_policy() {
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
        let entries = entries(&resolved, &Selected::new());
        let key = |scope| VShieldKey {
            file: id(7),
            scope,
            op: vshield_op::EXEC,
        };
        // `c` (slot 3) comes before `b` (slot 2) in the policy.
        assert_eq!(entries.rules[&key(scope::CONTAINERS)].rule, 3);
        assert_eq!(entries.rules[&key(scope::HOST)].rule, 4);
        assert_eq!(entries.rules.len(), 2);
    }

    #[test]
    fn a_vshield_with_a_selector_has_rules_only_in_the_scopes_that_select_it() {
        let images = |glob: &str| Scope::Selected(ContainerSelector::images(&[glob]));
        let everywhere = shield("all", Mode::Audit, vshield_op::EXEC, Scope::Containers);
        let one = shield("one", Mode::Enforce, vshield_op::EXEC, images("one:*"));
        let two = shield("two", Mode::Audit, vshield_op::EXEC, images("two:*"));
        let resolved = [
            Resolved {
                slot: 1,
                shield: &everywhere,
                files: [id(1), id(2)].into(),
            },
            Resolved {
                slot: 2,
                shield: &one,
                files: [id(2), id(3)].into(),
            },
            Resolved {
                slot: 3,
                shield: &two,
                files: [id(2)].into(),
            },
        ];
        let first = scope::FIRST_SELECTED;
        // Unknown containers: every vShield; `first`: image one's; `first +
        // 1`: image two's.
        let selected: Selected = [
            (scope::UNKNOWN, [2, 3].into()),
            (first, [2].into()),
            (first + 1, [3].into()),
        ]
        .into();
        let entries = entries(&resolved, &selected);
        let rule = |file, scope| {
            entries
                .rules
                .get(&VShieldKey {
                    file: id(file),
                    scope,
                    op: vshield_op::EXEC,
                })
                .map(|rule| (rule.rule, rule.mode))
        };
        // File 1: only the vShield for every container.
        assert_eq!(rule(1, scope::CONTAINERS), Some((1, mode::AUDIT)));
        assert_eq!(rule(1, first), None);
        // File 2: enforce (one) wins where one applies; where only two does,
        // the earlier audit vShield for every container wins over two.
        assert_eq!(rule(2, first), Some((2, mode::ENFORCE)));
        assert_eq!(rule(2, first + 1), Some((1, mode::AUDIT)));
        assert_eq!(rule(2, scope::UNKNOWN), Some((2, mode::ENFORCE)));
        // File 3: one's, in its scopes only.
        assert_eq!(rule(3, first), Some((2, mode::ENFORCE)));
        assert_eq!(rule(3, first + 1), None);
        assert_eq!(rule(3, scope::CONTAINERS), None);
        assert_eq!(rule(3, scope::UNKNOWN), Some((2, mode::ENFORCE)));
        assert_eq!(entries.files.len(), 3);
    }

    #[test]
    fn the_diff_writes_only_what_changed() {
        let one = shield("one", Mode::Enforce, vshield_op::EXEC, Scope::Containers);
        let old = entries(
            &[Resolved {
                slot: 1,
                shield: &one,
                files: [id(1), id(2)].into(),
            }],
            &Selected::new(),
        );
        let new = entries(
            &[Resolved {
                slot: 1,
                shield: &one,
                files: [id(2), id(3)].into(),
            }],
            &Selected::new(),
        );
        let diff = Diff::between(&old, &new);
        assert_eq!(diff.set_files, [(id(3), vshield_op::EXEC)]);
        assert_eq!(diff.remove_files, [id(1)]);
        assert_eq!(diff.set_rules.len(), 1);
        assert_eq!(diff.remove_rules.len(), 1);
        assert!(Diff::between(&new, &new).is_empty());
    }

    #[test]
    fn slots_are_bounded() {
        let many: Vec<_> = (0..3)
            .map(|n| shield(&format!("x{n}"), Mode::Audit, vshield_op::EXEC, Scope::Host))
            .collect();
        let assignment = Slots::default().assign(&many).unwrap();
        assert_eq!(assignment.of_shield, [1, 2, 3]);
        assert_eq!(assignment.fresh, [1, 2, 3]);
        let too_many = vec![many[0].clone(); VSHIELD_SLOTS as usize + 1];
        assert!(Slots::default().assign(&too_many).is_err());
    }

    #[test]
    fn a_vshield_keeps_its_slot_across_reloads_and_freed_slots_wait_one_reload() {
        let named = |names: &[&str]| -> Vec<VShield> {
            names
                .iter()
                .map(|name| shield(name, Mode::Enforce, vshield_op::EXEC, Scope::Containers))
                .collect()
        };
        let first = Slots::default().assign(&named(&["a", "b", "c"])).unwrap();
        // `b` goes, `d` comes, `a` moves to the end of the policy.
        let second = first.slots.assign(&named(&["c", "d", "a"])).unwrap();
        assert_eq!(second.of_shield, [3, 4, 1]);
        assert_eq!(second.fresh, [4]);
        // Slot 2 (b's) is free again one reload later.
        let third = second.slots.assign(&named(&["c", "d", "a", "e"])).unwrap();
        assert_eq!(third.of_shield, [3, 4, 1, 2]);
        assert_eq!(third.fresh, [2]);
    }
}
