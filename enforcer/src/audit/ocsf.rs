//! OCSF (Open Cybersecurity Schema Framework) 1.3.0 form of audit records,
//! for SIEMs and data lakes that ingest OCSF rather than ECS.
//!
//! | Record                        | OCSF class (`class_uid`)          | Activity (`activity_id`) |
//! |-------------------------------|-----------------------------------|--------------------------|
//! | decision, `via: exec`         | Process Activity (1007)           | Launch (1)               |
//! | decision, `via: open`         | File System Activity (1001)       | Open (14)                |
//! | decision, `mmap` / `mprotect` | Module Activity (1005)            | Load (1)                 |
//! | policy change                 | Device Config State Change (5019) | Other (99), named        |
//!
//! Decisions are System Activity (category 1) with the `host` and
//! `security_control` profiles: the file is `process.file`, `file` or
//! `module.file`; the process that made the call is `actor.process` (pid,
//! tid, comm, parent, lineage, container); its uid is `actor.user`. What
//! the enforcer decided is `action`/`disposition` (what the control did) and
//! `status` (whether the file ran), why is `status_detail`. Container and
//! pod are `container.*` under each process object, because OCSF 1.3 only
//! attaches the container profile to processes and devices.
//!
//! OCSF has no home for the rule, the vulnerability, the pod's name,
//! namespace and labels, or the enforcer's own fields (backend, layer,
//! session, cgroup, mount namespace, inode): they go under `unmapped` with
//! the ECS form's names and shapes (`unmapped.enforcer`, `unmapped.rule`,
//! `unmapped.vulnerability`, `unmapped.kubernetes`), so one set of queries
//! reads both forms.
//!
//! Enum ids and attribute names are those of the schema's 1.3.0 tag
//! (github.com/ocsf/ocsf-schema, `dictionary.json`, `events/system/*.json`,
//! `events/discovery/device_config_state_change.json`, `objects/*.json`).

use serde::Serialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::record::{
    AccountingRecord, AccountingState, Ancestor, AuditRecord, ControlRecord, ControlState,
    Kubernetes, PolicyRecord, PolicyState, Record, Rule, Vulnerability,
};

/// The OCSF version whose names and ids this module writes.
const SCHEMA_VERSION: &str = "1.3.0";

/// Appends `record` in OCSF as one JSON object (no newline) to `out`.
pub fn write(record: &Record, out: &mut Vec<u8>) -> serde_json::Result<()> {
    match record {
        Record::Decision(r) => serde_json::to_writer(out, &decision(r)),
        Record::Policy(r) => serde_json::to_writer(out, &policy(r)),
        Record::Accounting(r) => serde_json::to_writer(out, &accounting(r)),
        Record::Control(r) => serde_json::to_writer(out, &control(r)),
    }
}

// ---------------------------------------------------------------------------
// The event envelope, shared by all classes.

/// One OCSF event: the base event's attributes, the class's own (`C`) and
/// what has no OCSF attribute (`U`).
#[derive(Serialize)]
struct Event<'a, C, U> {
    #[serde(flatten)]
    classification: Classification,
    #[serde(flatten)]
    severity: Severity,
    #[serde(flatten)]
    time: Occurrence<'a>,
    #[serde(flatten)]
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_detail: Option<&'a str>,
    message: String,
    metadata: Metadata,
    device: Device<'a>,
    #[serde(flatten)]
    class: C,
    unmapped: U,
}

/// A class and its category, as `categories.json` and the class files
/// number them (`class_uid` = category * 1000 + the class's own uid).
#[derive(Clone, Copy)]
struct Class {
    uid: u32,
    name: &'static str,
    category_uid: u32,
    category_name: &'static str,
}

const PROCESS_ACTIVITY: Class = system(1007, "Process Activity");
const FILE_SYSTEM_ACTIVITY: Class = system(1001, "File System Activity");
const MODULE_ACTIVITY: Class = system(1005, "Module Activity");
const DEVICE_CONFIG_STATE_CHANGE: Class = Class {
    uid: 5019,
    name: "Device Config State Change",
    category_uid: 5,
    category_name: "Discovery",
};

/// OCSF 1.3 has no class for a sensor's account of the events it lost;
/// the base event carries it, with the numbers unmapped.
const BASE_EVENT: Class = Class {
    uid: 0,
    name: "Base Event",
    category_uid: 0,
    category_name: "Uncategorized",
};

const fn system(uid: u32, name: &'static str) -> Class {
    Class {
        uid,
        name,
        category_uid: 1,
        category_name: "System Activity",
    }
}

