//! The vShields in force in the running agent: their files resolved, their
//! entries in the kernel maps, their programs attached. A new policy
//! replaces them by diff ([`ActiveVShields::apply`]), at start and on every
//! reload.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::PoisonError,
    time::Instant,
};

use aya::{
    Ebpf,
    maps::{Array, PerCpuArray, PerCpuValues},
};
use enforcer_common::{CONTAINER_SCOPES_MAX, FileId, VSHIELD_FILES_MAX, VSHIELD_RULES_MAX};
use serde::{Deserialize, Serialize};

use crate::{
    audit::enrich::{PolicyNames, PolicyTable},
    backend::{self, BackendKind, VShieldRoutes},
    container::registry::Known,
    kernel::host::HostIdentity,
    maps::{self, MapAccessError},
    pins::Links,
    policy::{
        ContainerSelector, SelectedDrift,
        vshield::{
            self as vshields, Applied, Entries, Resolved, Scope, Selected, Slots, VShield,
            VShieldError,
        },
    },
    resolve::{self, Identities, ResolveError, Root},
    scopes::{Placement, Scopes, Selector, drift_placement},
};

/// Policies with more vShields get a summary line instead of one line each.
const LOGGED_ONE_BY_ONE: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum ActiveError {
    #[error(transparent)]
    Slots(#[from] VShieldError),
    #[error("resolving the files of the vShields: {0}")]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Backend(#[from] backend::BackendError),
    #[error(transparent)]
    Map(#[from] MapAccessError),
    #[error("policy {policy}: selector glob {glob:?}: {reason}")]
    Glob {
        policy: String,
        glob: String,
        reason: String,
    },
    #[error(
        "the vShields need {need} {map} entries while the old policy's are replaced, more than the {max} the map holds"
    )]
    Full {
        map: &'static str,
        need: usize,
        max: u32,
    },
}

/// One vShield in force, as `enforcer vshield list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub name: String,
    pub vulnerability: String,
    pub mode: String,
    pub operations: Vec<String>,
    pub scope: String,
    /// Files (identities) it shields.
    pub files: usize,
    /// Its slot: the rule id in kernel events.
    pub slot: u32,
    /// Uses it decided since it came into force (every CPU).
    pub hits: u64,
}

/// What a change did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Change {
    pub vshields: usize,
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
    pub entries_written: usize,
    pub entries_removed: usize,
}

/// Where the files of vShields are looked up.
#[derive(Clone, Copy, Debug)]
pub struct Roots<'a> {
    pub host: &'a HostIdentity,
    pub image_stores: &'a [String],
}

#[derive(Debug)]
pub struct ActiveVShields {
    names: PolicyTable,
    slots: Slots,
    applied: Applied,
    routes: VShieldRoutes,
    /// Known once the backend is attached; until then `apply` only writes
    /// maps (the programs are attached after the first policy is in).
    kind: Option<BackendKind>,
    /// Where the links of the programs vShields need go (with `kind`).
    links: Option<Links>,
    shields: Vec<VShield>,
    /// The slot and resolved files of each vShield of `shields`.
    slots_of: Vec<u32>,
    files_of: Vec<BTreeSet<FileId>>,
    selectors: Vec<Selector>,
    listed: Vec<Listed>,
    /// Known containers, by id, and the scope of each of their groups.
    containers: BTreeMap<String, Known>,
    scopes: Scopes,
    selected: Selected,
    container_scopes: BTreeMap<u64, u32>,
    /// The selected `DriftPolicy`s, in policy order (slot: their
    /// `DRIFT_POLICY` index).
    drift_selectors: Vec<Selector>,
    /// `CONTAINER_DRIFT`: cgroup id -> `DRIFT_POLICY` index.
    container_drift: BTreeMap<u64, u32>,
}

impl ActiveVShields {
    /// No vShields yet; events are named from `names`.
    pub fn new(names: PolicyTable) -> Self {
        Self {
            names,
            slots: Slots::default(),
            applied: Applied::default(),
            routes: VShieldRoutes::default(),
            kind: None,
            links: None,
            shields: Vec::new(),
            slots_of: Vec::new(),
            files_of: Vec::new(),
            selectors: Vec::new(),
            listed: Vec::new(),
            containers: BTreeMap::new(),
            scopes: Scopes::default(),
            selected: Selected::new(),
            container_scopes: BTreeMap::new(),
            drift_selectors: Vec::new(),
            container_drift: BTreeMap::new(),
        }
    }

