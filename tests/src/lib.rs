//! Support for the integration tests: a real agent process, real overlayfs
//! containers, and requirement checks that skip loudly (or fail, when the
//! test run says a feature must be there).
#![expect(
    clippy::missing_panics_doc,
    reason = "test support: a panic is how a test fails"
)]

pub mod agent;
pub mod container;
pub mod cri;
pub mod kubernetes;
pub mod podman;
pub mod require;
pub mod scenario;

use std::{
    process::{Command, Output},
    sync::{Mutex, MutexGuard},
};

use anyhow::{Context as _, bail};

/// Tests attach programs that see every exec on the machine; two agents at
/// once would see each other's containers. Every test holds this lock.
static KERNEL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next test can still run.
    KERNEL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `command` (`what`, as errors name it) to its end; its output when
/// it succeeded, else an error with what it wrote on stderr.
pub fn succeeded(command: &mut Command, what: &str) -> anyhow::Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}