/// The classification attributes. The captions (`*_name`) are optional in
/// OCSF but written anyway: people read these events too.
#[derive(Serialize)]
struct Classification {
    class_uid: u32,
    class_name: &'static str,
    category_uid: u32,
    category_name: &'static str,
    activity_id: u32,
    activity_name: &'static str,
    /// `class_uid * 100 + activity_id`, as the schema defines it.
    type_uid: u32,
    /// `Class: Activity`, the caption the schema gives each `type_uid`.
    type_name: String,
}

impl Classification {
    fn new(class: Class, activity_id: u32, activity_name: &'static str) -> Self {
        // An `Other` activity names itself in `activity_name`, but its
        // type's caption is still the enum's.
        let type_caption = if activity_id == 99 {
            "Other"
        } else {
            activity_name
        };
        Self {
            class_uid: class.uid,
            class_name: class.name,
            category_uid: class.category_uid,
            category_name: class.category_name,
            activity_id,
            activity_name,
            type_uid: class.uid * 100 + activity_id,
            type_name: format!("{}: {type_caption}", class.name),
        }
    }
}

#[derive(Clone, Copy, Serialize)]
struct Severity {
    severity_id: u8,
    severity: &'static str,
}

const SEVERITY_UNKNOWN: Severity = Severity {
    severity_id: 0,
    severity: "Unknown",
};
const INFORMATIONAL: Severity = Severity {
    severity_id: 1,
    severity: "Informational",
};
const MEDIUM: Severity = Severity {
    severity_id: 3,
    severity: "Medium",
};
const HIGH: Severity = Severity {
    severity_id: 4,
    severity: "High",
};
const CRITICAL: Severity = Severity {
    severity_id: 5,
    severity: "Critical",
};

#[derive(Clone, Copy, Serialize)]
struct Status {
    status_id: u8,
    status: &'static str,
}

const STATUS_UNKNOWN: Status = Status {
    status_id: 0,
    status: "Unknown",
};
const SUCCESS: Status = Status {
    status_id: 1,
    status: "Success",
};
const FAILURE: Status = Status {
    status_id: 2,
    status: "Failure",
};

/// `time` is required and in epoch milliseconds; `time_dt` (the datetime
/// profile) keeps the record's own RFC 3339 stamp, which has nanoseconds.
#[derive(Serialize)]
struct Occurrence<'a> {
    time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_dt: Option<&'a str>,
    /// Minutes ahead of UTC (always 0: the agent writes UTC).
    timezone_offset: i16,
}

impl<'a> Occurrence<'a> {
    fn new(at: Option<OffsetDateTime>, stamp: &'a str) -> Self {
        // The stamps are formatted from an `OffsetDateTime`, so only a
        // stamp that failed to format (empty) has no time. `time` is
        // required: such a record still goes out, at the epoch, rather than
        // being lost.
        let at = at.unwrap_or(OffsetDateTime::UNIX_EPOCH);
        Self {
            time: at.unix_timestamp() * 1000 + i64::from(at.millisecond()),
            time_dt: (!stamp.is_empty()).then_some(stamp),
            timezone_offset: at.offset().whole_minutes(),
        }
    }
}

#[derive(Serialize)]
struct Metadata {
    version: &'static str,
    product: Product,
    /// The ECS `event.dataset`: `enforcer.audit` or `enforcer.policy`.
    log_name: &'static str,
    /// The profiles whose attributes the event uses, so that validators
    /// accept `device`, `action`, `container` and `time_dt`.
    profiles: Vec<&'static str>,
}

impl Metadata {
    fn new(
        log_name: &'static str,
        agent_version: &'static str,
        profiles: Vec<&'static str>,
    ) -> Self {
        Self {
            version: SCHEMA_VERSION,
            product: Product {
                name: "enforcer",
                vendor_name: "enforcer project",
                version: agent_version,
            },
            log_name,
            profiles,
        }
    }
}

#[derive(Serialize)]
struct Product {
    name: &'static str,
    vendor_name: &'static str,
    version: &'static str,
}

/// The host the agent runs on.
#[derive(Serialize)]
struct Device<'a> {
    hostname: &'a str,
    /// `type_id` is required; the agent is made for container hosts, which
    /// are servers (1) whether bare metal or virtual.
    type_id: u8,
    r#type: &'static str,
    os: Os,
}

impl<'a> Device<'a> {
    const fn new(hostname: &'a str) -> Self {
        Self {
            hostname,
            type_id: 1,
            r#type: "Server",
            os: Os {
                name: "Linux",
                type_id: 200,
                r#type: "Linux",
            },
        }
    }
}

#[derive(Serialize)]
struct Os {
    name: &'static str,
    type_id: u16,
    r#type: &'static str,
}

// ---------------------------------------------------------------------------
// Kernel decisions: Process, File System and Module Activity.

