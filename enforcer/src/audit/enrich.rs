//! Turns decoded kernel events into audit records: wall-clock time, names for
//! kernel codes, host and agent context.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex, PoisonError, RwLock},
};

use enforcer_common::{DecisionEvent, FileId, backend, decision, event_flags, layer, reason, via};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::container::{CgroupIndex, registry::Catalog};

use super::{
    decode::AuditEvent,
    lineage::{self, ExeCache},
    record::{
        Accounting, AccountingRecord, AccountingState, Agent, AuditRecord, Container, ControlEvent,
        ControlRecord, ControlState, Enforcer, ErrorField, Event, File, Host, Id, Image, ImageHash,
        Kubernetes, KubernetesContainer, Losses, Parent, Pod, PolicyChange, PolicyRecord,
        PolicyState, Process, Record, Rule, RuleSet, ThreadId, Vulnerability,
    },
};

/// Converts `bpf_ktime_get_boot_ns()` stamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    /// `CLOCK_REALTIME` minus `CLOCK_BOOTTIME`, in nanoseconds.
    realtime_minus_boot_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; both clocks exist on every
    // kernel this agent supports, so the call cannot fail.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl BootClock {
    pub fn now() -> Self {
        Self {
            realtime_minus_boot_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME),
        }
    }

    #[cfg(test)]
    pub(crate) const fn with_offset(realtime_minus_boot_ns: i128) -> Self {
        Self {
            realtime_minus_boot_ns,
        }
    }

    pub fn wall(&self, boot_ns: u64) -> OffsetDateTime {
        let ns = i128::from(boot_ns) + self.realtime_minus_boot_ns;
        OffsetDateTime::from_unix_timestamp_nanos(ns).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// What events need to know about the policy in force: its name, and the
/// vShields' names by slot and the paths of the files they resolved to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyNames {
    /// `rule.ruleset`.
    pub ruleset: String,
    /// Slot -> (name, vulnerability).
    pub rules: BTreeMap<u32, (String, String)>,
    /// A path each shielded file was found at.
    pub paths: BTreeMap<FileId, String>,
    /// `DRIFT_POLICY` index -> the `DriftPolicy`'s name (`rule.ruleset` of
    /// drift events).
    pub drift: BTreeMap<u32, String>,
}

impl PolicyNames {
    /// Both tables' entries, `newer`'s where both have one: what events need
    /// while a reload is being written, when the kernel may report under
    /// either policy.
    #[must_use]
    pub fn merged(&self, newer: &Self) -> Self {
        let mut merged = self.clone();
        merged.ruleset.clone_from(&newer.ruleset);
        merged
            .rules
            .extend(newer.rules.iter().map(|(k, v)| (*k, v.clone())));
        merged
            .paths
            .extend(newer.paths.iter().map(|(k, v)| (*k, v.clone())));
        merged
            .drift
            .extend(newer.drift.iter().map(|(k, v)| (*k, v.clone())));
        merged
    }
}

/// Shared with the agent, which replaces it when the policy changes.
pub type PolicyTable = Arc<RwLock<PolicyNames>>;

/// Context added to every record.
#[derive(Clone, Debug)]
pub struct Enricher {
    pub clock: BootClock,
    pub hostname: String,
    pub policy: PolicyTable,
    /// Cgroup ids to containers; shared with the container registry.
    pub cgroups: Arc<Mutex<CgroupIndex>>,
    /// What the runtimes say of each container (name, image, pod).
    pub containers: Catalog,
    /// Whether to add to each event's lineage from `/proc` (not in unit
    /// tests, whose events name made-up processes).
    pub proc_lineage: bool,
    /// The host's pid namespace, where pid 1 is not a container's.
    pub host_pid_ns: Option<u32>,
    /// Ancestors' executables read from `/proc` lately.
    pub exe_cache: ExeCache,
}