    /// Takes over what the maps an agent before this one pinned hold (see
    /// [`crate::pins`]): its vShield entries and the containers it placed,
    /// so that the first policy this agent applies replaces them entry by
    /// entry, each rule present until its replacement is, and removes what
    /// the new policy does not have.
    pub fn adopt(&mut self, ebpf: &Ebpf) -> Result<(), MapAccessError> {
        self.applied = Applied::adopt(ebpf)?;
        self.container_scopes = read_by_cgroup(ebpf, maps::CONTAINER_SCOPES)?;
        self.container_drift = read_by_cgroup(ebpf, maps::CONTAINER_DRIFT)?;
        Ok(())
    }

    /// Puts the selected `DriftPolicy`s `selected` in force for the known
    /// containers: [`crate::policy::apply`] wrote their settings from index
    /// `base`, into indices no container points at; here each container's
    /// groups are pointed at the settings that now apply to it, so that a
    /// container is under its old or its new `DriftPolicy`, never neither.
    /// `names` are the policies' names by index, for events.
    pub fn set_drift(
        &mut self,
        ebpf: &mut Ebpf,
        selected: &[SelectedDrift],
        base: u32,
        names: BTreeMap<u32, String>,
    ) -> Result<(), ActiveError> {
        let selectors = selected
            .iter()
            .zip(base..)
            .map(|(policy, index)| compile_selector(index, &policy.name, &policy.selector))
            .collect::<Result<Vec<_>, _>>()?;
        // Events may name old or new indices while the map changes.
        let mut merged = self.current_names();
        merged.drift.extend(names.clone());
        self.set_names(merged);
        self.drift_selectors = selectors;
        self.write_drift(ebpf)?;
        let mut current = self.current_names();
        current.drift = names;
        self.set_names(current);
        Ok(())
    }

    /// Points each known container's groups at its `DriftPolicy`.
    fn write_drift(&mut self, ebpf: &mut Ebpf) -> Result<(), MapAccessError> {
        let placement = drift_placement(&self.drift_selectors, self.containers.values());
        write_by_cgroup(
            ebpf,
            maps::CONTAINER_DRIFT,
            &self.container_drift,
            &placement,
        )?;
        self.container_drift = placement;
        Ok(())
    }

    /// Makes the kernel enforce `shields` instead of the vShields in force.
    ///
    /// Everything that can fail on the policy's account (too many vShields,
    /// too many entries) fails before the first map write, leaving the
    /// previous vShields in force. The writes themselves keep every rule
    /// that stays in force present throughout (see [`Applied::update`]).
    pub fn apply(
        &mut self,
        ebpf: &mut Ebpf,
        shields: &[VShield],
        ruleset: &str,
        roots: Roots<'_>,
    ) -> Result<Change, ActiveError> {
        let assignment = self.slots.assign(shields)?;
        let mut change = self.compare(shields);
        let mut names = PolicyNames {
            ruleset: ruleset.to_owned(),
            // Set by `set_drift`.
            drift: self.current_names().drift,
            ..PolicyNames::default()
        };
        let mut listed = Vec::with_capacity(shields.len());
        if !shields.is_empty() {
            backend::load_identity(ebpf)?;
        }
        // From here on is what applying vShields costs (`cargo xtask bench`
        // holds it to a target); loading the resolver is a one-time cost.
        let started = Instant::now();
        let selectors = selectors(shields, &assignment.of_shield)?;
        let placement = self
            .scopes
            .place(&selectors, self.containers.values(), false);
        let mut files_of = Vec::with_capacity(shields.len());
        let entries = if shields.is_empty() {
            Entries::default()
        } else {
            let resolved = resolve_files(ebpf, shields, &assignment.of_shield, roots)?;
            for item in &resolved {
                names.rules.insert(
                    item.slot,
                    (item.shield.name.clone(), item.shield.vulnerability.clone()),
                );
                listed.push(Listed {
                    name: item.shield.name.clone(),
                    vulnerability: item.shield.vulnerability.clone(),
                    mode: item.shield.mode.to_string(),
                    operations: item
                        .shield
                        .operations()
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                    scope: item.shield.scope.describe(),
                    files: item.files.len(),
                    slot: item.slot,
                    hits: 0,
                });
            }
            for (id, path) in resolved.iter().flat_map(|item| &item.paths) {
                names.paths.entry(*id).or_insert_with(|| path.clone());
            }
            let plain: Vec<Resolved<'_>> = resolved.into_iter().map(|item| item.resolved).collect();
            files_of.extend(plain.iter().map(|item| item.files.clone()));
            vshields::entries(&plain, &placement.selected)
        };
        check_capacity(self.applied.entries(), &entries)?;

        // From here on the kernel changes.
        if let Some(kind) = self.kind {
            self.attach_routes(ebpf, kind, shields)?;
        }
        zero_hits(ebpf, &assignment.fresh)?;
        // Events may name old or new vShields while the maps change.
        self.set_names(self.current_names().merged(&names));
        let (written, removed) = self.write(ebpf, entries, placement)?;
        self.set_names(names);
        self.slots = assignment.slots;
        self.shields = shields.to_vec();
        self.slots_of = assignment.of_shield;
        self.files_of = files_of;
        self.selectors = selectors;
        self.listed = listed;
        change.entries_written = written;
        change.entries_removed = removed;
        if shields.is_empty() && change.entries_removed == 0 {
            return Ok(change);
        }
        tracing::info!(
            vshields = shields.len(),
            files = self.applied.entries().files.len(),
            rules = self.applied.entries().rules.len(),
            entries_written = change.entries_written,
            entries_removed = change.entries_removed,
            apply_ms = started.elapsed().as_secs_f64() * 1000.0,
            "vShields applied: files resolved and kernel maps written"
        );
        Ok(change)
    }

