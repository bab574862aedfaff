//! Which vShields with image selectors apply to each known container, as
//! the kernel's scope codes.
//!
//! Containers that the same vShields select share one scope: its code is
//! what `CONTAINER_SCOPES` holds for their groups, and the vShield rules of
//! that code are compiled for exactly those vShields. A container no such
//! vShield selects is in [`scope::CONTAINERS`]; one whose image is not known
//! yet has no entry and is in [`scope::UNKNOWN`], where all of them apply.

use std::collections::{BTreeMap, BTreeSet};

use enforcer_common::scope;

use crate::{
    container::{ImageGlobs, registry::Known},
    policy::vshield::Selected,
};

/// A vShield with an image selector, by slot.
#[derive(Clone, Debug)]
pub struct ImageSelector {
    pub slot: u32,
    pub globs: ImageGlobs,
}

/// The scope codes in use, by the slots of the vShields they stand for.
/// Kept between placements so that a set keeps its code (and its rules
/// stay in the kernel) while containers come and go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scopes {
    codes: BTreeMap<BTreeSet<u32>, u32>,
}

/// The result of placing every known container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// The rules to compile: scope code -> slots.
    pub selected: Selected,
    /// `CONTAINER_SCOPES`: cgroup id -> scope code.
    pub by_cgroup: BTreeMap<u64, u32>,
    pub scopes: Scopes,
}

impl Scopes {
    /// Places `containers` under `selectors`. Pure. A set of vShields keeps
    /// the code it had; a new set gets the lowest free code. With
    /// `keep_unused`, sets no container is in any more keep their code and
    /// rules (a container that comes back finds them); without it (a new
    /// policy) they are dropped.
    pub fn place<'a>(
        &self,
        selectors: &[ImageSelector],
        containers: impl IntoIterator<Item = &'a Known>,
        keep_unused: bool,
    ) -> Placement {
        let mut codes: BTreeMap<BTreeSet<u32>, u32> = if keep_unused {
            self.codes.clone()
        } else {
            BTreeMap::new()
        };
        let mut by_cgroup = BTreeMap::new();
        for known in containers {
            let Some(image) = &known.info.image else {
                continue;
            };
            let members: BTreeSet<u32> = selectors
                .iter()
                .filter(|selector| selector.globs.matches(image))
                .map(|selector| selector.slot)
                .collect();
            let code = if members.is_empty() {
                scope::CONTAINERS
            } else if let Some(code) = codes.get(&members) {
                *code
            } else {
                let code = self.codes.get(&members).copied().unwrap_or_else(|| {
                    let taken: BTreeSet<u32> =
                        codes.values().chain(self.codes.values()).copied().collect();
                    (scope::FIRST_SELECTED..=u32::MAX)
                        .find(|code| !taken.contains(code))
                        .unwrap_or(scope::UNKNOWN)
                });
                codes.insert(members, code);
                code
            };
            for cgroup in &known.cgroups {
                by_cgroup.insert(*cgroup, code);
            }
        }
        let mut selected: Selected = codes
            .iter()
            .map(|(members, code)| (*code, members.clone()))
            .collect();
        if !selectors.is_empty() {
            selected.insert(
                scope::UNKNOWN,
                selectors.iter().map(|selector| selector.slot).collect(),
            );
        }
        Placement {
            selected,
            by_cgroup,
            scopes: Self { codes },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::{ContainerInfo, ImageRef, Runtime};

    fn container(id: &str, image: Option<&str>, cgroups: &[u64]) -> Known {
        Known {
            info: ContainerInfo {
                id: id.to_owned(),
                name: None,
                runtime: Runtime::Podman,
                image: image.and_then(ImageRef::parse),
                pod: None,
                init_pid: None,
            },
            cgroups: cgroups.iter().copied().collect(),
        }
    }

    fn selector(slot: u32, glob: &str) -> ImageSelector {
        ImageSelector {
            slot,
            globs: ImageGlobs::new(&[glob.to_owned()]).unwrap(),
        }
    }

    #[test]
    fn containers_of_the_same_images_share_a_scope_and_unknown_ones_get_none() {
        let selectors = [selector(4, "localhost/one:*"), selector(7, "localhost/*")];
        let containers = [
            container("a", Some("localhost/one:1"), &[10, 11]),
            container("b", Some("localhost/two:1"), &[20]),
            container("c", Some("localhost/one:2"), &[30]),
            container("d", Some("docker.io/library/nginx:1"), &[40]),
            container("e", None, &[50]),
        ];
        let placement = Scopes::default().place(&selectors, &containers, false);
        let first = scope::FIRST_SELECTED;
        assert_eq!(
            placement.by_cgroup,
            [
                (10, first),
                (11, first),
                (20, first + 1),
                (30, first),
                (40, scope::CONTAINERS)
            ]
            .into()
        );
        assert_eq!(
            placement.selected,
            [
                (scope::UNKNOWN, [4, 7].into()),
                (first, [4, 7].into()),
                (first + 1, [7].into()),
            ]
            .into()
        );
    }

    #[test]
    fn a_set_keeps_its_code_and_a_new_policy_drops_unused_ones() {
        let selectors = [selector(1, "one:*"), selector(2, "two:*")];
        let one = container("a", Some("one:1"), &[1]);
        let two = container("b", Some("two:1"), &[2]);
        let first = Scopes::default().place(&selectors, [&one], false);
        assert_eq!(first.by_cgroup[&1], scope::FIRST_SELECTED);
        // `two` comes; `one` keeps its code.
        let second = first.scopes.place(&selectors, [&one, &two], true);
        assert_eq!(second.by_cgroup[&1], scope::FIRST_SELECTED);
        assert_eq!(second.by_cgroup[&2], scope::FIRST_SELECTED + 1);
        // `one` goes: its set stays until the next policy.
        let third = second.scopes.place(&selectors, [&two], true);
        assert!(third.selected.contains_key(&scope::FIRST_SELECTED));
        let reloaded = third.scopes.place(&selectors, [&two], false);
        assert!(!reloaded.selected.contains_key(&scope::FIRST_SELECTED));
        assert_eq!(reloaded.by_cgroup[&2], scope::FIRST_SELECTED + 1);
        // Without selectors there is nothing to select.
        let none = Scopes::default().place(&[], [&one], false);
        assert!(none.selected.is_empty());
        assert_eq!(none.by_cgroup[&1], scope::CONTAINERS);
    }
}
