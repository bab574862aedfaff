//! Policy hot reload. The policy files are watched: a change (written in
//! place, replaced by rename, the symlink swap of a Kubernetes config map)
//! becomes one reload request once the files have been quiet for a moment;
//! SIGHUP asks for one too. The image stores are watched as well: a new
//! layer makes the agent look the vShields' files up again. [`InForce::reload`] applies a valid policy by diff and
//! refuses an invalid one, leaving the policy in force untouched.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::Ebpf;
use notify::{EventKind, RecursiveMode, Watcher as _};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::{
    active::{ActiveVShields, Change, Roots},
    audit::record::PolicyChange,
    policy::{Policy, load::agent_policy_at},
};

/// How long policy files must be quiet before a change is read: editors and
/// `kubectl` write a file in several steps.
const POLICY_QUIET: Duration = Duration::from_millis(150);

/// At most this long after the first event, the change is read even if
/// writes go on, so that a change is in force within a second.
const POLICY_LONGEST_WAIT: Duration = Duration::from_millis(600);

/// A new layer directory in an image store is filled after it is created:
/// its files are looked up once the store has been quiet this long, and
/// again [`LAYER_SECOND_LOOK`] later for a layer still being unpacked.
const STORE_QUIET: Duration = Duration::from_secs(2);
const STORE_LONGEST_WAIT: Duration = Duration::from_secs(10);
pub const LAYER_SECOND_LOOK: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
#[error("watching {path}: {source}")]
pub struct WatchError {
    path: PathBuf,
    #[source]
    source: notify::Error,
}

/// Directories watched with inotify (not their subdirectories), reported
/// as one change once they have been quiet for a moment.
#[derive(Debug)]
pub struct DirWatch {
    _watcher: notify::RecommendedWatcher,
    events: mpsc::Receiver<()>,
    quiet: Duration,
    longest_wait: Duration,
    /// The first and the last event of a change not reported yet.
    pending: Option<(tokio::time::Instant, tokio::time::Instant)>,
    /// What is watched, for the log.
    pub directories: Vec<PathBuf>,
}

impl DirWatch {
    fn new(
        directories: BTreeSet<PathBuf>,
        quiet: Duration,
        longest_wait: Duration,
    ) -> Result<Self, WatchError> {
        let (sender, events) = mpsc::channel(1);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Reading the files (the agent's own reload) is not a change.
                let relevant = match event {
                    Ok(event) => !matches!(event.kind, EventKind::Access(_)),
                    // An overflowed queue may hide a change: read the files.
                    Err(_) => true,
                };
                if relevant {
                    // Full: a request is already pending, which covers this one.
                    let _ = sender.try_send(());
                }
            })
            .map_err(|source| WatchError {
                path: PathBuf::new(),
                source,
            })?;
        for directory in &directories {
            watcher
                .watch(directory, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError {
                    path: directory.clone(),
                    source,
                })?;
        }
        Ok(Self {
            _watcher: watcher,
            events,
            quiet,
            longest_wait,
            pending: None,
            directories: directories.into_iter().collect(),
        })
    }

    /// Watches `paths` (policy files and directories). A file is watched
    /// through its directory: replacing it by rename, as editors and
    /// config map updates do, would end a watch on the file itself.
    pub fn policy(paths: &[PathBuf]) -> Result<Self, WatchError> {
        let directories = paths.iter().map(|path| directory_of(path)).collect();
        Self::new(directories, POLICY_QUIET, POLICY_LONGEST_WAIT)
    }

    /// Watches the directories image layers appear in: for each store glob
    /// (`/var/lib/containers/storage/overlay/*/diff`), the directory before
    /// its first wildcard, where it exists. `None` when none does.
    pub fn image_stores(globs: &[String]) -> Result<Option<Self>, WatchError> {
        let directories: BTreeSet<PathBuf> = globs
            .iter()
            .map(|glob| fixed_prefix(glob))
            .filter(|directory| directory.is_dir())
            .collect();
        if directories.is_empty() {
            return Ok(None);
        }
        Self::new(directories, STORE_QUIET, STORE_LONGEST_WAIT).map(Some)
    }

    /// Waits for a change, then for the directories to be quiet.
    /// Cancel-safe: the main loop's `select!` drops this future whenever
    /// something else happens first, and a change seen by a dropped future is
    /// still pending for the next call.
    pub async fn changed(&mut self) {
        loop {
            let Some((first, last)) = self.pending else {
                if self.events.recv().await.is_none() {
                    // The watcher is gone: nothing will change any more.
                    std::future::pending::<()>().await;
                }
                let now = tokio::time::Instant::now();
                self.pending = Some((now, now));
                continue;
            };
            let deadline = first + self.longest_wait;
            let quiet_until = (last + self.quiet).min(deadline);
            match tokio::time::timeout_at(quiet_until, self.events.recv()).await {
                Ok(Some(())) if tokio::time::Instant::now() < deadline => {
                    self.pending = Some((first, tokio::time::Instant::now()));
                }
                _ => {
                    self.pending = None;
                    return;
                }
            }
        }
    }
}