impl Enricher {
    /// The container and pod of a cgroup, and its first process when known.
    fn container(&self, cgroup_id: u64) -> (Option<Container>, Option<Kubernetes>, Option<u32>) {
        let Some(group) = self
            .cgroups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .container(cgroup_id)
        else {
            return (None, None, None);
        };
        let info = self
            .containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&group.id)
            .cloned();
        let pod = info.as_ref().and_then(|info| info.pod.clone());
        let init_pid = info.as_ref().and_then(|info| info.init_pid);
        let uid = group
            .pod_uid
            .clone()
            .or_else(|| pod.as_ref().and_then(|pod| pod.uid.clone()));
        let kubernetes = (uid.is_some() || pod.is_some()).then(|| Kubernetes {
            namespace: pod.as_ref().and_then(|pod| pod.namespace.clone()),
            pod: Pod {
                name: pod.as_ref().and_then(|pod| pod.name.clone()),
                uid,
            },
            labels: pod.as_ref().and_then(|pod| pod.labels.clone()),
            container: pod
                .as_ref()
                .and_then(|pod| pod.kind)
                .map(|kind| KubernetesContainer {
                    kind: kind.as_str(),
                }),
        });
        let container = Container {
            id: group.id,
            runtime: group.runtime.as_str(),
            name: info.as_ref().and_then(|info| info.name.clone()),
            image: info.and_then(|info| info.image).map(|image| Image {
                name: image.name,
                tag: image.tag.into_iter().collect(),
                hash: image.digest.map(|digest| ImageHash { all: vec![digest] }),
            }),
        };
        (Some(container), kubernetes, init_pid)
    }

    pub fn record(&self, event: &AuditEvent) -> Record {
        self.record_with(event, self.proc_lineage)
    }

    /// [`Self::record`], reading the ancestors' executables from `/proc`
    /// only when `proc_lineage` (and [`Self::proc_lineage`]).
    pub fn record_with(&self, event: &AuditEvent, proc_lineage: bool) -> Record {
        match event {
            AuditEvent::Decision(event) => {
                Record::Decision(self.decision(event, proc_lineage && self.proc_lineage))
            }
            AuditEvent::Policy(change) => Record::Policy(self.policy_change(change)),
            AuditEvent::Accounting(accounting) => Record::Accounting(self.accounting(accounting)),
            AuditEvent::Control(control) => Record::Control(self.control(control)),
        }
    }

    fn accounting(&self, accounting: &Accounting) -> AccountingRecord {
        let Losses {
            suppressed,
            lost,
            dropped,
            undecodable,
            sink_errors,
            undelivered,
        } = accounting.since;
        let failed = lost + dropped + undecodable + sink_errors + undelivered > 0;
        AccountingRecord {
            timestamp: accounting.at.format(&Rfc3339).unwrap_or_default(),
            event: Event {
                kind: "metric",
                category: ["host", "intrusion_detection"],
                r#type: ["info", if failed { "error" } else { "info" }],
                action: "audit-accounting".to_owned(),
                outcome: if failed { "failure" } else { "success" },
                reason: format!(
                    "in the last {}s: {suppressed} records left out by the rate limit, \
                     {lost} lost in the full ring buffer, {dropped} dropped while the sinks were \
                     behind, {undecodable} undecodable, {sink_errors} failed sink writes, \
                     {undelivered} webhook records undelivered",
                    accounting.period_s
                ),
                module: "enforcer",
                dataset: "enforcer.accounting",
            },
            host: Host {
                hostname: self.hostname.clone(),
            },
            agent: agent(),
            enforcer: AccountingState {
                accounting: accounting.clone(),
            },
        }
    }

    fn control(&self, control: &ControlEvent) -> ControlRecord {
        let placed = control.outcome == "placed";
        let peer = &control.peer;
        let who = format!(
            "pid {} (uid {}, mount namespace {})",
            peer.pid
                .map_or_else(|| "?".to_owned(), |pid| pid.to_string()),
            peer.uid,
            peer.mount_namespace
                .map_or_else(|| "?".to_owned(), |ns| ns.to_string())
        );
        let reason = if placed {
            format!(
                "container {} placed in its policy before its first exec, announced by the OCI hook of {who}",
                control.container_id.as_deref().unwrap_or("?")
            )
        } else {
            format!(
                "control request {} ({}) from {who} refused: {}{}",
                control.request,
                control.access,
                control.reason.as_deref().unwrap_or("?"),
                if control.suppressed > 0 {
                    format!(
                        " ({} refusals before this one were not recorded)",
                        control.suppressed
                    )
                } else {
                    String::new()
                }
            )
        };
        ControlRecord {
            timestamp: control.at.format(&Rfc3339).unwrap_or_default(),
            event: Event {
                kind: "event",
                category: ["configuration", "intrusion_detection"],
                r#type: if placed {
                    ["change", "allowed"]
                } else {
                    ["access", "denied"]
                },
                action: format!("control-{}", control.outcome),
                outcome: if placed { "success" } else { "failure" },
                reason,
                module: "enforcer",
                dataset: "enforcer.control",
            },
            container: control.container_id.clone().map(|id| Id { id }),
            host: Host {
                hostname: self.hostname.clone(),
            },
            agent: agent(),
            enforcer: ControlState {
                control: control.clone(),
            },
        }
    }

    fn policy_change(&self, change: &PolicyChange) -> PolicyRecord {
        let (action, outcome) = if change.errors.is_empty() {
            ("policy-applied", "success")
        } else {
            ("policy-rejected", "failure")
        };
        let reason = if change.errors.is_empty() {
            format!(
                "policy generation {} in force ({})",
                change.generation, change.trigger
            )
        } else {
            format!(
                "policy change refused ({}): {} problems; generation {} stays in force",
                change.trigger,
                change.errors.len(),
                change.generation
            )
        };
        PolicyRecord {
            timestamp: change.at.format(&Rfc3339).unwrap_or_default(),
            event: Event {
                kind: "event",
                category: ["configuration", "intrusion_detection"],
                r#type: [
                    "change",
                    if change.errors.is_empty() {
                        "info"
                    } else {
                        "error"
                    },
                ],
                action: action.to_owned(),
                outcome,
                reason,
                module: "enforcer",
                dataset: "enforcer.policy",
            },
            error: (!change.errors.is_empty()).then(|| ErrorField {
                message: change.errors.join("\n"),
            }),
            rule: RuleSet {
                ruleset: change.ruleset.clone(),
            },
            host: Host {
                hostname: self.hostname.clone(),
            },
            agent: agent(),
            enforcer: PolicyState {
                policy: change.clone(),
            },
        }
    }

    fn decision(&self, e: &DecisionEvent, proc_lineage: bool) -> AuditRecord {
        let Decision {
            name: decision_name,
            verb: outcome_verb,
            outcome,
            event_type,
        } = decision(e.decision);
        let (via_name, category) = via(e.via);
        let path_len = (e.path_len as usize).min(e.path.len());
        let path = (e.flags & event_flags::NO_PATH == 0)
            .then(|| String::from_utf8_lossy(&e.path[..path_len]).into_owned());
        let executable = path.clone();
        let RuleContext {
            rule,
            vulnerability,
            layer: layer_name,
            reason: reason_text,
            path,
        } = self.rule_context(e, path);
        let (container, kubernetes, init_pid) = self.container(e.cgroup_id);
        let lineage = lineage::of_event(
            e,
            lineage::Context {
                proc: proc_lineage.then_some((Path::new("/proc"), &self.exe_cache)),
                in_container: container.is_some(),
                init_pid,
                host_pid_ns: self.host_pid_ns,
            },
        );
        AuditRecord {
            timestamp: self
                .clock
                .wall(e.header.boot_ns)
                .format(&Rfc3339)
                .unwrap_or_default(),
            event: Event {
                kind: "alert",
                category: [category, "intrusion_detection"],
                r#type: ["start", event_type],
                action: format!("{via_name}-{outcome_verb}"),
                outcome,
                reason: reason_text,
                module: "enforcer",
                dataset: "enforcer.audit",
            },
            rule,
            vulnerability,
            container,
            kubernetes,
            process: Process {
                pid: e.tgid,
                thread: ThreadId { id: e.pid },
                parent: Parent {
                    pid: e.ppid,
                    name: lineage.parent_name,
                    executable: lineage.parent_executable,
                },
                entry_leader: lineage.leader,
                name: c_string(&e.comm),
                executable,
            },
            file: File {
                name: file_name(e, path.as_deref()),
                path,
                inode: e.inode.to_string(),
                device: format!("{}:{}", e.dev >> 20, e.dev & 0xf_ffff),
                r#type: "file",
            },
            user: Id {
                id: e.uid.to_string(),
            },
            group: Id {
                id: e.gid.to_string(),
            },
            host: Host {
                hostname: self.hostname.clone(),
            },
            agent: agent(),
            enforcer: Enforcer {
                decision: decision_name,
                reason: match e.reason {
                    reason::DRIFT => "drift",
                    reason::VSHIELD => "vshield",
                    _ => "unknown",
                },
                backend: match e.backend {
                    backend::LSM => "lsm",
                    backend::SIGNAL => "signal",
                    _ => "unknown",
                },
                via: via_name,
                layer: layer_name,
                mount_namespace: e.mnt_ns,
                cgroup_id: e.cgroup_id,
                lineage: lineage.ancestors,
                session: lineage.session.map(lineage::Session::as_str),
                exemption: (e.flags & event_flags::EXEC_SESSION != 0).then_some("exec-session"),
                path_truncated: e.flags & event_flags::PATH_TRUNCATED != 0,
                suppressed: e.suppressed,
            },
        }
    }

    /// The name of the `DriftPolicy` at `DRIFT_POLICY` index `index`.
    fn drift_ruleset(&self, index: u32) -> String {
        let names = self.policy.read().unwrap_or_else(PoisonError::into_inner);
        names.drift.get(&index).unwrap_or(&names.ruleset).clone()
    }

    /// What the rule that decided says about the event. `path` is the path
    /// given to exec, if any.
    fn rule_context(&self, e: &DecisionEvent, path: Option<String>) -> RuleContext {
        if e.reason != reason::VSHIELD {
            let (layer_name, reason_text) = layer(e.layer);
            return RuleContext {
                rule: Rule {
                    name: "drift-prevention".to_owned(),
                    category: "drift",
                    ruleset: self.drift_ruleset(e.rule),
                },
                vulnerability: None,
                layer: Some(layer_name),
                reason: reason_text.to_owned(),
                path,
            };
        }
        let table = self.policy.read().unwrap_or_else(PoisonError::into_inner);
        if e.layer == layer::READ_ERROR {
            // Slot 0, no vShield: the check could not be done.
            let (layer_name, _) = layer(e.layer);
            return RuleContext {
                rule: Rule {
                    name: "vshield".to_owned(),
                    category: "vshield",
                    ruleset: table.ruleset.clone(),
                },
                vulnerability: None,
                layer: Some(layer_name),
                reason: "the kernel could not read what the vShield check needs: allowed (the check runs for \
                         every process, and most files are shielded by none)"
                    .to_owned(),
                path,
            };
        }
        let (name, id) = table
            .rules
            .get(&e.rule)
            .cloned()
            .unwrap_or_else(|| (format!("vshield-{}", e.rule), String::new()));
        let resolved = table
            .paths
            .get(&FileId {
                ino: e.inode,
                dev: e.dev,
                pad: 0,
            })
            .cloned();
        let reason = format!("file is shielded by vShield {name} ({id})");
        let enumeration = if id.starts_with("GHSA-") {
            "GHSA"
        } else {
            "CVE"
        };
        RuleContext {
            rule: Rule {
                name,
                category: "vshield",
                ruleset: table.ruleset.clone(),
            },
            vulnerability: (!id.is_empty()).then_some(Vulnerability { id, enumeration }),
            layer: None,
            reason,
            path: path.or(resolved),
        }
    }
}

