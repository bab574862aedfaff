//! Ring buffer bytes to typed kernel events. Every length is checked before
//! a byte is read.

use std::mem::size_of;

use enforcer_common::{DecisionEvent, EventHeader, RootNotice, event_kind};

use super::record::{Accounting, ControlEvent, PolicyChange};

/// A record from the kernel, copied out of the ring buffer.
#[derive(Clone, Debug, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "a record moves once, from the ring buffer to its channel; boxing would allocate per event"
)]
pub enum KernelEvent {
    /// For the audit sinks.
    Audit(AuditEvent),
    /// For the agent: a container runs from a root that is not overlayfs
    /// while such roots are not tracked.
    UntrackedRoot(RootNotice),
}

/// A kernel decision, for the audit sinks.
#[derive(Clone, Debug, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "a decision moves once, from the ring buffer to its channel; boxing would allocate per event"
)]
pub enum AuditEvent {
    Decision(DecisionEvent),
    /// Not from the kernel: the agent applied or refused a policy change.
    Policy(Box<PolicyChange>),
    /// Not from the kernel: records lost or left out lately.
    Accounting(Box<Accounting>),
    /// Not from the kernel: a control request refused, or a container an
    /// OCI hook placed.
    Control(Box<ControlEvent>),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than an event header ({need} bytes)")]
    ShortHeader { len: usize, need: usize },
    #[error("{kind} record of {len} bytes, expected {need}")]
    Short {
        kind: &'static str,
        len: usize,
        need: usize,
    },
    #[error("unknown record kind {0} (agent and kernel programs out of step?)")]
    UnknownKind(u32),
}

/// Copies a `T` out of `bytes`, which must hold at least `size_of::<T>()`.
///
/// Only for the plain-integer `#[repr(C)]` types of `enforcer-common`, for
/// which every bit pattern is a valid value.
fn read_pod<T: Copy>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= size_of::<T>()).then(|| {
        // SAFETY: the length was checked above; `read_unaligned` makes no
        // alignment assumption; T is plain integers and integer arrays.
        unsafe { bytes.as_ptr().cast::<T>().read_unaligned() }
    })
}

pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let header: EventHeader = read_pod(bytes).ok_or(DecodeError::ShortHeader {
        len: bytes.len(),
        need: size_of::<EventHeader>(),
    })?;
    match header.kind {
        event_kind::DECISION => read_pod(bytes)
            .map(|event| KernelEvent::Audit(AuditEvent::Decision(event)))
            .ok_or(DecodeError::Short {
                kind: "drift",
                len: bytes.len(),
                need: size_of::<DecisionEvent>(),
            }),
        event_kind::UNTRACKED_ROOT => {
            read_pod(bytes)
                .map(KernelEvent::UntrackedRoot)
                .ok_or(DecodeError::Short {
                    kind: "untracked root",
                    len: bytes.len(),
                    need: size_of::<RootNotice>(),
                })
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use enforcer_common::{
        COMM_LEN, DecisionEvent, EXEC_PATH_LEN, EventHeader, LINEAGE_MAX, NAME_LEN, backend,
        decision, event_kind, layer, reason, via,
    };

    use super::*;

    /// A drift event as the kernel programs would write it for an exec of `path`.
    pub(crate) fn drift_event(path: &str) -> DecisionEvent {
        let mut event = DecisionEvent {
            header: EventHeader {
                kind: event_kind::DECISION,
                pad: 0,
                boot_ns: 5_000_000_123,
            },
            pid: 4242,
            tgid: 4242,
            ppid: 4200,
            uid: 1000,
            gid: 1001,
            mnt_ns: 4_026_532_000,
            cgroup_id: 7777,
            inode: 123_456,
            dev: 45, // 0:45
            decision: decision::BLOCKED,
            reason: reason::DRIFT,
            backend: backend::LSM,
            layer: layer::OVERLAY_UPPER,
            via: via::EXEC,
            path_len: path.len() as u32,
            flags: 0,
            rule: 0,
            suppressed: 0,
            comm: [0; COMM_LEN],
            name: [0; NAME_LEN],
            path: [0; EXEC_PATH_LEN],
            parent_comm: [0; COMM_LEN],
            ancestor_pids: [0; LINEAGE_MAX],
            ancestor_comms: [[0; COMM_LEN]; LINEAGE_MAX],
            ancestors_len: 0,
            leader_tgid: 0,
            leader_nspid: 0,
            leader_pid_ns: 0,
        };
        event.comm[..2].copy_from_slice(b"sh");
        event.path[..path.len()].copy_from_slice(path.as_bytes());
        let name = path.rsplit('/').next().unwrap_or(path);
        event.name[..name.len()].copy_from_slice(name.as_bytes());
        event
    }

    pub(crate) fn as_bytes(event: &DecisionEvent) -> Vec<u8> {
        // SAFETY: DecisionEvent is repr(C) plain integers with no padding.
        unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(event).cast::<u8>(),
                size_of::<DecisionEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_a_drift_event() {
        let event = drift_event("/tmp/dropped");
        assert_eq!(
            decode(&as_bytes(&event)),
            Ok(KernelEvent::Audit(AuditEvent::Decision(event)))
        );
    }

    #[test]
    fn decodes_from_unaligned_bytes() {
        let event = drift_event("/bin/x");
        let mut bytes = vec![0u8];
        bytes.extend(as_bytes(&event));
        assert_eq!(
            decode(&bytes[1..]),
            Ok(KernelEvent::Audit(AuditEvent::Decision(event)))
        );
    }

    #[test]
    fn decodes_an_untracked_root_notice() {
        let notice = RootNotice {
            header: EventHeader {
                kind: event_kind::UNTRACKED_ROOT,
                pad: 0,
                boot_ns: 7,
            },
            mnt_ns: 4_026_532_001,
            dev: 40,
            fs_magic: 0x9123_683e,
            tgid: 99,
            pad: 0,
        };
        // SAFETY: RootNotice is repr(C) plain integers with no padding.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(&notice).cast::<u8>(),
                size_of::<RootNotice>(),
            )
        };
        assert_eq!(decode(bytes), Ok(KernelEvent::UntrackedRoot(notice)));
        assert_eq!(
            decode(&bytes[..20]),
            Err(DecodeError::Short {
                kind: "untracked root",
                len: 20,
                need: size_of::<RootNotice>()
            })
        );
    }

    #[test]
    fn refuses_short_records() {
        assert_eq!(
            decode(&[1, 0, 0]),
            Err(DecodeError::ShortHeader { len: 3, need: 16 })
        );
        let bytes = as_bytes(&drift_event("/x"));
        assert_eq!(
            decode(&bytes[..100]),
            Err(DecodeError::Short {
                kind: "drift",
                len: 100,
                need: size_of::<DecisionEvent>()
            })
        );
    }

    #[test]
    fn refuses_unknown_kinds() {
        let mut bytes = as_bytes(&drift_event("/x"));
        bytes[0] = 99;
        assert_eq!(decode(&bytes), Err(DecodeError::UnknownKind(99)));
    }
}
