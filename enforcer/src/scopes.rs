//! Which vShields with selectors (images, namespaces, pod labels, container
//! kinds) apply to
//! each known container, as the kernel's scope codes.
//!
//! Containers that the same vShields select share one scope: its code is
//! what `CONTAINER_SCOPES` holds for their groups, and the vShield rules of
//! that code are compiled for exactly those vShields. A container no such
//! vShield selects is in [`scope::CONTAINERS`]; one a selector cannot
//! decide on yet (its image, or its pod's labels, not known) has no entry
//! and is in [`scope::UNKNOWN`], where all of them apply.

use std::collections::{BTreeMap, BTreeSet};

use enforcer_common::{drift_policy, scope};
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::{
    container::{ContainerInfo, ImageGlobs, kubernetes::ContainerKind, registry::Known},
    policy::{ContainerSelector, vshield::Selected},
};

/// A vShield with a selector, by slot, compiled.
#[derive(Clone, Debug)]
pub struct Selector {
    pub slot: u32,
    images: Option<ImageGlobs>,
    namespaces: Option<GlobSet>,
    pod_labels: BTreeMap<String, String>,
    container_kinds: BTreeSet<ContainerKind>,
}

impl Selector {
    /// Compiles `selector`.
    ///
    /// # Errors
    /// The first glob that does not compile, with the reason.
    pub fn new(slot: u32, selector: &ContainerSelector) -> Result<Self, (String, String)> {
        let images = (!selector.images.is_empty())
            .then(|| ImageGlobs::new(&selector.images))
            .transpose()?;
        let namespaces = if selector.namespaces.is_empty() {
            None
        } else {
            let mut set = GlobSetBuilder::new();
            for glob in &selector.namespaces {
                set.add(Glob::new(glob).map_err(|error| (glob.clone(), error.kind().to_string()))?);
            }
            Some(
                set.build()
                    .map_err(|error| (selector.namespaces.join(","), error.to_string()))?,
            )
        };
        Ok(Self {
            slot,
            images,
            namespaces,
            pod_labels: selector.pod_labels.clone(),
            container_kinds: selector.container_kinds.clone(),
        })
    }