/// The attributes of the three decision classes.
#[derive(Serialize)]
struct DecisionClass<'a> {
    #[serde(flatten)]
    control: Control,
    actor: Actor<'a>,
    /// Flattened, so the variant names the attribute: `process`, `file` or
    /// `module`.
    #[serde(flatten)]
    target: Target<'a>,
}

/// The `security_control` profile: what the enforcer did.
#[derive(Clone, Copy, Serialize)]
struct Control {
    action_id: u8,
    action: &'static str,
    disposition_id: u8,
    disposition: &'static str,
}

/// The object the activity was about.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum Target<'a> {
    Process(Process<'a>),
    File(File<'a>),
    Module(Module<'a>),
}

#[derive(Serialize)]
struct Actor<'a> {
    process: Process<'a>,
    user: User<'a>,
}

/// OCSF `process`; every field but `pid` is optional because the kernel
/// event does not always know them.
#[derive(Serialize)]
struct Process<'a> {
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    tid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<File<'a>>,
    #[serde(rename = "parent_process", skip_serializing_if = "Option::is_none")]
    parent: Option<Box<Process<'a>>>,
    /// OCSF lineage is a list of paths, oldest first; an ancestor whose
    /// executable is unknown is listed by its comm rather than left out, so
    /// the depth stays right (the pids are in `unmapped.enforcer.lineage`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    lineage: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<Container<'a>>,
}

impl Process<'_> {
    const fn pid(pid: u32) -> Self {
        Self {
            pid,
            tid: None,
            name: None,
            file: None,
            parent: None,
            lineage: Vec::new(),
            container: None,
        }
    }
}

#[derive(Serialize)]
struct File<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    /// Required. Everything the kernel programs decide on is a regular
    /// file (1): exec, executable mappings and opens of files.
    type_id: u8,
    r#type: &'static str,
}

impl<'a> File<'a> {
    const fn regular(name: &'a str, path: Option<&'a str>) -> Self {
        Self {
            name,
            path,
            type_id: 1,
            r#type: "Regular File",
        }
    }

    /// A file known only by its path.
    fn at(path: &'a str) -> Self {
        Self::regular(path.rsplit('/').next().unwrap_or(path), Some(path))
    }
}

#[derive(Serialize)]
struct Module<'a> {
    file: File<'a>,
    /// Required. Both routes are executable mappings of a file, which
    /// OCSF 1.3 calls Mapped (4); whether it was `mmap` or `mprotect` is
    /// `unmapped.enforcer.via` (the caption must stay the enum's).
    load_type_id: u8,
    load_type: &'static str,
}

#[derive(Serialize)]
struct User<'a> {
    /// OCSF uids are strings (SIDs, ARNs); ours is the numeric uid.
    uid: &'a str,
    /// The process's gid, as the one group OCSF can name without a name.
    groups: [Group<'a>; 1],
}

#[derive(Serialize)]
struct Group<'a> {
    uid: &'a str,
}

#[derive(Serialize)]
struct Container<'a> {
    uid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<Image<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    orchestrator: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_uuid: Option<&'a str>,
}

#[derive(Serialize)]
struct Image<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
    /// The manifest digest the runtime reports (`sha256:...`): the only
    /// stable id of the image the agent has (OCSF's example is the image
    /// id, which runtimes do not always give).
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a str>,
}

/// What has no OCSF attribute, under the ECS form's names.
#[derive(Serialize)]
struct DecisionUnmapped<'a> {
    enforcer: EnforcerFields<'a>,
    rule: &'a Rule,
    #[serde(skip_serializing_if = "Option::is_none")]
    vulnerability: Option<&'a Vulnerability>,
    /// The pod's name, namespace and labels: OCSF 1.3's container object
    /// only has the pod's uid.
    #[serde(skip_serializing_if = "Option::is_none")]
    kubernetes: Option<&'a Kubernetes>,
}

/// ECS `enforcer.*` as it is, with the two process and file fields that
/// OCSF 1.3 cannot hold either.
#[derive(Serialize)]
struct EnforcerFields<'a> {
    #[serde(flatten)]
    decision: &'a super::record::Enforcer,
    #[serde(skip_serializing_if = "Option::is_none")]
    entry_leader: Option<&'a Ancestor>,
    file: InodeId<'a>,
}

/// The file's identity on its file system (OCSF `file.uid` would hold the
/// inode, but an inode is only unique together with its device).
#[derive(Serialize)]
struct InodeId<'a> {
    inode: &'a str,
    device: &'a str,
}

