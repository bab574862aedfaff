//! Audit records in Elastic Common Schema field names, one JSON object per
//! line. Fields without an ECS equivalent live under `enforcer.*`.

use std::collections::BTreeMap;

use serde::Serialize;
use time::OffsetDateTime;

pub use super::lineage::Ancestor;

/// One line of the audit stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
#[expect(
    clippy::large_enum_variant,
    reason = "one record at a time exists, between enrichment and the sinks"
)]
pub enum Record {
    /// A decision of the kernel programs.
    Decision(AuditRecord),
    /// The agent applied or refused a policy change.
    Policy(PolicyRecord),
    /// Records lost or left out since the last accounting record.
    Accounting(AccountingRecord),
    /// A control request refused, or a container an OCI hook placed.
    Control(ControlRecord),
}

impl Record {
    /// `@timestamp`.
    pub fn timestamp(&self) -> &str {
        match self {
            Self::Decision(record) => &record.timestamp,
            Self::Policy(record) => &record.timestamp,
            Self::Accounting(record) => &record.timestamp,
            Self::Control(record) => &record.timestamp,
        }
    }

    pub fn host(&self) -> &Host {
        match self {
            Self::Decision(record) => &record.host,
            Self::Policy(record) => &record.host,
            Self::Accounting(record) => &record.host,
            Self::Control(record) => &record.host,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    pub event: Event,
    pub rule: Rule,
    /// The vulnerability a vShield stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vulnerability: Option<Vulnerability>,
    /// The container the process runs in, as its cgroup names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// The Kubernetes pod, when the container's cgroup is a pod's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<Kubernetes>,
    pub process: Process,
    pub file: File,
    pub user: Id,
    pub group: Id,
    pub host: Host,
    pub agent: Agent,
    pub enforcer: Enforcer,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// `alert` for decisions, `event` for policy changes.
    pub kind: &'static str,
    /// `process` for execs, `library` for executable mappings, `file` for
    /// opens, `configuration` for policy changes; with `intrusion_detection`.
    pub category: [&'static str; 2],
    pub r#type: [&'static str; 2],
    /// `ROUTE-OUTCOME`: route `exec`, `mmap`, `mprotect` or `open`; outcome
    /// `denied`, `killed`, `audited` or `kill-failed`.
    pub action: String,
    /// `failure` when the program did not run, `success` when it did.
    pub outcome: &'static str,
    pub reason: String,
    pub module: &'static str,
    pub dataset: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// `drift-prevention`, or the vShield's name.
    pub name: String,
    /// `drift` or `vshield`.
    pub category: &'static str,
    pub ruleset: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Vulnerability {
    /// `CVE-2021-44228`, `GHSA-...`.
    pub id: String,
    /// `CVE` or `GHSA`.
    pub enumeration: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Process {
    pub pid: u32,
    pub thread: ThreadId,
    pub parent: Parent,
    /// The container's first process (the topmost ancestor in the event's
    /// mount namespace), when the walk reached it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry_leader: Option<Ancestor>,
    /// The task's comm when the decision was made: with the lsm backend the
    /// program that called exec, with signal the new program.
    pub name: String,
    /// The path given to exec (absent for mappings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Container {
    /// The runtime's container id (64 hex digits).
    pub id: String,
    /// `containerd`, `cri-o`, `docker`, `podman` (or `unknown`).
    pub runtime: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
}

/// ECS `container.image.*`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Image {
    pub name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tag: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<ImageHash>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageHash {
    /// The manifest digest (`sha256:...`).
    pub all: Vec<String>,
}

/// Beats' `kubernetes.*`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Kubernetes {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub pod: Pod,
    /// The pod's labels, as the Kubernetes API reports them (absent until
    /// it has).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// `init` or `ephemeral` (`kubectl debug`) for containers that are not
    /// one of the pod's regular containers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<KubernetesContainer>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KubernetesContainer {
    /// `regular`, `init` or `ephemeral`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pod {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ThreadId {
    pub id: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Parent {
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct File {
    /// The path given to exec; for vShields, the file's path in the image
    /// as the agent resolved it; mappings of drift files have none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The file's name (last path component).
    pub name: String,
    /// ECS keeps inode numbers as strings.
    pub inode: String,
    /// `major:minor` of the file system the file is on.
    pub device: String,
    pub r#type: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Id {
    pub id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Host {
    pub hostname: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Agent {
    pub r#type: &'static str,
    pub version: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Enforcer {
    /// `blocked`, `killed`, `audit`, `kill-failed`.
    pub decision: &'static str,
    /// `drift` or `vshield`.
    pub reason: &'static str,
    /// `lsm` or `signal`.
    pub backend: &'static str,
    /// How the file was about to run: `exec`, `mmap` (the dynamic loader or
    /// a library load), `mprotect`, `open`.
    pub via: &'static str,
    /// Drift only: why the file is not from the image: `overlay-upper`,
    /// `memfd`, `writable-mount`, `written`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<&'static str>,
    pub mount_namespace: u32,
    pub cgroup_id: u64,
    /// The ancestors in the event's mount namespace, nearest first, as far
    /// as they still ran when the event was written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lineage: Vec<Ancestor>,
    /// `container` (under the container's first process) or `exec` (under
    /// a process that entered the running container: `kubectl exec`, debug
    /// sessions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<&'static str>,
    /// Why a drift the mode enforces was only audited: `exec-session` (the
    /// `DriftPolicy` audits drift in exec sessions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exemption: Option<&'static str>,
    /// Set when the path was longer than the kernel buffer and was cut.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub path_truncated: bool,
    /// Records of the same container, file and decision that the rate
    /// limit left out before this one.
    #[serde(skip_serializing_if = "is_zero")]
    pub suppressed: u32,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
const fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// Records lost or left out, written when any were since the last one:
/// nothing is lost without a record saying so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccountingRecord {
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    pub event: Event,
    pub host: Host,
    pub agent: Agent,
    pub enforcer: AccountingState,
}

/// A request on the control socket the agent refused, or a container an
/// OCI hook placed (`enforcer.control`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ControlRecord {
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    pub event: Event,
    /// The container a hook named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Id>,
    pub host: Host,
    pub agent: Agent,
    pub enforcer: ControlState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ControlState {
    pub control: ControlEvent,
}

/// What the agent reports about a control request (`enforcer.control`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ControlEvent {
    #[serde(skip)]
    pub at: OffsetDateTime,
    /// `refused`, or `placed` (a hook's container is in its policy).
    pub outcome: &'static str,
    /// `status`, `vshields`, `flush`, `container-starting`, or `unread`
    /// (refused before it was read).
    pub request: String,
    /// `read` (status, vshields) or `change` (container-starting, flush).
    pub access: &'static str,
    /// Who asked, as the kernel says (`SO_PEERCRED`).
    pub peer: ControlPeer,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The container a hook named (also `container.id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Refusals the record limit left out before this one.
    pub suppressed: u64,
}

/// A control socket peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ControlPeer {
    pub pid: Option<i32>,
    pub uid: u32,
    /// The inode number of its mount namespace, when it could be read.
    pub mount_namespace: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccountingState {
    pub accounting: Accounting,
}

/// What the agent reports about lost and suppressed records
/// (`enforcer.accounting`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Accounting {
    #[serde(skip)]
    pub at: OffsetDateTime,
    /// Seconds since the previous accounting record (or the start).
    pub period_s: u64,
    /// Counted in that period.
    pub since: Losses,
    /// Counted since the agent started.
    pub total: Losses,
}

/// Records that did not reach the sinks, by why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Losses {
    /// Left out by the kernel's rate limit (the decisions were carried out).
    pub suppressed: u64,
    /// Not written: the kernel's ring buffer was full.
    pub lost: u64,
    /// Dropped: the agent's writer was behind.
    pub dropped: u64,
    /// Could not be decoded.
    pub undecodable: u64,
    /// Sink writes and flushes that failed.
    pub sink_errors: u64,
    /// Webhook records that will not reach the receiver: refused by it, or
    /// not kept by the spool (full, unwritable, torn by a crash).
    pub undelivered: u64,
}

impl Losses {
    pub const fn any(&self) -> bool {
        self.suppressed
            + self.lost
            + self.dropped
            + self.undecodable
            + self.sink_errors
            + self.undelivered
            > 0
    }

    /// What grew from `before` to `self`.
    #[must_use]
    pub const fn since(&self, before: &Self) -> Self {
        Self {
            suppressed: self.suppressed.saturating_sub(before.suppressed),
            lost: self.lost.saturating_sub(before.lost),
            dropped: self.dropped.saturating_sub(before.dropped),
            undecodable: self.undecodable.saturating_sub(before.undecodable),
            sink_errors: self.sink_errors.saturating_sub(before.sink_errors),
            undelivered: self.undelivered.saturating_sub(before.undelivered),
        }
    }
}

/// A policy change: applied (a new generation is in force) or refused (the
/// previous generation stays in force).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PolicyRecord {
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    pub event: Event,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorField>,
    pub rule: RuleSet,
    pub host: Host,
    pub agent: Agent,
    pub enforcer: PolicyState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorField {
    /// Every problem, one per line, each with its file, line and field.
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleSet {
    pub ruleset: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PolicyState {
    pub policy: PolicyChange,
}

/// What the agent reports about a policy change (`enforcer.policy`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PolicyChange {
    #[serde(skip)]
    pub at: OffsetDateTime,
    /// What started it: `start`, `watch` (a policy file changed) or `sighup`.
    pub trigger: &'static str,
    /// The generation in force after the change: one more than before when
    /// applied, the same when refused.
    pub generation: u64,
    /// The name of the policy in force.
    pub ruleset: String,
    /// The policy paths the agent reads.
    pub paths: Vec<String>,
    /// The problems that made the change refused; empty when applied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// What changed: vShields in force, added, removed and changed, and
    /// kernel map entries written and removed.
    #[serde(flatten)]
    pub change: crate::active::Change,
    /// From the change being seen to the last map write.
    pub apply_ms: f64,
}