    /// Attaches the programs the vShields in force need, once the backend is
    /// known; later changes attach what new operations need.
    /// Makes the kernel hold `entries` and `placement` instead of what it
    /// holds: first the union of old and new rules, then the containers'
    /// scopes, then without the old rules, so that no container ever points
    /// at a scope whose rules are gone. Returns the entries written and
    /// removed.
    fn write(
        &mut self,
        ebpf: &mut Ebpf,
        entries: Entries,
        placement: Placement,
    ) -> Result<(usize, usize), ActiveError> {
        let union = self.applied.entries().union(&entries);
        let adding = self.applied.update(ebpf, union)?;
        let scopes = write_by_cgroup(
            ebpf,
            maps::CONTAINER_SCOPES,
            &self.container_scopes,
            &placement.by_cgroup,
        )?;
        let removing = self.applied.update(ebpf, entries)?;
        if !adding.set_files.is_empty()
            || !removing.set_files.is_empty()
            || !removing.remove_files.is_empty()
        {
            next_generation(ebpf)?;
        }
        self.container_scopes = placement.by_cgroup;
        self.scopes = placement.scopes;
        self.selected = placement.selected;
        Ok((
            adding.set_rules.len() + adding.set_files.len() + removing.set_files.len() + scopes.0,
            removing.remove_rules.len() + removing.remove_files.len() + scopes.1,
        ))
    }

    /// Puts containers in their vShield scope: new containers, new groups
    /// of known ones, and containers whose image became known. A set of
    /// vShields no container was in before gets its rules first.
    pub fn place(&mut self, ebpf: &mut Ebpf, known: Vec<Known>) -> Result<(), ActiveError> {
        if known.is_empty() {
            return Ok(());
        }
        for item in known {
            let cgroups = self
                .containers
                .get(&item.info.id)
                .map(|old| old.cgroups.clone())
                .unwrap_or_default();
            let mut item = item;
            item.cgroups.extend(cgroups);
            self.containers.insert(item.info.id.clone(), item);
        }
        if self.containers.len() > CONTAINER_SCOPES_MAX as usize {
            tracing::warn!(
                containers = self.containers.len(),
                max = CONTAINER_SCOPES_MAX,
                "more containers than the kernel's scope map holds: the newest are left unknown"
            );
        }
        self.write_drift(ebpf)?;
        let placement = self
            .scopes
            .place(&self.selectors, self.containers.values(), true);
        if placement.selected == self.selected {
            // The rules of every scope are in the kernel already (the common
            // case, and the one an OCI hook waits for): only the containers'
            // scopes are written.
            write_by_cgroup(
                ebpf,
                maps::CONTAINER_SCOPES,
                &self.container_scopes,
                &placement.by_cgroup,
            )?;
            self.container_scopes = placement.by_cgroup;
            self.scopes = placement.scopes;
            return Ok(());
        }
        let entries = self.entries(&placement.selected);
        check_capacity(self.applied.entries(), &entries)?;
        self.write(ebpf, entries, placement)?;
        Ok(())
    }