fn decision(r: &AuditRecord) -> Event<'_, DecisionClass<'_>, DecisionUnmapped<'_>> {
    let (severity, control, status) = outcome(r.enforcer.decision);
    let file = File::regular(&r.file.name, r.file.path.as_deref());
    let mut actor = actor_process(r);
    let (classification, target) = match r.enforcer.via {
        "exec" => {
            // The exec keeps the pid, so the launched process is the same
            // pid as the caller: with lsm the program that called exec,
            // which the refusal left running; with signal the new program,
            // whose comm the record names (the caller's is gone).
            let mut launched = Process::pid(r.process.pid);
            if r.enforcer.backend == "signal" {
                launched.name = actor.name.take();
            }
            launched.file = Some(file);
            launched.container = container(r);
            (
                Classification::new(PROCESS_ACTIVITY, 1, "Launch"),
                Target::Process(launched),
            )
        }
        "open" => (
            Classification::new(FILE_SYSTEM_ACTIVITY, 14, "Open"),
            Target::File(file),
        ),
        "mmap" | "mprotect" => (
            Classification::new(MODULE_ACTIVITY, 1, "Load"),
            Target::Module(Module {
                file,
                load_type_id: 4,
                load_type: "Mapped",
            }),
        ),
        // A route this version does not know: still an event about a
        // process running a file, of an activity OCSF calls Unknown.
        _ => {
            let mut target = Process::pid(r.process.pid);
            target.file = Some(file);
            (
                Classification::new(PROCESS_ACTIVITY, 0, "Unknown"),
                Target::Process(target),
            )
        }
    };
    let mut profiles = vec!["host", "security_control", "datetime"];
    if r.container.is_some() {
        profiles.push("container");
    }
    Event {
        classification,
        severity,
        time: Occurrence::new(parse_rfc3339(&r.timestamp), &r.timestamp),
        status,
        status_detail: Some(&r.event.reason),
        message: message(r),
        metadata: Metadata::new(r.event.dataset, r.agent.version, profiles),
        device: Device::new(&r.host.hostname),
        class: DecisionClass {
            control,
            actor: Actor {
                process: actor,
                user: User {
                    uid: &r.user.id,
                    groups: [Group { uid: &r.group.id }],
                },
            },
            target,
        },
        unmapped: DecisionUnmapped {
            enforcer: EnforcerFields {
                decision: &r.enforcer,
                entry_leader: r.process.entry_leader.as_ref(),
                file: InodeId {
                    inode: &r.file.inode,
                    device: &r.file.device,
                },
            },
            rule: &r.rule,
            vulnerability: r.vulnerability.as_ref(),
            kubernetes: r.kubernetes.as_ref(),
        },
    }
}

/// The process that made the call, as the record knows it.
fn actor_process(r: &AuditRecord) -> Process<'_> {
    let parent = &r.process.parent;
    let mut parent_process = Process::pid(parent.pid);
    parent_process.name = parent.name.as_deref();
    parent_process.file = parent.executable.as_deref().map(File::at);
    let mut actor = Process::pid(r.process.pid);
    actor.tid = Some(r.process.thread.id);
    actor.name = Some(&r.process.name);
    actor.parent = Some(Box::new(parent_process));
    actor.lineage = r
        .enforcer
        .lineage
        .iter()
        .rev()
        .map(|a| a.executable.as_deref().unwrap_or(&a.name))
        .collect();
    actor.container = container(r);
    actor
}

fn container(r: &AuditRecord) -> Option<Container<'_>> {
    let c = r.container.as_ref()?;
    Some(Container {
        uid: &c.id,
        name: c.name.as_deref(),
        image: c.image.as_ref().map(|i| Image {
            name: &i.name,
            tag: i.tag.first().map(String::as_str),
            uid: i
                .hash
                .as_ref()
                .and_then(|h| h.all.first())
                .map(String::as_str),
        }),
        runtime: (c.runtime != "unknown").then_some(c.runtime),
        orchestrator: r.kubernetes.as_ref().map(|_| "Kubernetes"),
        pod_uuid: r.kubernetes.as_ref().and_then(|k| k.pod.uid.as_deref()),
    })
}

/// Severity, control and status of a decision.
///
/// Severity follows OCSF's definition (the effort needed to resolve):
/// a refused or killed program is an intrusion indicator to look at now
/// (High); an audited one ran, but in a mode the operator chose to only
/// watch (Medium); a failed kill is a violation running despite the policy
/// and a control that failed (Critical).
fn outcome(decision: &str) -> (Severity, Control, Status) {
    const fn control(action: (u8, &'static str), disposition: (u8, &'static str)) -> Control {
        Control {
            action_id: action.0,
            action: action.1,
            disposition_id: disposition.0,
            disposition: disposition.1,
        }
    }
    const ALLOWED: (u8, &str) = (1, "Allowed");
    const DENIED: (u8, &str) = (2, "Denied");
    match decision {
        // The signal backend kills the program at its exec, before it runs
        // its own code: the same outcome as a refusal.
        "blocked" | "killed" => (HIGH, control(DENIED, (2, "Blocked")), FAILURE),
        "audit" => (MEDIUM, control(ALLOWED, (15, "Detected")), SUCCESS),
        // The control's action was to deny; it failed, and the program
        // runs (status Success, as the ECS outcome says).
        "kill-failed" => (CRITICAL, control(DENIED, (27, "Error")), SUCCESS),
        _ => (
            SEVERITY_UNKNOWN,
            control((0, "Unknown"), (0, "Unknown")),
            STATUS_UNKNOWN,
        ),
    }
}