const fn agent() -> Agent {
    Agent {
        r#type: "enforcer",
        version: env!("CARGO_PKG_VERSION"),
    }
}

/// The rule-dependent parts of a record.
struct RuleContext {
    rule: Rule,
    vulnerability: Option<Vulnerability>,
    layer: Option<&'static str>,
    reason: String,
    path: Option<String>,
}

/// How a kernel decision code reads in a record.
struct Decision {
    /// `enforcer.decision`.
    name: &'static str,
    /// The outcome part of `event.action`.
    verb: &'static str,
    /// `event.outcome`.
    outcome: &'static str,
    /// The second `event.type`.
    event_type: &'static str,
}

fn decision(code: u32) -> Decision {
    let (name, verb, outcome, event_type) = match code {
        decision::BLOCKED => ("blocked", "denied", "failure", "denied"),
        decision::KILLED => ("killed", "killed", "failure", "denied"),
        decision::AUDIT => ("audit", "audited", "success", "allowed"),
        decision::KILL_FAILED => ("kill-failed", "kill-failed", "success", "allowed"),
        _ => ("unknown", "unknown", "unknown", "info"),
    };
    Decision {
        name,
        verb,
        outcome,
        event_type,
    }
}

/// `enforcer.via` and `event.category` for a route code.
fn via(code: u32) -> (&'static str, &'static str) {
    match code {
        via::EXEC => ("exec", "process"),
        via::MMAP => ("mmap", "library"),
        via::MPROTECT => ("mprotect", "library"),
        via::OPEN => ("open", "file"),
        _ => ("unknown", "process"),
    }
}