    /// Groups that no longer exist leave the kernel's scope map.
    pub fn forget(&mut self, ebpf: &mut Ebpf, cgroups: &[u64]) -> Result<(), ActiveError> {
        if cgroups.is_empty() {
            return Ok(());
        }
        for known in self.containers.values_mut() {
            for cgroup in cgroups {
                known.cgroups.remove(cgroup);
            }
        }
        self.containers.retain(|_, known| !known.cgroups.is_empty());
        self.write_drift(ebpf)?;
        let mut by_cgroup = self.container_scopes.clone();
        for cgroup in cgroups {
            by_cgroup.remove(cgroup);
        }
        write_by_cgroup(
            ebpf,
            maps::CONTAINER_SCOPES,
            &self.container_scopes,
            &by_cgroup,
        )?;
        self.container_scopes = by_cgroup;
        Ok(())
    }

    /// The scope code a container's groups are in, if it is placed.
    pub fn scope_of(&self, id: &str) -> Option<u32> {
        let known = self.containers.get(id)?;
        known
            .cgroups
            .iter()
            .find_map(|cgroup| self.container_scopes.get(cgroup).copied())
    }

    /// The entries of the vShields in force for `selected`.
    fn entries(&self, selected: &Selected) -> Entries {
        let resolved: Vec<Resolved<'_>> = self
            .shields
            .iter()
            .zip(&self.slots_of)
            .zip(&self.files_of)
            .map(|((shield, slot), files)| Resolved {
                slot: *slot,
                shield,
                files: files.clone(),
            })
            .collect();
        vshields::entries(&resolved, selected)
    }

    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        kind: BackendKind,
        links: Links,
    ) -> Result<(), ActiveError> {
        self.kind = Some(kind);
        self.links = Some(links);
        let shields = self.shields.clone();
        self.attach_routes(ebpf, kind, &shields)
    }

    /// The vShields in force with their hit counts.
    pub fn list(&self, ebpf: &Ebpf) -> Result<Vec<Listed>, MapAccessError> {
        let hits: PerCpuArray<_, u64> = maps::borrow(ebpf, maps::VSHIELD_HITS)?;
        let mut listed = self.listed.clone();
        for item in &mut listed {
            let values = hits
                .get(&item.slot, 0)
                .map_err(|source| MapAccessError::Map {
                    map: maps::VSHIELD_HITS,
                    source,
                })?;
            item.hits = values.iter().sum();
        }
        Ok(listed)
    }

    /// The vShield operations the attached programs decide.
    pub fn decided(&self) -> Vec<String> {
        vshields::operation_names(self.routes.attached)
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// Adds, removes and changes, by name.
    fn compare(&self, shields: &[VShield]) -> Change {
        let old: BTreeMap<&str, &VShield> = self
            .shields
            .iter()
            .map(|shield| (shield.name.as_str(), shield))
            .collect();
        let new: BTreeSet<&str> = shields.iter().map(|shield| shield.name.as_str()).collect();
        let mut change = Change {
            vshields: shields.len(),
            removed: old.keys().filter(|name| !new.contains(*name)).count(),
            ..Change::default()
        };
        for shield in shields {
            match old.get(shield.name.as_str()) {
                None => change.added += 1,
                Some(previous) if *previous != shield => change.changed += 1,
                Some(_) => {}
            }
        }
        change
    }

    fn attach_routes(
        &mut self,
        ebpf: &mut Ebpf,
        kind: BackendKind,
        shields: &[VShield],
    ) -> Result<(), ActiveError> {
        let ops = shields.iter().fold(0, |ops, shield| ops | shield.ops);
        let before = self.routes.attached;
        let Some(links) = self.links.clone() else {
            return Ok(());
        };
        backend::attach_vshields(ebpf, kind, &mut self.routes, ops, &links)?;
        if ops & !before != 0 {
            log_routes(kind, ops, &self.routes);
        }
        Ok(())
    }

    fn current_names(&self) -> PolicyNames {
        self.names
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_names(&self, names: PolicyNames) {
        *self.names.write().unwrap_or_else(PoisonError::into_inner) = names;
    }
}

/// A vShield with its files and the paths they were found at.
struct Found<'a> {
    resolved: Resolved<'a>,
    paths: BTreeMap<FileId, String>,
}

