//! Policy hot reload. The policy files are watched: a change (written in
//! place, replaced by rename, the symlink swap of a Kubernetes config map)
//! becomes one reload request once the files have been quiet for a moment;
//! SIGHUP asks for one too. [`InForce::reload`] applies a valid policy by diff and
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

/// How long the files must be quiet before a change is read: editors and
/// `kubectl` write a file in several steps.
const QUIET: Duration = Duration::from_millis(150);

/// At most this long after the first event, the change is read even if
/// writes go on, so that a change is in force within a second.
const LONGEST_WAIT: Duration = Duration::from_millis(600);

#[derive(Debug, thiserror::Error)]
#[error("watching {path} for policy changes: {source}")]
pub struct WatchError {
    path: PathBuf,
    #[source]
    source: notify::Error,
}

/// The directories that hold the policy paths, watched with inotify.
#[derive(Debug)]
pub struct PolicyWatch {
    _watcher: notify::RecommendedWatcher,
    events: mpsc::Receiver<()>,
    /// What is watched, for the log.
    pub directories: Vec<PathBuf>,
}

impl PolicyWatch {
    /// Watches `paths` (policy files and directories). A file is watched
    /// through its directory: replacing it by rename, as editors and
    /// config map updates do, would end a watch on the file itself.
    pub fn new(paths: &[PathBuf]) -> Result<Self, WatchError> {
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
        let directories: BTreeSet<PathBuf> = paths.iter().map(|path| directory_of(path)).collect();
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
            directories: directories.into_iter().collect(),
        })
    }

    /// Waits for a change, then for the files to be quiet.
    pub async fn changed(&mut self) {
        if self.events.recv().await.is_none() {
            // The watcher is gone: nothing will change any more.
            std::future::pending::<()>().await;
        }
        let deadline = tokio::time::Instant::now() + LONGEST_WAIT;
        loop {
            let quiet_until = (tokio::time::Instant::now() + QUIET).min(deadline);
            match tokio::time::timeout_at(quiet_until, self.events.recv()).await {
                Ok(Some(())) if tokio::time::Instant::now() < deadline => {}
                _ => return,
            }
        }
    }
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
}

impl Trigger {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Watch => "watch",
            Self::Sighup => "sighup",
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
    // One atomic switch of the drift settings (see `policy::apply`).
    crate::policy::apply(ebpf, &compiled).map_err(|error| {
        format!(
            "the vShields of the new policy are in force, its drift settings are not: {}",
            crate::error_chain(&error)
        )
    })?;
    Ok(change)
}