/// `enforcer.layer` and `event.reason` for a layer code.
fn layer(code: u32) -> (&'static str, &'static str) {
    match code {
        layer::OVERLAY_UPPER => (
            "overlay-upper",
            "file is not part of the container image (created or modified after the container started)",
        ),
        layer::MEMFD => (
            "memfd",
            "fileless execution: the file is a memfd, not part of the container image",
        ),
        layer::WRITABLE_MOUNT => (
            "writable-mount",
            "file is on a writable mount outside the container image (tmpfs or volume)",
        ),
        layer::WRITTEN => (
            "written",
            "file was written, created, made executable, renamed or linked in the container",
        ),
        layer::CONTAINER_MOUNT => (
            "container-mount",
            "file is on a mount the container could have made or made read-only (a user namespace's \
             filesystem or mount, a detached mount, or a layer of an overlay it mounted)",
        ),
        layer::UNRESOLVED => (
            "unresolved",
            "the kernel could not find the script the exec ran (fail closed); inode and device are its \
             interpreter's",
        ),
        layer::READ_ERROR => (
            "read-error",
            "the kernel could not read what the check needs: refused for a container process in enforce mode \
             (fail closed), allowed otherwise; the file is not known",
        ),
        layer::UNCHECKED_MOUNT => (
            "unchecked-mount",
            "file is on a read-only mount made by the host or the runtime, and this kernel cannot check whether \
             its filesystem is also mounted writable where a container could have written it (no bpf_loop before \
             5.17): allowed",
        ),
        _ => ("unknown", "file is not part of the container image"),
    }
}