impl<'a> std::ops::Deref for Found<'a> {
    type Target = Resolved<'a>;

    fn deref(&self) -> &Resolved<'a> {
        &self.resolved
    }
}

/// Resolves the vShields' files in the roots of their scopes.
fn resolve_files<'a>(
    ebpf: &mut Ebpf,
    shields: &'a [VShield],
    slots: &[u32],
    roots: Roots<'_>,
) -> Result<Vec<Found<'a>>, ActiveError> {
    let started = Instant::now();
    let mut host_roots = Vec::new();
    let mut container_roots = Vec::new();
    if shields.iter().any(|shield| !shield.scope.is_containers()) {
        match Root::open(Path::new("/")) {
            Ok(root) => host_roots.push(root),
            Err(error) => tracing::error!(%error, "cannot open the host's root directory"),
        }
    }
    if shields.iter().any(|shield| shield.scope.is_containers()) {
        container_roots = resolve::image_layers(roots.image_stores);
        let layers = container_roots.len();
        container_roots.extend(resolve::running_containers(roots.host));
        tracing::info!(
            image_layers = layers,
            running_containers = container_roots.len() - layers,
            stores = ?roots.image_stores,
            "container vShields: looking up their files in image layers and running containers"
        );
    }
    let identities = Identities::new(ebpf)?;
    let mut out = Vec::with_capacity(shields.len());
    for (shield, slot) in shields.iter().zip(slots) {
        let search = if shield.scope.is_containers() {
            &container_roots
        } else {
            &host_roots
        };
        let mut paths = BTreeMap::new();
        for root in search {
            identities.resolve(root, &shield.files, &mut paths)?;
        }
        log_found(shield, paths.len(), shields.len());
        out.push(Found {
            resolved: Resolved {
                slot: *slot,
                shield,
                files: paths.keys().copied().collect(),
            },
            paths,
        });
    }
    tracing::info!(
        vshields = shields.len(),
        resolve_ms = started.elapsed().as_secs_f64() * 1000.0,
        "vShield files resolved"
    );
    Ok(out)
}

fn log_found(shield: &VShield, files: usize, total: usize) {
    if files == 0 {
        tracing::warn!(
            vshield = %shield.name,
            files = ?shield.files,
            scope = %shield.scope.describe(),
            "vShield matches no file yet: it shields nothing until its files exist in a root searched when the \
             policy is applied (at start-up, on reload and on SIGHUP)"
        );
    } else if total <= LOGGED_ONE_BY_ONE {
        tracing::info!(
            vshield = %shield.name,
            vulnerability = %shield.vulnerability,
            mode = %shield.mode,
            operations = ?shield.operations(),
            scope = %shield.scope.describe(),
            files,
            "vShield in force"
        );
    }
}

/// [`Selector::new`], its error naming the policy (vShield or
/// `DriftPolicy`) `name`.
fn compile_selector(
    slot: u32,
    name: &str,
    selector: &ContainerSelector,
) -> Result<Selector, ActiveError> {
    Selector::new(slot, selector).map_err(|(glob, reason)| ActiveError::Glob {
        policy: name.to_owned(),
        glob,
        reason,
    })
}

/// The selectors of `shields` (with their slots).
fn selectors(shields: &[VShield], slots: &[u32]) -> Result<Vec<Selector>, ActiveError> {
    shields
        .iter()
        .zip(slots)
        .filter_map(|(shield, slot)| match &shield.scope {
            Scope::Selected(selector) => Some(compile_selector(*slot, &shield.name, selector)),
            Scope::Host | Scope::Containers => None,
        })
        .collect()
}

