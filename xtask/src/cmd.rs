//! Running commands, with the command line shown and failures explained.

use std::{
    ffi::OsStr,
    process::{Command, Output, Stdio},
};

use anyhow::{Context as _, bail};

/// Prints what is about to run, like `make` does.
pub(crate) fn show(command: &Command) {
    let program = command.get_program().to_string_lossy();
    let args: Vec<_> = command.get_args().map(OsStr::to_string_lossy).collect();
    eprintln!("+ {program} {}", args.join(" "));
}

/// Runs a command with inherited stdio; fails unless it exits 0.
pub(crate) fn run(command: &mut Command) -> anyhow::Result<()> {
    show(command);
    let status = command
        .status()
        .with_context(|| format!("starting {}", command.get_program().display()))?;
    if !status.success() {
        bail!("{} failed: {status}", command.get_program().display());
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout; fails unless it exits 0.
pub(crate) fn output(command: &mut Command) -> anyhow::Result<String> {
    let Output {
        status,
        stdout,
        stderr,
    } = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {}", command.get_program().display()))?;
    if !status.success() {
        bail!(
            "{} failed: {status}: {}",
            command.get_program().display(),
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// Whether a command runs and exits 0 (for probes).
pub(crate) fn succeeds(command: &mut Command) -> bool {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

pub(crate) fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0")
}

/// `cmd` as root: directly when we are root, else through sudo.
pub(crate) fn as_root(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut command = Command::new("sudo");
        command.arg(program);
        command
    }
}