    /// Whether it selects `info`'s container; `None` while what it selects
    /// on is not known (the image not named yet, a pod the Kubernetes API
    /// has not reported). A container outside any pod has no namespace or
    /// labels or kind: a selector that asks for them does not select it.
    /// Pure.
    pub fn selects(&self, info: &ContainerInfo) -> Option<bool> {
        let image = self
            .images
            .as_ref()
            .map(|globs| info.image.as_ref().map(|image| globs.matches(image)));
        let pod_wanted = self.namespaces.is_some()
            || !self.pod_labels.is_empty()
            || !self.container_kinds.is_empty();
        let pod = info.pod.as_ref().filter(|_| pod_wanted);
        let namespace = self.namespaces.as_ref().map(|globs| match pod {
            None => Some(false),
            Some(pod) => pod
                .namespace
                .as_ref()
                .map(|namespace| globs.is_match(namespace)),
        });
        let labels = (!self.pod_labels.is_empty()).then(|| match pod {
            None => Some(false),
            Some(pod) => pod.labels.as_ref().map(|labels| {
                self.pod_labels
                    .iter()
                    .all(|(key, value)| labels.get(key) == Some(value))
            }),
        });
        // Only the API says how a container came to be in its pod.
        let kind = (!self.container_kinds.is_empty()).then(|| match pod {
            None => Some(false),
            Some(pod) => pod.kind.map(|kind| self.container_kinds.contains(&kind)),
        });
        let parts = [image, namespace, labels, kind];
        let parts = parts.iter().flatten();
        if parts.clone().any(|part| *part == Some(false)) {
            Some(false)
        } else if parts.clone().any(Option::is_none) {
            None
        } else {
            Some(true)
        }
    }
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
        selectors: &[Selector],
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
            let Some(members) = selectors
                .iter()
                .filter_map(|selector| match selector.selects(&known.info) {
                    // Undecided: the whole container is.
                    None => Some(None),
                    Some(false) => None,
                    Some(true) => Some(Some(selector.slot)),
                })
                .collect::<Option<BTreeSet<u32>>>()
            else {
                continue;
            };
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

/// The `DRIFT_POLICY` index of each group of `containers` under the
/// selected `DriftPolicy`s `selectors` (in policy order; each selector's
/// slot is its index): the first that selects a container applies; a
/// container none selects is under the policy for every container; one a
/// selector before the first that selects it cannot decide on yet has no
/// entry (unknown: the strictest of all applies). Pure.
pub fn drift_placement<'a>(
    selectors: &[Selector],
    containers: impl IntoIterator<Item = &'a Known>,
) -> BTreeMap<u64, u32> {
    let mut by_cgroup = BTreeMap::new();
    'containers: for known in containers {
        let mut index = drift_policy::ALL_CONTAINERS;
        for selector in selectors {
            match selector.selects(&known.info) {
                Some(true) => {
                    index = selector.slot;
                    break;
                }
                Some(false) => {}
                None => continue 'containers,
            }
        }
        for cgroup in &known.cgroups {
            by_cgroup.insert(*cgroup, index);
        }
    }
    by_cgroup
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::{ImageRef, PodRef, Runtime};

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

    fn selector(slot: u32, glob: &str) -> Selector {
        Selector::new(slot, &ContainerSelector::images(&[glob])).unwrap()
    }

    #[test]
    fn the_first_drift_policy_that_selects_a_container_applies() {
        let ci = Selector::new(
            40,
            &ContainerSelector {
                namespaces: vec!["ci-*".to_owned()],
                ..ContainerSelector::default()
            },
        )
        .unwrap();
        let tools = selector(41, "localhost/tools:*");
        let in_namespace = |id: &str, image: &str, namespace: Option<&str>, cgroup: u64| {
            let mut known = container(id, Some(image), &[cgroup]);
            known.info.pod = namespace.map(|namespace| PodRef {
                namespace: Some(namespace.to_owned()),
                ..PodRef::default()
            });
            known
        };
        let containers = [
            // Both select it: the first in policy order wins.
            in_namespace("a", "localhost/tools:1", Some("ci-main"), 1),
            in_namespace("b", "localhost/tools:1", None, 2),
            in_namespace("c", "localhost/web:1", Some("shop"), 3),
            // Its namespace is not known yet: undecided, even though the
            // second selector would select it.
            in_namespace("d", "localhost/tools:1", Some("x"), 4),
        ];
        let mut undecided = containers[3].clone();
        if let Some(pod) = undecided.info.pod.as_mut() {
            pod.namespace = None;
        }
        let placement = drift_placement(
            &[ci, tools],
            [&containers[0], &containers[1], &containers[2], &undecided],
        );
        assert_eq!(
            placement,
            [(1, 40), (2, 41), (3, drift_policy::ALL_CONTAINERS)].into()
        );
    }

    #[test]
    fn namespaces_and_pod_labels_select_pods_and_wait_for_what_is_not_known() {
        let wanted = Selector::new(
            1,
            &ContainerSelector {
                namespaces: vec!["ci-*".to_owned()],
                pod_labels: [("app".to_owned(), "runner".to_owned())].into(),
                ..ContainerSelector::default()
            },
        )
        .unwrap();
        let in_pod = |namespace: Option<&str>, labels: Option<&[(&str, &str)]>| {
            let mut known = container("a", Some("localhost/one:1"), &[1]);
            known.info.pod = Some(PodRef {
                namespace: namespace.map(str::to_owned),
                labels: labels.map(|labels| {
                    labels
                        .iter()
                        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                        .collect()
                }),
                ..PodRef::default()
            });
            known.info
        };
        let runner = [("app", "runner"), ("team", "x")];
        assert_eq!(
            wanted.selects(&in_pod(Some("ci-a"), Some(&runner))),
            Some(true)
        );
        assert_eq!(
            wanted.selects(&in_pod(Some("shop"), Some(&runner))),
            Some(false)
        );
        assert_eq!(
            wanted.selects(&in_pod(Some("ci-a"), Some(&[("app", "web")]))),
            Some(false)
        );
        // The pod's labels are not known yet (only its annotations were read).
        assert_eq!(wanted.selects(&in_pod(Some("ci-a"), None)), None);
        // A namespace that does not match decides without the labels.
        assert_eq!(wanted.selects(&in_pod(Some("shop"), None)), Some(false));
        // Not a pod's container.
        assert_eq!(
            wanted.selects(&container("b", Some("x:1"), &[2]).info),
            Some(false)
        );
        // Undecided containers stay in the unknown scope.
        let mut undecided = container("c", Some("x:1"), &[3]);
        undecided.info = in_pod(Some("ci-a"), None);
        let placement = Scopes::default().place(&[wanted], [&undecided], false);
        assert!(placement.by_cgroup.is_empty());
    }

    #[test]
    fn container_kinds_select_init_and_debug_containers_once_the_api_said() {
        let setup = Selector::new(
            1,
            &ContainerSelector {
                namespaces: vec!["shop".to_owned()],
                container_kinds: [ContainerKind::Init, ContainerKind::Ephemeral].into(),
                ..ContainerSelector::default()
            },
        )
        .unwrap();
        let in_pod = |namespace: &str, kind: Option<ContainerKind>| {
            let mut known = container("a", Some("localhost/one:1"), &[1]);
            known.info.pod = Some(PodRef {
                namespace: Some(namespace.to_owned()),
                kind,
                ..PodRef::default()
            });
            known.info
        };
        assert_eq!(
            setup.selects(&in_pod("shop", Some(ContainerKind::Init))),
            Some(true)
        );
        assert_eq!(
            setup.selects(&in_pod("shop", Some(ContainerKind::Ephemeral))),
            Some(true)
        );
        assert_eq!(
            setup.selects(&in_pod("shop", Some(ContainerKind::Regular))),
            Some(false)
        );
        // Named from its annotations, not reported by the API yet.
        assert_eq!(setup.selects(&in_pod("shop", None)), None);
        assert_eq!(
            setup.selects(&in_pod("web", Some(ContainerKind::Init))),
            Some(false)
        );
        // Not a pod's container.
        assert_eq!(
            setup.selects(&container("b", Some("x:1"), &[2]).info),
            Some(false)
        );
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
