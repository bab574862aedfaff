//! Builds the kernel programs (`enforcer-ebpf`) for the BPF target and leaves
//! the objects in `OUT_DIR/enforcer` and `OUT_DIR/enforcer-bounded` (for
//! kernels without `bpf_loop`), where `src/backend.rs` embeds them.

use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow, bail};
use aya_build::{Package, Toolchain};

const EBPF_PACKAGE: &str = "enforcer-ebpf";
/// aya-build's own switch for skipping the BPF build.
const SKIP: &str = "AYA_BUILD_SKIP";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={SKIP}");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);

    if env::var(SKIP).is_ok_and(|value| value == "1" || value.eq_ignore_ascii_case("true")) {
        // Lets `cargo check` and IDEs work without the BPF toolchain. The
        // empty object is detected at start-up and the agent refuses to run.
        for object in ["enforcer", "enforcer-bounded"] {
            fs::write(out_dir.join(object), [])
                .with_context(|| format!("writing {}", out_dir.display()))?;
        }
        println!(
            "cargo:warning={SKIP} is set: this agent binary has no kernel programs and will refuse to run"
        );
        return Ok(());
    }

    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !linker_ok {
        bail!(
            "bpf-linker is not installed: run `cargo xtask setup` (or set {SKIP}=1 to build an agent \
             without kernel programs, which refuses to run)"
        );
    }

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|package| package.name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("package {EBPF_PACKAGE} is not in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", ebpf.manifest_path))?;

    aya_build::build_ebpf(
        [Package {
            name: EBPF_PACKAGE,
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
}