/// `file.name`: the kernel's name of the file, or for a script the kernel
/// could not find (`layer::UNRESOLVED`, where the record's file is the
/// interpreter that stands for it) the last component of the path it ran
/// as.
fn file_name(e: &DecisionEvent, path: Option<&str>) -> String {
    match path.and_then(|path| path.rsplit('/').next()) {
        Some(name) if e.layer == layer::UNRESOLVED && !name.is_empty() => name.to_owned(),
        _ => c_string(&e.name),
    }
}

/// A NUL-padded kernel string.
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// This host's name, for `host.hostname`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use enforcer_common::{FileId, backend, decision, event_flags, layer, reason, via};
    use serde_json::Value;

    use super::*;
    use crate::audit::decode::tests::drift_event;

    fn enricher() -> Enricher {
        Enricher {
            // 2026-01-01T00:00:00Z minus 5 s of boot time.
            clock: BootClock::with_offset(1_767_225_600_000_000_000 - 5_000_000_000),
            hostname: "node-1".to_owned(),
            policy: Arc::new(RwLock::new(PolicyNames {
                ruleset: "builtin-default".to_owned(),
                ..PolicyNames::default()
            })),
            cgroups: Arc::new(Mutex::new(CgroupIndex::new(None))),
            containers: Catalog::default(),
            proc_lineage: false,
            host_pid_ns: None,
            exe_cache: ExeCache::default(),
        }
    }

    fn json(event: &DecisionEvent) -> Value {
        serde_json::to_value(enricher().record(&AuditEvent::Decision(*event))).unwrap()
    }

    #[test]
    fn blocked_exec_uses_ecs_field_names() {
        let v = json(&drift_event("/tmp/dropped"));
        assert_eq!(v["@timestamp"], "2026-01-01T00:00:00.000000123Z");
        assert_eq!(v["event"]["kind"], "alert");
        assert_eq!(v["event"]["category"][0], "process");
        assert_eq!(v["event"]["action"], "exec-denied");
        assert_eq!(v["event"]["outcome"], "failure");
        assert_eq!(v["event"]["type"][1], "denied");
        assert_eq!(v["rule"]["name"], "drift-prevention");
        assert_eq!(v["rule"]["ruleset"], "builtin-default");
        assert_eq!(v["process"]["pid"], 4242);
        assert_eq!(v["process"]["parent"]["pid"], 4200);
        assert_eq!(v["process"]["name"], "sh");
        assert_eq!(v["process"]["executable"], "/tmp/dropped");
        assert_eq!(v["file"]["path"], "/tmp/dropped");
        assert_eq!(v["file"]["name"], "dropped");
        assert_eq!(v["file"]["inode"], "123456");
        assert_eq!(v["file"]["device"], "0:45");
        assert_eq!(v["user"]["id"], "1000");
        assert_eq!(v["group"]["id"], "1001");
        assert_eq!(v["host"]["hostname"], "node-1");
        assert_eq!(v["enforcer"]["decision"], "blocked");
        assert_eq!(v["enforcer"]["reason"], "drift");
        assert_eq!(v["enforcer"]["backend"], "lsm");
        assert_eq!(v["enforcer"]["via"], "exec");
        assert_eq!(v["enforcer"]["layer"], "overlay-upper");
        assert_eq!(v["enforcer"]["cgroup_id"], 7777);
        assert!(v["enforcer"].get("path_truncated").is_none());
    }

    #[test]
    fn killed_and_audit_decisions() {
        let mut event = drift_event("/x");
        event.decision = decision::KILLED;
        event.backend = backend::SIGNAL;
        let v = json(&event);
        assert_eq!(v["enforcer"]["decision"], "killed");
        assert_eq!(v["enforcer"]["backend"], "signal");
        assert_eq!(v["event"]["action"], "exec-killed");

        event.decision = decision::AUDIT;
        let v = json(&event);
        assert_eq!(v["enforcer"]["decision"], "audit");
        assert_eq!(v["event"]["action"], "exec-audited");
        assert_eq!(v["event"]["outcome"], "success");
        assert_eq!(v["event"]["type"][1], "allowed");
    }

    #[test]
    fn mappings_are_library_events_without_a_path() {
        let mut event = drift_event("");
        event.via = via::MMAP;
        event.flags = event_flags::NO_PATH;
        event.name[..10].copy_from_slice(b"libdrop.so");
        let v = json(&event);
        assert_eq!(v["event"]["category"][0], "library");
        assert_eq!(v["event"]["action"], "mmap-denied");
        assert_eq!(v["enforcer"]["via"], "mmap");
        assert_eq!(v["file"]["name"], "libdrop.so");
        assert!(v["file"].get("path").is_none());
        assert!(v["process"].get("executable").is_none());

        event.via = via::MPROTECT;
        assert_eq!(json(&event)["event"]["action"], "mprotect-denied");
    }

    #[test]
    fn an_unresolved_script_is_named_by_the_path_it_ran_as() {
        let mut event = drift_event("/tmp/dropped.sh");
        event.name[..8].copy_from_slice(b"busybox\0");
        event.layer = layer::UNRESOLVED;
        assert_eq!(json(&event)["file"]["name"], "dropped.sh");
        event.layer = layer::OVERLAY_UPPER;
        assert_eq!(json(&event)["file"]["name"], "busybox");
    }

    #[test]
    fn layers_have_names_and_reasons() {
        let mut event = drift_event("/x");
        for (code, name, words) in [
            (
                layer::OVERLAY_UPPER,
                "overlay-upper",
                "not part of the container image",
            ),
            (layer::MEMFD, "memfd", "fileless"),
            (layer::WRITABLE_MOUNT, "writable-mount", "writable mount"),
            (layer::WRITTEN, "written", "written"),
            (layer::CONTAINER_MOUNT, "container-mount", "user namespace"),
            (layer::UNRESOLVED, "unresolved", "fail closed"),
            (layer::READ_ERROR, "read-error", "fail closed"),
            (layer::UNCHECKED_MOUNT, "unchecked-mount", "no bpf_loop"),
        ] {
            event.layer = code;
            let v = json(&event);
            assert_eq!(v["enforcer"]["layer"], name);
            assert!(
                v["event"]["reason"].as_str().unwrap().contains(words),
                "{v}"
            );
        }
    }

    #[test]
    fn a_vshield_check_a_read_left_undecided_names_no_vshield() {
        let mut event = drift_event("");
        event.reason = reason::VSHIELD;
        event.rule = 0;
        event.layer = layer::READ_ERROR;
        event.decision = decision::AUDIT;
        event.via = via::OPEN;
        let v = json(&event);
        assert_eq!(v["rule"]["category"], "vshield");
        assert_eq!(v["enforcer"]["layer"], "read-error");
        assert_eq!(v["enforcer"]["decision"], "audit");
        assert!(v.get("vulnerability").is_none(), "{v}");
        assert!(
            v["event"]["reason"]
                .as_str()
                .unwrap()
                .contains("could not read"),
            "{v}"
        );
    }

    #[test]
    fn vshield_decisions_name_the_vshield_vulnerability_and_file() {
        let enricher = enricher();
        {
            let mut table = enricher.policy.write().unwrap();
            table
                .rules
                .insert(3, ("log4shell".to_owned(), "CVE-2021-44228".to_owned()));
            table.paths.insert(
                FileId {
                    ino: 123_456,
                    dev: 45,
                    pad: 0,
                },
                "/app/lib/log4j-core-2.14.1.jar".to_owned(),
            );
        }
        let mut event = drift_event("");
        event.reason = reason::VSHIELD;
        event.rule = 3;
        event.layer = 0;
        event.via = via::OPEN;
        event.flags = event_flags::NO_PATH;
        let v = serde_json::to_value(enricher.record(&AuditEvent::Decision(event))).unwrap();
        assert_eq!(v["rule"]["name"], "log4shell");
        assert_eq!(v["rule"]["category"], "vshield");
        assert_eq!(v["vulnerability"]["id"], "CVE-2021-44228");
        assert_eq!(v["vulnerability"]["enumeration"], "CVE");
        assert_eq!(v["event"]["action"], "open-denied");
        assert_eq!(v["event"]["category"][0], "file");
        assert_eq!(v["enforcer"]["reason"], "vshield");
        assert!(v["enforcer"].get("layer").is_none());
        assert_eq!(v["file"]["path"], "/app/lib/log4j-core-2.14.1.jar");
        assert!(v["process"].get("executable").is_none());
        // A drift record has no vulnerability.
        assert!(json(&drift_event("/x")).get("vulnerability").is_none());
    }

    #[test]
    fn unknown_codes_are_named_unknown_not_dropped() {
        let mut event = drift_event("/x");
        event.decision = 77;
        event.backend = 9;
        event.via = 9;
        event.layer = 9;
        let v = json(&event);
        assert_eq!(v["enforcer"]["decision"], "unknown");
        assert_eq!(v["enforcer"]["backend"], "unknown");
        assert_eq!(v["enforcer"]["via"], "unknown");
        assert_eq!(v["enforcer"]["layer"], "unknown");
    }

    #[test]
    fn truncated_and_missing_paths_are_flagged() {
        let mut event = drift_event("/x");
        event.flags = event_flags::PATH_TRUNCATED;
        assert_eq!(json(&event)["enforcer"]["path_truncated"], true);

        event.flags = event_flags::NO_PATH;
        event.path_len = 0;
        let v = json(&event);
        assert!(v["file"].get("path").is_none());
        assert!(v["process"].get("executable").is_none());
    }

    #[test]
    fn a_corrupt_path_length_cannot_overrun() {
        let mut event = drift_event("/x");
        event.path_len = u32::MAX;
        let v = json(&event);
        assert_eq!(
            v["file"]["path"].as_str().unwrap().len(),
            enforcer_common::EXEC_PATH_LEN
        );
    }

    #[test]
    fn a_refused_policy_change_is_an_ecs_configuration_event_with_its_errors() {
        let change = PolicyChange {
            at: OffsetDateTime::UNIX_EPOCH,
            trigger: "watch",
            generation: 4,
            ruleset: "default".to_owned(),
            paths: vec!["/etc/enforcer/policies".to_owned()],
            errors: vec![
                "/etc/enforcer/policies/a.yaml:7:3: spec.filez: unknown field".to_owned(),
                "/etc/enforcer/policies/b.yaml:1:1: empty file".to_owned(),
            ],
            change: crate::active::Change::default(),
            apply_ms: 1.5,
        };
        let v =
            serde_json::to_value(enricher().record(&AuditEvent::Policy(Box::new(change)))).unwrap();
        assert_eq!(v["event"]["kind"], "event");
        assert_eq!(v["event"]["dataset"], "enforcer.policy");
        assert_eq!(v["event"]["action"], "policy-rejected");
        assert_eq!(v["event"]["outcome"], "failure");
        assert_eq!(v["@timestamp"], "1970-01-01T00:00:00Z");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("a.yaml:7:3: spec.filez")
        );
        assert_eq!(v["enforcer"]["policy"]["generation"], 4);
        assert_eq!(v["enforcer"]["policy"]["vshields"], 0);
        assert!(v.get("process").is_none());
    }
}
