//! The OCI hook (`enforcer hook oci`). A container runtime runs it at the
//! `createRuntime` stage: the container's process exists in its cgroup but
//! has not run the container's program yet. The hook hands the runtime's
//! state to the agent and waits for its answer, which comes once the
//! container's vShield scope is in the kernel: the policy selected by the
//! container's image decides its first exec. Without the hook, the agent
//! finds containers from their cgroups within a second, and until then
//! every vShield with an image selector applies to them.

use std::path::Path;

use serde_json::json;

use crate::{
    container::registry::HookState,
    control::{self, ControlError, PlacedReply, Reply, Request},
};

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("the runtime's state on stdin is not an OCI state: {0}")]
    State(#[source] serde_json::Error),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("the agent could not place container {id}: {reason}")]
    Refused { id: String, reason: String },
}

/// Announces the container whose OCI state is `state` to the agent at
/// `socket` and returns the agent's answer.
///
/// # Errors
/// The state is not an OCI state, the agent cannot be asked, or it could
/// not place the container.
pub fn announce(socket: &Path, state: &str) -> Result<PlacedReply, HookError> {
    let state: HookState = serde_json::from_str(state).map_err(HookError::State)?;
    let id = state.id.clone();
    match control::ask(socket, &Request::ContainerStarting(state))? {
        Reply::ContainerPlaced(placed) => Ok(placed),
        Reply::Error(reason) => Err(HookError::Refused { id, reason }),
        other @ (Reply::VShields(_) | Reply::Flushed(_) | Reply::Status(_)) => {
            Err(HookError::Refused {
                id,
                reason: format!("unexpected answer {other:?}"),
            })
        }
    }
}

/// The hook's configuration for containers/common's hooks directories
/// (Podman, CRI-O), schema 1.0.0. Pure.
pub fn config(binary: &Path, socket: &Path, fail_closed: bool) -> serde_json::Value {
    let mut args = vec![
        "enforcer".to_owned(),
        "hook".to_owned(),
        "oci".to_owned(),
        "--socket".to_owned(),
        socket.display().to_string(),
    ];
    if fail_closed {
        args.push("--fail-closed".to_owned());
    }
    json!({
        "version": "1.0.0",
        "hook": {
            "path": binary.display().to_string(),
            "args": args,
            "timeout": 10,
        },
        "when": { "always": true },
        "stages": ["createRuntime"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hook_configuration_runs_this_binary_at_create_runtime() {
        let config = config(
            Path::new("/usr/local/bin/enforcer"),
            Path::new("/run/enforcer/control.sock"),
            true,
        );
        assert_eq!(config["hook"]["path"], "/usr/local/bin/enforcer");
        assert_eq!(config["stages"][0], "createRuntime");
        assert_eq!(
            config["hook"]["args"],
            json!([
                "enforcer",
                "hook",
                "oci",
                "--socket",
                "/run/enforcer/control.sock",
                "--fail-closed"
            ])
        );
    }

    #[test]
    fn a_state_that_is_not_an_oci_state_is_refused_before_asking() {
        let error = announce(Path::new("/nonexistent/socket"), "{\"pid\": 1}").unwrap_err();
        assert!(matches!(error, HookError::State(_)), "{error}");
        // An OCI runtime's state, as runc and crun write it.
        let state = r#"{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":4242,"bundle":"/b","annotations":{"io.container.manager":"libpod"}}"#;
        let error = announce(Path::new("/nonexistent/socket"), state).unwrap_err();
        assert!(matches!(error, HookError::Control(_)), "{error}");
    }
}