/// The policy files and the image stores, watched.
#[derive(Debug)]
pub struct Watches {
    policy: Option<DirWatch>,
    stores: Option<DirWatch>,
    /// When to look at the stores once more after a change.
    second_look: Option<tokio::time::Instant>,
}

/// What changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    Policy,
    ImageStores,
}

impl Watches {
    /// Watches `policy_paths` (none for the built-in policy) and the
    /// directories of `store_globs`, and says what it watches.
    pub fn new(policy_paths: &[PathBuf], store_globs: &[String]) -> Self {
        let policy = (!policy_paths.is_empty())
            .then(|| DirWatch::policy(policy_paths))
            .and_then(|watch| match watch {
                Ok(watch) => {
                    tracing::info!(
                        directories = ?watch.directories,
                        "policy files watched: a valid change is put in force by diff, an invalid one is refused \
                         (SIGHUP reloads too)"
                    );
                    Some(watch)
                }
                Err(error) => {
                    tracing::warn!(
                        error = %crate::error_chain(&error),
                        "policy files are NOT watched: changes need SIGHUP"
                    );
                    None
                }
            });
        let stores = match DirWatch::image_stores(store_globs) {
            Ok(Some(watch)) => {
                tracing::info!(
                    directories = ?watch.directories,
                    "image stores watched: the files of vShields are looked up in new layers"
                );
                Some(watch)
            }
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(
                    error = %crate::error_chain(&error),
                    "image stores are NOT watched: vShield files in images pulled from now on are looked up on \
                     SIGHUP only"
                );
                None
            }
        };
        Self {
            policy,
            stores,
            second_look: None,
        }
    }

    /// The next change. Cancel-safe (see [`DirWatch::changed`]).
    pub async fn next(&mut self) -> Changed {
        let second_look = self.second_look;
        tokio::select! {
            () = changed(self.policy.as_mut()) => Changed::Policy,
            () = changed(self.stores.as_mut()) => {
                self.second_look = Some(tokio::time::Instant::now() + LAYER_SECOND_LOOK);
                Changed::ImageStores
            }
            () = at(second_look) => {
                self.second_look = None;
                Changed::ImageStores
            }
        }
    }
}

async fn changed(watch: Option<&mut DirWatch>) {
    match watch {
        Some(watch) => watch.changed().await,
        None => std::future::pending().await,
    }
}

async fn at(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The directory of `glob` before its first component with a wildcard.
fn fixed_prefix(glob: &str) -> PathBuf {
    let mut prefix = PathBuf::from("/");
    for component in glob.split('/').filter(|c| !c.is_empty()) {
        if component.contains(['*', '?', '[', '{']) {
            break;
        }
        prefix.push(component);
    }
    prefix
}

fn directory_of(path: &Path) -> PathBuf {
    if path.is_dir() {
        return path.to_owned();
    }
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// What started a policy change, for logs and events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Start,
    /// A policy file changed.
    Watch,
    Sighup,
    /// A new layer in an image store: the vShields' files are looked up
    /// again, the policy files are not read.
    ImageStores,
}

impl Trigger {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Watch => "watch",
            Self::Sighup => "sighup",
            Self::ImageStores => "image-stores",
        }
    }
}

/// The policy in force and where it came from.
#[derive(Debug)]
pub struct InForce {
    pub policy: Policy,
    /// 1 for the policy the agent started with, one more per applied change.
    pub generation: u64,
    /// The policy paths; empty for the built-in policy.
    pub paths: Vec<PathBuf>,
}

impl InForce {
    /// Reads the policy files again and puts the new policy in force, or
    /// refuses it and leaves the one in force untouched. A change seen by
    /// the watch that leaves the policy as it is does nothing; SIGHUP
    /// applies the policy again in any case, which also looks the vShields'
    /// files up again in image layers and containers that are new.
    pub fn reload(
        &mut self,
        ebpf: &mut Ebpf,
        active: &mut ActiveVShields,
        roots: Roots<'_>,
        trigger: Trigger,
    ) -> Option<PolicyChange> {
        let started = Instant::now();
        if trigger == Trigger::ImageStores {
            self.refresh(ebpf, active, roots);
            return None;
        }
        if self.paths.is_empty() {
            tracing::warn!(
                trigger = trigger.as_str(),
                "no policy files to reload: the agent runs the built-in policy (set with flags)"
            );
            return None;
        }
        let policy = match agent_policy_at(&self.paths) {
            Ok(policy) => policy,
            Err(diagnostics) => {
                let errors: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
                return Some(self.refused(trigger, errors, started));
            }
        };
        if trigger == Trigger::Watch && policy == self.policy {
            tracing::debug!("policy files changed, the policy did not");
            return None;
        }
        match apply(ebpf, active, &policy, roots) {
            Ok(change) => {
                self.policy = policy;
                self.generation += 1;
                Some(self.applied(trigger, change, started))
            }
            Err(error) => Some(self.refused(trigger, vec![error], started)),
        }
    }