/// One sentence for people: `drift: /usr/bin/wget blocked in container web
/// (exec)`.
fn message(r: &AuditRecord) -> String {
    let rule = match (r.enforcer.reason, &r.vulnerability) {
        ("vshield", Some(v)) => format!("vShield {} ({})", r.rule.name, v.id),
        ("vshield", None) => format!("vShield {}", r.rule.name),
        (reason, _) => reason.to_owned(),
    };
    let what = r.file.path.as_deref().unwrap_or(&r.file.name);
    let done = match r.enforcer.decision {
        "audit" => "audited (allowed)",
        "kill-failed" => "ran (kill failed)",
        other => other,
    };
    let place = r.container.as_ref().map_or_else(
        || format!("on host {}", r.host.hostname),
        |c| {
            let name = c.name.as_deref().unwrap_or_else(|| short_id(&c.id));
            format!("in container {name}")
        },
    );
    format!("{rule}: {what} {done} {place} ({})", r.enforcer.via)
}

/// The 12-digit form runtimes show container ids in.
fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

// ---------------------------------------------------------------------------
// Policy changes: Device Config State Change.

/// The attributes of Device Config State Change (the Discovery class for
/// "state changes that impact the security of the device"; OCSF 1.3 has
/// no policy or configuration activity class closer to it).
#[derive(Serialize)]
struct ConfigChange {
    /// A refused change leaves the host under an older policy than the one
    /// its files say: OCSF's Policy mismatch (2). An applied one claims no
    /// state.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    security_states: Vec<SecurityState>,
}

#[derive(Serialize)]
struct SecurityState {
    state_id: u8,
    state: &'static str,
}

#[derive(Serialize)]
struct PolicyUnmapped<'a> {
    /// `enforcer.policy`, serialized as in the ECS form.
    enforcer: &'a PolicyState,
}

fn policy(r: &PolicyRecord) -> Event<'_, ConfigChange, PolicyUnmapped<'_>> {
    let change = &r.enforcer.policy;
    let refused = !change.errors.is_empty();
    // Discovery's activities are Log and Collect (how the state was
    // learnt); a policy being applied is neither, so it is Other, named.
    let (activity_name, severity, status) = if refused {
        ("Policy Refused", MEDIUM, FAILURE)
    } else {
        ("Policy Applied", INFORMATIONAL, SUCCESS)
    };
    Event {
        classification: Classification::new(DEVICE_CONFIG_STATE_CHANGE, 99, activity_name),
        severity,
        time: Occurrence::new(Some(change.at), &r.timestamp),
        status,
        status_detail: r.error.as_ref().map(|e| e.message.as_str()),
        message: r.event.reason.clone(),
        metadata: Metadata::new(r.event.dataset, r.agent.version, vec!["host", "datetime"]),
        device: Device::new(&r.host.hostname),
        class: ConfigChange {
            security_states: if refused {
                vec![SecurityState {
                    state_id: 2,
                    state: "Policy mismatch",
                }]
            } else {
                Vec::new()
            },
        },
        unmapped: PolicyUnmapped {
            enforcer: &r.enforcer,
        },
    }
}

/// The base event has no attributes of its own.
#[derive(Serialize)]
struct NoAttributes {}

#[derive(Serialize)]
struct AccountingUnmapped<'a> {
    /// `enforcer.accounting`, serialized as in the ECS form.
    enforcer: &'a AccountingState,
}

fn accounting(r: &AccountingRecord) -> Event<'_, NoAttributes, AccountingUnmapped<'_>> {
    let books = &r.enforcer.accounting;
    // Records the rate limit left out are by design; losses are failures.
    let failed = r.event.outcome == "failure";
    Event {
        classification: Classification::new(BASE_EVENT, 99, "Audit Accounting"),
        severity: if failed { MEDIUM } else { INFORMATIONAL },
        time: Occurrence::new(Some(books.at), &r.timestamp),
        status: if failed { FAILURE } else { SUCCESS },
        status_detail: None,
        message: r.event.reason.clone(),
        metadata: Metadata::new(r.event.dataset, r.agent.version, vec!["host", "datetime"]),
        device: Device::new(&r.host.hostname),
        class: NoAttributes {},
        unmapped: AccountingUnmapped {
            enforcer: &r.enforcer,
        },
    }
}