/// Writes the difference between two contents of `CONTAINER_SCOPES`;
/// returns the entries written and removed.
/// Writes the difference between two contents of a map by cgroup id
/// (`CONTAINER_SCOPES`, `CONTAINER_DRIFT`); returns the entries written and
/// removed. A full map leaves a group out: unknown, under the strictest
/// policy, never a weaker one.
fn write_by_cgroup(
    ebpf: &mut Ebpf,
    name: &'static str,
    old: &BTreeMap<u64, u32>,
    new: &BTreeMap<u64, u32>,
) -> Result<(usize, usize), MapAccessError> {
    let map_error = |source| MapAccessError::Map { map: name, source };
    let mut map: aya::maps::HashMap<_, u64, u32> = maps::borrow_mut(ebpf, name)?;
    let mut counts = (0, 0);
    for (cgroup, code) in new {
        if old.get(cgroup) != Some(code) {
            match map.insert(cgroup, code, 0) {
                Ok(()) => counts.0 += 1,
                Err(error) => {
                    tracing::warn!(cgroup, map = name, %error, "container entry not written");
                }
            }
        }
    }
    for cgroup in old.keys().filter(|cgroup| !new.contains_key(cgroup)) {
        match map.remove(cgroup) {
            Ok(()) => counts.1 += 1,
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(source) => return Err(map_error(source)),
        }
    }
    Ok(counts)
}

/// What map `name` (cgroup id -> code) holds.
fn read_by_cgroup(ebpf: &Ebpf, name: &'static str) -> Result<BTreeMap<u64, u32>, MapAccessError> {
    let map: aya::maps::HashMap<_, u64, u32> = maps::borrow(ebpf, name)?;
    map.iter()
        .collect::<Result<_, _>>()
        .map_err(|source| MapAccessError::Map { map: name, source })
}

/// The maps hold the old and the new entries while one replaces the other.
fn check_capacity(old: &Entries, new: &Entries) -> Result<(), ActiveError> {
    room(
        maps::VSHIELD_FILES,
        &old.files,
        &new.files,
        VSHIELD_FILES_MAX,
    )?;
    room(
        maps::VSHIELD_RULES,
        &old.rules,
        &new.rules,
        VSHIELD_RULES_MAX,
    )
}

/// Whether map `map` of `max` entries holds `old` and `new` at once.
fn room<K: Ord, V>(
    map: &'static str,
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    max: u32,
) -> Result<(), ActiveError> {
    let need = old.len() + new.keys().filter(|key| !old.contains_key(key)).count();
    if need > max as usize {
        return Err(ActiveError::Full { map, need, max });
    }
    Ok(())
}

/// Makes the open hook's remembered answers stale (see the kernel's
/// `OVERLAY_FILES`): after the file entries changed, not before, so that an
/// answer computed during the change is not kept.
fn next_generation(ebpf: &mut Ebpf) -> Result<(), MapAccessError> {
    let map_error = |source| MapAccessError::Map {
        map: maps::VSHIELD_GENERATION,
        source,
    };
    let mut generation: Array<_, u32> = maps::borrow_mut(ebpf, maps::VSHIELD_GENERATION)?;
    let current = generation.get(&0, 0).map_err(map_error)?;
    // 0 means "not looked up" in the kernel's entries: skipped on wrapping.
    let next = current.checked_add(1).unwrap_or(1);
    generation.set(0, next, 0).map_err(map_error)
}

/// A slot given to a new vShield counts from zero.
fn zero_hits(ebpf: &mut Ebpf, slots: &[u32]) -> Result<(), MapAccessError> {
    if slots.is_empty() {
        return Ok(());
    }
    let io_error = |source| MapAccessError::Io {
        map: maps::VSHIELD_HITS,
        source,
    };
    let mut hits: PerCpuArray<_, u64> = maps::borrow_mut(ebpf, maps::VSHIELD_HITS)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, source)| io_error(source))?;
    for slot in slots {
        let zeros = PerCpuValues::try_from(vec![0_u64; cpus]).map_err(io_error)?;
        hits.set(*slot, zeros, 0)
            .map_err(|source| MapAccessError::Map {
                map: maps::VSHIELD_HITS,
                source,
            })?;
    }
    Ok(())
}

/// Says which vShield operations the backend decides.
fn log_routes(kind: BackendKind, wanted: u32, routes: &VShieldRoutes) {
    if wanted & !routes.attached == 0 {
        tracing::info!(
            backend = %kind,
            "vShields: every operation they name is decided before it happens"
        );
    } else {
        tracing::warn!(
            backend = %kind,
            "vShields: the signal backend decides execs only (SIGKILL before the first instruction); opens and \
             library loads of shielded files are NOT decided on this kernel: it needs BPF LSM for them"
        );
    }
}