    /// Looks the files of the vShields in force up again (new image layers
    /// and containers), without reading the policy files.
    fn refresh(&self, ebpf: &mut Ebpf, active: &mut ActiveVShields, roots: Roots<'_>) {
        if self.policy.vshields.is_empty() {
            return;
        }
        match active.apply(ebpf, &self.policy.vshields, &self.policy.name, roots) {
            Ok(change) => tracing::info!(
                generation = self.generation,
                entries_written = change.entries_written,
                entries_removed = change.entries_removed,
                "vShield files looked up again: the image stores changed"
            ),
            Err(error) => tracing::error!(
                error = %crate::error_chain(&error),
                "looking the vShield files up again failed; the entries in force stay"
            ),
        }
    }

    /// The record of the policy the agent started with.
    pub fn started(&self, change: Change, started: Instant) -> PolicyChange {
        self.applied(Trigger::Start, change, started)
    }

    fn applied(&self, trigger: Trigger, change: Change, started: Instant) -> PolicyChange {
        let record = self.record(trigger, Vec::new(), change, started);
        tracing::info!(
            trigger = trigger.as_str(),
            generation = self.generation,
            policy = %self.policy.name,
            drift_mode = %self.policy.drift.mode,
            vshields = change.vshields,
            added = change.added,
            removed = change.removed,
            changed = change.changed,
            entries_written = change.entries_written,
            entries_removed = change.entries_removed,
            apply_ms = record.apply_ms,
            "policy in force"
        );
        record
    }

    fn refused(&self, trigger: Trigger, errors: Vec<String>, started: Instant) -> PolicyChange {
        for error in &errors {
            tracing::error!("{error}");
        }
        tracing::error!(
            trigger = trigger.as_str(),
            problems = errors.len(),
            generation = self.generation,
            "policy change refused: the previous policy stays fully enforced, unchanged"
        );
        let change = Change {
            vshields: self.policy.vshields.len(),
            ..Change::default()
        };
        self.record(trigger, errors, change, started)
    }

    fn record(
        &self,
        trigger: Trigger,
        errors: Vec<String>,
        change: Change,
        started: Instant,
    ) -> PolicyChange {
        PolicyChange {
            at: OffsetDateTime::now_utc(),
            trigger: trigger.as_str(),
            generation: self.generation,
            ruleset: self.policy.name.clone(),
            paths: self.paths.iter().map(|p| p.display().to_string()).collect(),
            errors,
            change,
            apply_ms: started.elapsed().as_secs_f64() * 1000.0,
        }
    }
}

/// Puts `policy` in force. Whatever can be refused is refused before the
/// first map write: the vShields check their slots, files and map room
/// first, and the drift automaton is compiled before the vShields change.
fn apply(
    ebpf: &mut Ebpf,
    active: &mut ActiveVShields,
    policy: &Policy,
    roots: Roots<'_>,
) -> Result<Change, String> {
    let compiled = crate::policy::compile(policy).map_err(|error| error.to_string())?;
    let change = active
        .apply(ebpf, &policy.vshields, &policy.name, roots)
        .map_err(|error| crate::error_chain(&error))?;
    // One atomic switch of the drift settings for every container and for
    // unknown ones, then each container pointed at its new DriftPolicy (see
    // `policy::apply`).
    let base = crate::policy::apply(ebpf, &compiled).map_err(|error| {
        format!(
            "the vShields of the new policy are in force, its drift settings are not: {}",
            crate::error_chain(&error)
        )
    })?;
    active
        .set_drift(
            ebpf,
            &policy.selected_drift,
            base,
            crate::policy::drift_indices(policy, base),
        )
        .map_err(|error| {
            format!(
                "the new policy's settings are in force, but containers may still be under the \
                 DriftPolicies with selectors of the previous one: {}",
                crate::error_chain(&error)
            )
        })?;
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_are_watched_where_their_globs_stop_being_fixed() {
        assert_eq!(
            fixed_prefix("/var/lib/containers/storage/overlay/*/diff"),
            Path::new("/var/lib/containers/storage/overlay")
        );
        assert_eq!(
            fixed_prefix("/srv/images/{a,b}/root"),
            Path::new("/srv/images")
        );
    }

    #[tokio::test]
    async fn a_change_seen_by_a_cancelled_wait_is_reported_by_the_next() {
        let dir = std::env::temp_dir().join(format!("enforcer-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut watch = DirWatch::new(
            [dir.clone()].into(),
            Duration::from_millis(300),
            Duration::from_secs(5),
        )
        .unwrap();
        std::fs::write(dir.join("policy.yaml"), "x").unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Dropped in its quiet period, as the main loop's select! does.
        let cancelled = tokio::time::timeout(Duration::from_millis(100), watch.changed()).await;
        assert!(cancelled.is_err());
        assert!(watch.pending.is_some());
        tokio::time::timeout(Duration::from_secs(2), watch.changed())
            .await
            .expect("the change is still reported");
        assert!(watch.pending.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