#[derive(Serialize)]
struct ControlUnmapped<'a> {
    /// `enforcer.control`, serialized as in the ECS form.
    enforcer: &'a ControlState,
}

fn control(r: &ControlRecord) -> Event<'_, NoAttributes, ControlUnmapped<'_>> {
    let refused = r.event.outcome == "failure";
    Event {
        classification: Classification::new(BASE_EVENT, 99, "Control Request"),
        severity: if refused { MEDIUM } else { INFORMATIONAL },
        time: Occurrence::new(Some(r.enforcer.control.at), &r.timestamp),
        status: if refused { FAILURE } else { SUCCESS },
        status_detail: None,
        message: r.event.reason.clone(),
        metadata: Metadata::new(r.event.dataset, r.agent.version, vec!["host", "datetime"]),
        device: Device::new(&r.host.hostname),
        class: NoAttributes {},
        unmapped: ControlUnmapped {
            enforcer: &r.enforcer,
        },
    }
}

// ---------------------------------------------------------------------------
// Time.

/// Parses the record's RFC 3339 stamp.
fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::Value;

    use super::*;
    use crate::audit::{
        decode::AuditEvent,
        record::{Container, Image, ImageHash, Pod, PolicyChange},
        sink::tests::{drift_record, record_of},
    };

    /// 2026-01-01T00:00:00.123456789Z.
    const STAMP: &str = "2026-01-01T00:00:00.123456789Z";
    const STAMP_MS: i64 = 1_767_225_600_123;

    fn decision_record(path: &str, edit: impl FnOnce(&mut AuditRecord)) -> Record {
        let mut record = drift_record(path);
        let Record::Decision(r) = &mut record else {
            panic!("drift_record is a decision");
        };
        r.timestamp = STAMP.to_owned();
        edit(r);
        record
    }

    fn ocsf(record: &Record) -> Value {
        let mut out = Vec::new();
        write(record, &mut out).unwrap();
        assert!(
            !out.contains(&b'\n'),
            "one line: {}",
            String::from_utf8_lossy(&out)
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert!(v.is_object());
        v
    }

    fn in_container(r: &mut AuditRecord) {
        r.container = Some(Container {
            id: "ab".repeat(32),
            runtime: "containerd",
            name: Some("web".to_owned()),
            image: Some(Image {
                name: "docker.io/library/nginx".to_owned(),
                tag: vec!["1.27".to_owned()],
                hash: Some(ImageHash {
                    all: vec!["sha256:0123".to_owned()],
                }),
            }),
        });
        r.kubernetes = Some(Kubernetes {
            namespace: Some("shop".to_owned()),
            pod: Pod {
                name: Some("web-0".to_owned()),
                uid: Some("3f0c2a8e-4b7d-4c1e-9a55-0d6f2b9e8c11".to_owned()),
            },
            labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
            container: None,
        });
    }

    fn assert_common(v: &Value, class_uid: u64, activity_id: u64) {
        assert_eq!(v["class_uid"], class_uid);
        assert_eq!(v["activity_id"], activity_id);
        assert_eq!(v["type_uid"], class_uid * 100 + activity_id);
        assert_eq!(v["time"], STAMP_MS);
        assert_eq!(v["time_dt"], STAMP);
        assert_eq!(v["metadata"]["version"], "1.3.0");
        assert_eq!(v["metadata"]["product"]["name"], "enforcer");
        assert_eq!(v["metadata"]["product"]["vendor_name"], "enforcer project");
        assert_eq!(
            v["metadata"]["product"]["version"],
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(v["device"]["hostname"], "h");
        assert_eq!(v["device"]["type_id"], 1);
    }

    #[test]
    fn a_blocked_exec_is_a_denied_process_launch() {
        let v = ocsf(&decision_record("/usr/bin/wget", in_container));
        assert_common(&v, 1007, 1);
        assert_eq!(v["category_uid"], 1);
        assert_eq!(v["type_name"], "Process Activity: Launch");
        assert_eq!(v["severity_id"], 4);
        assert_eq!(
            (&v["action_id"], &v["action"]),
            (&2.into(), &"Denied".into())
        );
        assert_eq!(v["disposition_id"], 2);
        assert_eq!(v["disposition"], "Blocked");
        assert_eq!(v["status_id"], 2);
        assert_eq!(
            v["message"],
            "drift: /usr/bin/wget blocked in container web (exec)"
        );
        // The program being executed is the target; the caller the actor.
        assert_eq!(v["process"]["pid"], 4242);
        assert_eq!(v["process"]["file"]["path"], "/usr/bin/wget");
        assert_eq!(v["process"]["file"]["name"], "wget");
        assert_eq!(v["process"]["file"]["type_id"], 1);
        assert!(v["process"].get("name").is_none(), "lsm: never launched");
        assert_eq!(v["actor"]["process"]["name"], "sh");
        assert_eq!(v["actor"]["process"]["parent_process"]["pid"], 4200);
        assert_eq!(v["actor"]["user"]["uid"], "1000");
        assert_eq!(v["actor"]["user"]["groups"][0]["uid"], "1001");
        let container = &v["actor"]["process"]["container"];
        assert_eq!(container["uid"], "ab".repeat(32));
        assert_eq!(container["name"], "web");
        assert_eq!(container["runtime"], "containerd");
        assert_eq!(container["image"]["name"], "docker.io/library/nginx");
        assert_eq!(container["image"]["tag"], "1.27");
        assert_eq!(container["image"]["uid"], "sha256:0123");
        assert_eq!(container["orchestrator"], "Kubernetes");
        assert_eq!(
            container["pod_uuid"],
            "3f0c2a8e-4b7d-4c1e-9a55-0d6f2b9e8c11"
        );
        assert_eq!(v["process"]["container"], *container);
        assert!(
            v["metadata"]["profiles"]
                .as_array()
                .unwrap()
                .contains(&"container".into())
        );
        let unmapped = &v["unmapped"];
        assert_eq!(unmapped["enforcer"]["reason"], "drift");
        assert_eq!(unmapped["enforcer"]["via"], "exec");
        assert_eq!(unmapped["enforcer"]["layer"], "overlay-upper");
        assert_eq!(unmapped["enforcer"]["cgroup_id"], 7777);
        assert_eq!(unmapped["enforcer"]["file"]["inode"], "123456");
        assert_eq!(unmapped["rule"]["name"], "drift-prevention");
        assert_eq!(unmapped["kubernetes"]["namespace"], "shop");
        assert_eq!(unmapped["kubernetes"]["labels"]["app"], "web");
        assert!(unmapped.get("vulnerability").is_none());
    }

    #[test]
    fn with_the_signal_backend_the_comm_is_the_launched_programs() {
        let v = ocsf(&decision_record("/tmp/x", |r| {
            r.enforcer.backend = "signal";
            r.enforcer.decision = "killed";
            r.process.name = "x".to_owned();
        }));
        assert_eq!(v["process"]["name"], "x");
        assert!(v["actor"]["process"].get("name").is_none());
        assert_eq!(v["disposition"], "Blocked");
        assert_eq!(v["status_id"], 2);
        // No container: the message names the host, and no container
        // object is made up.
        assert_eq!(v["message"], "drift: /tmp/x killed on host h (exec)");
        assert!(v["actor"]["process"].get("container").is_none());
    }

    #[test]
    fn audits_and_failed_kills_let_the_file_run() {
        let audit = ocsf(&decision_record("/tmp/x", |r| {
            r.enforcer.decision = "audit";
        }));
        assert_eq!(audit["action_id"], 1);
        assert_eq!(audit["disposition_id"], 15);
        assert_eq!(audit["disposition"], "Detected");
        assert_eq!(audit["status_id"], 1);
        assert_eq!(audit["severity_id"], 3);
        let failed = ocsf(&decision_record("/tmp/x", |r| {
            r.enforcer.decision = "kill-failed";
        }));
        assert_eq!(failed["action_id"], 2);
        assert_eq!(failed["disposition_id"], 27);
        assert_eq!(failed["status_id"], 1);
        assert_eq!(failed["severity_id"], 5);
    }

    #[test]
    fn a_vshield_open_is_file_system_activity_with_its_vulnerability_unmapped() {
        let v = ocsf(&decision_record("/app/lib/log4j-core-2.14.jar", |r| {
            in_container(r);
            r.enforcer.via = "open";
            r.enforcer.reason = "vshield";
            r.enforcer.layer = None;
            r.rule = Rule {
                name: "log4shell".to_owned(),
                category: "vshield",
                ruleset: "default".to_owned(),
            };
            r.vulnerability = Some(Vulnerability {
                id: "CVE-2021-44228".to_owned(),
                enumeration: "CVE",
            });
        }));
        assert_common(&v, 1001, 14);
        assert_eq!(v["category_uid"], 1);
        assert_eq!(v["file"]["path"], "/app/lib/log4j-core-2.14.jar");
        assert_eq!(v["file"]["name"], "log4j-core-2.14.jar");
        assert!(v.get("process").is_none());
        assert_eq!(v["actor"]["process"]["pid"], 4242);
        assert_eq!(v["actor"]["process"]["container"]["name"], "web");
        assert_eq!(v["unmapped"]["vulnerability"]["id"], "CVE-2021-44228");
        assert_eq!(v["unmapped"]["rule"]["name"], "log4shell");
        assert_eq!(
            v["message"],
            "vShield log4shell (CVE-2021-44228): /app/lib/log4j-core-2.14.jar blocked in \
             container web (open)"
        );
    }

    #[test]
    fn executable_mappings_are_module_loads() {
        for via in ["mmap", "mprotect"] {
            let v = ocsf(&decision_record("/tmp/libx.so", |r| {
                r.enforcer.via = via;
                // Mappings of drift files have no path.
                r.file.path = None;
            }));
            assert_common(&v, 1005, 1);
            assert_eq!(v["module"]["file"]["name"], "libx.so");
            assert!(v["module"]["file"].get("path").is_none());
            assert_eq!(v["module"]["load_type_id"], 4);
            assert_eq!(v["unmapped"]["enforcer"]["via"], via);
            assert_eq!(v["actor"]["process"]["pid"], 4242);
        }
    }

    fn policy_record(errors: Vec<String>) -> Record {
        let change = PolicyChange {
            at: parse_rfc3339(STAMP).unwrap(),
            trigger: "watch",
            generation: 4,
            ruleset: "default".to_owned(),
            paths: vec!["/etc/enforcer/policies".to_owned()],
            errors,
            change: crate::active::Change {
                vshields: 2,
                ..crate::active::Change::default()
            },
            apply_ms: 1.5,
        };
        record_of(&AuditEvent::Policy(Box::new(change)))
    }

    #[test]
    fn policy_changes_are_device_config_state_changes() {
        let applied = ocsf(&policy_record(Vec::new()));
        assert_common(&applied, 5019, 99);
        assert_eq!(applied["category_uid"], 5);
        assert_eq!(applied["activity_name"], "Policy Applied");
        assert_eq!(applied["status_id"], 1);
        assert_eq!(applied["severity_id"], 1);
        assert!(applied.get("status_detail").is_none());
        assert!(applied.get("security_states").is_none());
        assert_eq!(applied["unmapped"]["enforcer"]["policy"]["generation"], 4);
        assert_eq!(applied["unmapped"]["enforcer"]["policy"]["vshields"], 2);

        let refused = ocsf(&policy_record(vec![
            "a.yaml:7:3: spec.filez: unknown field".to_owned(),
            "b.yaml:1:1: empty file".to_owned(),
        ]));
        assert_eq!(refused["activity_name"], "Policy Refused");
        assert_eq!(refused["status_id"], 2);
        assert_eq!(
            refused["status_detail"],
            "a.yaml:7:3: spec.filez: unknown field\nb.yaml:1:1: empty file"
        );
        assert_eq!(refused["security_states"][0]["state_id"], 2);
        assert_eq!(
            refused["unmapped"]["enforcer"]["policy"]["errors"][1],
            "b.yaml:1:1: empty file"
        );
    }

    #[test]
    fn rfc3339_stamps_parse_to_the_millisecond() {
        let ms =
            |s| parse_rfc3339(s).map(|t| t.unix_timestamp() * 1000 + i64::from(t.millisecond()));
        assert_eq!(ms(STAMP), Some(STAMP_MS));
        assert_eq!(ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(ms("1970-01-01T02:00:00.5+02:00"), Some(500));
        for bad in [
            "",
            "2026-01-01",
            "2026-13-01T00:00:00Z",
            "2026-01-01T00:00:00",
            "+026-01-01T00:00:00Z",
            "2026-01-01T00:00:00.Z",
        ] {
            assert_eq!(ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn accounting_is_a_base_event_with_its_numbers_unmapped() {
        use crate::audit::{
            decode::AuditEvent,
            record::{Accounting, Losses},
        };
        let since = Losses {
            suppressed: 7,
            lost: 2,
            ..Losses::default()
        };
        let record = record_of(&AuditEvent::Accounting(Box::new(Accounting {
            at: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            period_s: 60,
            since,
            total: since,
        })));
        let mut out = Vec::new();
        write(&record, &mut out).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["class_uid"], 0);
        assert_eq!(v["type_uid"], 99);
        assert_eq!(v["activity_name"], "Audit Accounting");
        assert_eq!(v["time"], 1_700_000_000_000_i64);
        // Two records lost: a failure.
        assert_eq!(v["status_id"], 2);
        assert_eq!(v["severity_id"], 3);
        assert_eq!(
            v["unmapped"]["enforcer"]["accounting"]["since"]["suppressed"],
            7
        );
        assert!(v["message"].as_str().unwrap().contains("2 lost"), "{v}");
    }
}
