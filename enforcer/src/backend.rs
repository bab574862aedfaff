//! Loading the kernel programs and attaching the enforcement backend.
//!
//! Two backends make the same decision with different kernel mechanisms:
//! - `lsm`: a BPF LSM program on `bprm_check_security` refuses the exec with
//!   EPERM before the new program is loaded.
//! - `signal`: for kernels without usable BPF LSM, a raw tracepoint on
//!   `sched_process_exec` kills the new program with SIGKILL before its first
//!   instruction. The exec itself has already succeeded. A second program on
//!   that tracepoint decides the script an exec ran, and, when asked for, one
//!   on `sys_enter` decides executable mappings at `mmap` entry.

use std::{fmt, time::Instant};

use aya::{
    Btf, Ebpf, EbpfError, EbpfLoader,
    programs::{FEntry, Lsm, Program, ProgramError, ProgramInfo, RawTracePoint},
};
use enforcer_common::{
    AgentConfig, KernelOffsets, MmapOffsets, MountOffsets, OverlayLower, TaskOffsets, mount_walk,
    vshield_op,
};

use crate::{
    error_chain,
    kernel::features::{self, ActiveLsms, FeatureError},
    pins::{Links, MapLayout, PinError, Store},
};

/// The kernel object built from `enforcer-ebpf` by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer"));
/// The same programs for kernels without `bpf_loop` (before 5.17), which
/// refuse a program that names a callback function at all.
static OBJECT_BOUNDED: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer-bounded"));

/// LSM programs that decide, named after their hooks. All are required.
const LSM_HOOKS: [&str; 3] = ["bprm_check_security", "mmap_file", "file_mprotect"];
/// LSM programs that track writes on container roots that are not overlayfs.
/// Optional: the `path_*` hooks need `CONFIG_SECURITY_PATH`. Loaded with the
/// backend, attached by [`attach_tracking`] when they are needed: a program
/// on `file_open` costs every open on the machine a BPF trampoline.
const TRACKING_HOOKS: [&str; 6] = [
    "inode_free_security",
    "file_open",
    "path_chmod",
    "path_truncate",
    "inode_rename",
    "inode_link",
];
const SIGNAL_PROGRAM: &str = "sched_process_exec";
/// Decides the scripts an exec ran, on the same tracepoint (5.17+: its walk
/// through the exec's released files uses `bpf_loop`)...
const SIGNAL_SCRIPT_PROGRAM: &str = "sched_process_exec_script";
/// ...or with a walk of 256 steps, where the kernel refuses that program.
const SIGNAL_SCRIPT_BOUNDED_PROGRAM: &str = "sched_process_exec_script_bounded";
/// Decides the ELF interpreter an exec mapped, on the same tracepoint
/// (5.17+: `bpf_find_vma`).
const SIGNAL_INTERP_PROGRAM: &str = "sched_process_exec_interp";
/// Decides executable mappings at `mmap` and `mprotect` entry (5.17+)...
const SIGNAL_EXEC_MAP_PROGRAM: &str = "sys_enter_exec_map";
/// ...or at `mmap` entry only, where the kernel refuses that program.
const SIGNAL_MMAP_PROGRAM: &str = "sys_enter_mmap";
const SIGNAL_MMAP_TRACEPOINT: &str = "sys_enter";
/// Decides the file of an exec that failed with `ENOEXEC` (a script without
/// `#!`, which the caller then runs itself), at system call exit.
const SIGNAL_FAILED_EXEC_PROGRAM: &str = "sys_exit_exec";
const SIGNAL_EXIT_TRACEPOINT: &str = "sys_exit";
const SIGNAL_TRACEPOINT: &str = "sched_process_exec";
/// vShield programs, attached once a policy has vShields: LSM (program,
/// hook, the operation it decides).
const VSHIELD_LSM: [(&str, &str, u32); 4] = [
    (
        "bprm_check_vshield",
        "bprm_check_security",
        vshield_op::EXEC,
    ),
    ("mmap_file_vshield", "mmap_file", vshield_op::LOAD),
    ("file_mprotect_vshield", "file_mprotect", vshield_op::LOAD),
    ("file_open_vshield", "file_open", vshield_op::OPEN),
];
/// The signal backend's vShield program: execs only.
const VSHIELD_SIGNAL: &str = "sched_process_exec_vshield";
/// Resolves the identity of one of the agent's descriptors (never attached).
pub const VSHIELD_IDENTITY: &str = "vshield_identity";

/// What the user asked for (`--backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// lsm when the kernel allows it, else signal (with a warning that says why).
    Auto,
    /// BPF LSM only; fail if the kernel does not allow it.
    Lsm,
    /// Raw tracepoint and SIGKILL.
    Signal,
}

/// The backend that is enforcing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Lsm,
    Signal,
}

impl BackendKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Lsm => "lsm",
            Self::Signal => "signal",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(
        "this agent binary was built without its kernel programs (AYA_BUILD_SKIP was set); \
         rebuild it without AYA_BUILD_SKIP"
    )]
    NoPrograms,
    #[error("loading the kernel object: {0}")]
    Object(#[source] EbpfError),
    #[error("the kernel object has no program {0}")]
    MissingProgram(&'static str),
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("reading kernel BTF for the LSM program: {0}")]
    Btf(#[source] aya::BtfError),
    #[error("BPF LSM is not usable: {0}")]
    LsmUnavailable(String),
    #[error(transparent)]
    Feature(#[from] FeatureError),
    #[error(transparent)]
    Pin(#[from] PinError),
}

/// The loaded kernel object, and where its maps are pinned.
#[derive(Debug)]
pub struct Loaded {
    pub ebpf: Ebpf,
    /// The directory of its pinned maps.
    pub maps: std::path::PathBuf,
    /// Whether the maps were pinned already, by an agent with the same ABI
    /// and map definitions: the policy, containers, written files, counters
    /// and unread records it left are this agent's now.
    pub adopted: bool,
}

/// Loads the object with the kernel layout and agent settings baked into its
/// read-only globals: the one that walks with `bpf_loop` when
/// `mount_offsets` says the kernel has it. Its maps are the ones pinned in
/// `store` for its layout, made and pinned there when there are none.
/// Nothing is attached yet.
pub fn load_object(
    offsets: &KernelOffsets,
    mmap_offsets: &MmapOffsets,
    task_offsets: &TaskOffsets,
    mount_offsets: &MountOffsets,
    overlay_lower: &OverlayLower,
    config: &AgentConfig,
    store: &Store,
) -> Result<Loaded, BackendError> {
    let object = if mount_offsets.walk == mount_walk::NO_LOOP {
        OBJECT_BOUNDED
    } else {
        OBJECT
    };
    if object.is_empty() {
        return Err(BackendError::NoPrograms);
    }
    let layout = MapLayout::of(object)?;
    let (maps, adopted) = store.maps(&layout);
    if adopted {
        layout.check_pinned(&maps)?;
    }
    std::fs::create_dir_all(&maps).map_err(|source| PinError::Io {
        path: maps.clone(),
        source,
    })?;
    let pins: Vec<(&str, std::path::PathBuf)> =
        layout.names().map(|name| (name, maps.join(name))).collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    let ebpf = loader
        .override_global("OFFSETS", offsets, true)
        .override_global("MMAP_OFFSETS", mmap_offsets, true)
        .override_global("TASK_OFFSETS", task_offsets, true)
        .override_global("MOUNT_OFFSETS", mount_offsets, true)
        .override_global("OVERLAY_LOWER", overlay_lower, true)
        .override_global("CONFIG", config, true)
        .load(object)
        .map_err(BackendError::Object)?;
    Ok(Loaded {
        ebpf,
        maps,
        adopted,
    })
}

/// The attached backend and, for `auto`, why lsm was not used.
#[derive(Debug)]
pub struct Attached {
    pub kind: BackendKind,
    pub fallback_reason: Option<String>,
    /// Whether the programs that track writes on container roots that are
    /// not overlayfs are loaded (ready for [`attach_tracking`]), and why not.
    pub tracking: Result<(), String>,
    /// Signal backend: which optional programs are attached, and why not
    /// (`None` for the lsm backend, whose hooks see every route).
    pub signal: Option<SignalExtras>,
    /// Whether the programs that see container processes make, remount
    /// and re-flag filesystems and mounts are attached, and why not.
    pub mount_changes: Result<(), String>,
}

const TRACKING_NEEDS_LSM: &str = "tracking needs BPF LSM hooks";

/// LSM programs that mark what container processes do to filesystems and
/// mounts. `sb_free_security` first: no mark may exist without the hook
/// that deletes it.
const MOUNT_CHANGE_HOOKS: [&str; 5] = [
    "sb_free_security",
    "sb_alloc_security",
    "sb_remount",
    "sb_mount",
    "move_mount",
];
/// fentry programs on the entries of the system calls that change mounts
/// without an LSM hook, native and 32-bit: (program, function). A function
/// the kernel does not have (`mount_setattr` before 5.12, the 32-bit entries
/// without IA32 emulation) is skipped.
#[cfg(target_arch = "aarch64")]
const MOUNT_API_ENTRIES: [(&str, &str); 2] = [
    ("mount_setattr", "__arm64_sys_mount_setattr"),
    ("fsconfig", "__arm64_sys_fsconfig"),
];
#[cfg(not(target_arch = "aarch64"))]
const MOUNT_API_ENTRIES: [(&str, &str); 4] = [
    ("mount_setattr", "__x64_sys_mount_setattr"),
    ("mount_setattr_compat", "__ia32_sys_mount_setattr"),
    ("fsconfig", "__x64_sys_fsconfig"),
    ("fsconfig_compat", "__ia32_sys_fsconfig"),
];
/// Attaches the backend `choice` asks for. Call after the policy maps are
/// filled: from this point on, execs are decided.
/// `signal_routes`: which optional programs the signal backend attaches.
/// Every link goes to `links`.
pub fn attach(
    ebpf: &mut Ebpf,
    choice: BackendChoice,
    signal_routes: &SignalRoutes,
    links: &Links,
) -> Result<Attached, BackendError> {
    match choice {
        BackendChoice::Lsm => Ok(attach_lsm(ebpf, links)?.into_attached()),
        BackendChoice::Signal => attach_signal_backend(ebpf, signal_routes, None, links),
        BackendChoice::Auto => match attach_lsm(ebpf, links) {
            Ok(extras) => Ok(extras.into_attached()),
            Err(lsm_error) => {
                attach_signal_backend(ebpf, signal_routes, Some(error_chain(&lsm_error)), links)
            }
        },
    }
}

/// The signal backend attached, with why lsm was not used (`auto`).
fn attach_signal_backend(
    ebpf: &mut Ebpf,
    signal_routes: &SignalRoutes,
    fallback_reason: Option<String>,
    links: &Links,
) -> Result<Attached, BackendError> {
    let signal = attach_signal(ebpf, signal_routes, links)?;
    Ok(Attached {
        mount_changes: signal.mount_changes(),
        signal: Some(signal),
        kind: BackendKind::Signal,
        fallback_reason,
        tracking: Err(TRACKING_NEEDS_LSM.to_owned()),
    })
}

/// Checks that `bpf` is an active LSM, then loads and attaches the LSM
/// programs. A successful load is the real probe: kernels can list `bpf` and
/// still refuse LSM programs (lockdown, or a policy on `BPF_PROG_LOAD`).
/// Returns whether the optional programs could be loaded too.
fn attach_lsm(ebpf: &mut Ebpf, links: &Links) -> Result<LsmExtras, BackendError> {
    let lsms: ActiveLsms = features::active_lsms()?;
    if !lsms.contains_bpf() {
        return Err(BackendError::LsmUnavailable(format!(
            "bpf is not in the active LSM list ({lsms}); boot with lsm={lsms},bpf to enable it"
        )));
    }
    let btf = Btf::from_sys_fs().map_err(BackendError::Btf)?;
    // Before the decisions: a filesystem a container process makes once
    // they are attached is already marked.
    let mount_changes =
        attach_mount_changes(ebpf, &btf, links).map_err(|error| error_chain(&error));
    for hook in LSM_HOOKS {
        attach_lsm_program(ebpf, hook, &btf, links).map_err(|error| {
            BackendError::LsmUnavailable(format!(
                "the kernel refused the LSM program: {}",
                error_chain(&error)
            ))
        })?;
    }
    let mut tracking = Ok(());
    for hook in TRACKING_HOOKS {
        if let Err(error) = load_lsm_program(ebpf, hook, &btf) {
            tracking = Err(error_chain(&error));
            break;
        }
    }
    Ok(LsmExtras {
        tracking,
        mount_changes,
    })
}

/// The lsm backend's optional programs: loaded or attached, or why not.
struct LsmExtras {
    tracking: Result<(), String>,
    mount_changes: Result<(), String>,
}

impl LsmExtras {
    fn into_attached(self) -> Attached {
        Attached {
            kind: BackendKind::Lsm,
            fallback_reason: None,
            tracking: self.tracking,
            mount_changes: self.mount_changes,
            signal: None,
        }
    }
}

/// Attaches the programs of [`MOUNT_CHANGE_HOOKS`] and
/// [`MOUNT_API_ENTRIES`].
fn attach_mount_changes(ebpf: &mut Ebpf, btf: &Btf, links: &Links) -> Result<(), BackendError> {
    for hook in MOUNT_CHANGE_HOOKS {
        attach_lsm_program(ebpf, hook, btf, links)?;
    }
    for (name, function) in MOUNT_API_ENTRIES {
        let program_error = program_error(name);
        let program: &mut FEntry = typed_program(ebpf, name)?;
        let started = Instant::now();
        match program.load(function, btf) {
            Ok(()) => {}
            Err(ProgramError::Btf(aya::BtfError::UnknownBtfTypeName { .. })) => continue,
            Err(error) => return Err(program_error(error)),
        }
        log_loaded(name, started, program.info());
        let link = program.attach().map_err(&program_error)?;
        let link = program.take_link(link).map_err(&program_error)?;
        links.keep(name, link.into())?;
    }
    Ok(())
}

/// Attaches the tracking programs, which [`attach`] loaded. From here on,
/// what container processes write on a root that is not overlayfs is
/// tracked.
pub fn attach_tracking(ebpf: &mut Ebpf, links: &Links) -> Result<(), BackendError> {
    // inode_free_security comes first: no mark may exist without the hook
    // that deletes it.
    for hook in TRACKING_HOOKS {
        keep_lsm_link(lsm_program(ebpf, hook)?, hook, links)?;
    }
    Ok(())
}

/// Attaches the loaded LSM program `program` and gives its link to
/// `links`.
fn keep_lsm_link(program: &mut Lsm, name: &'static str, links: &Links) -> Result<(), BackendError> {
    let link = program.attach().map_err(program_error(name))?;
    let link = program.take_link(link).map_err(program_error(name))?;
    links.keep(name, link.into())?;
    Ok(())
}

/// The verifier's work dominates start-up on slow machines; this says which
/// program costs what.
fn log_loaded(program: &str, started: Instant, info: Result<ProgramInfo, ProgramError>) {
    let verified_instructions = info.ok().and_then(|info| info.verified_instruction_count());
    tracing::debug!(
        program,
        load_time = ?started.elapsed(),
        verified_instructions,
        "program loaded"
    );
}

fn program_error(program: &'static str) -> impl Fn(ProgramError) -> BackendError {
    move |source| BackendError::Program { program, source }
}

/// The object's program `name`, as the program type `T` it must be.
fn typed_program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, BackendError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(BackendError::MissingProgram(name))?
        .try_into()
        .map_err(program_error(name))
}

fn lsm_program<'a>(ebpf: &'a mut Ebpf, hook: &'static str) -> Result<&'a mut Lsm, BackendError> {
    typed_program(ebpf, hook)
}

fn load_lsm_program<'a>(
    ebpf: &'a mut Ebpf,
    hook: &'static str,
    btf: &Btf,
) -> Result<&'a mut Lsm, BackendError> {
    load_lsm_program_named(ebpf, hook, hook, btf)
}

/// Loads LSM program `program` for `hook`.
fn load_lsm_program_named<'a>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
    hook: &str,
    btf: &Btf,
) -> Result<&'a mut Lsm, BackendError> {
    let loaded = lsm_program(ebpf, program)?;
    let started = Instant::now();
    loaded.load(hook, btf).map_err(program_error(program))?;
    log_loaded(program, started, loaded.info());
    Ok(loaded)
}

fn attach_lsm_program(
    ebpf: &mut Ebpf,
    hook: &'static str,
    btf: &Btf,
    links: &Links,
) -> Result<(), BackendError> {
    keep_lsm_link(load_lsm_program(ebpf, hook, btf)?, hook, links)
}

/// Attaches the exec program, then the optional ones `wanted` allows;
/// returns whether those are attached, and why not.
fn attach_signal(
    ebpf: &mut Ebpf,
    wanted: &SignalRoutes,
    links: &Links,
) -> Result<SignalExtras, BackendError> {
    attach_raw_tracepoint(ebpf, SIGNAL_PROGRAM, SIGNAL_TRACEPOINT, links)?;
    let optional = |ebpf: &mut Ebpf, name, tracepoint| {
        attach_raw_tracepoint(ebpf, name, tracepoint, links).map_err(|error| error_chain(&error))
    };
    let (scripts, scripts_bounded) = match &wanted.scripts {
        Err(reason) => (Err(reason.clone()), None),
        Ok(()) => match optional(ebpf, SIGNAL_SCRIPT_PROGRAM, SIGNAL_TRACEPOINT) {
            Ok(()) => (Ok(()), None),
            Err(reason) => (
                optional(ebpf, SIGNAL_SCRIPT_BOUNDED_PROGRAM, SIGNAL_TRACEPOINT),
                Some(format!(
                    "the kernel refused the program that walks every file an exec released (its bpf_loop \
                     needs 5.17+): {reason}"
                )),
            ),
        },
    };
    let interpreter = wanted
        .interpreter
        .clone()
        .and_then(|()| optional(ebpf, SIGNAL_INTERP_PROGRAM, SIGNAL_TRACEPOINT));
    let (mappings, mprotect) = match &wanted.mappings {
        Err(reason) => (Err(reason.clone()), Err(reason.clone())),
        Ok(()) => match optional(ebpf, SIGNAL_EXEC_MAP_PROGRAM, SIGNAL_MMAP_TRACEPOINT) {
            Ok(()) => (Ok(()), Ok(())),
            Err(reason) => (
                optional(ebpf, SIGNAL_MMAP_PROGRAM, SIGNAL_MMAP_TRACEPOINT),
                Err(format!(
                    "the kernel refused the program that also decides mprotect (its bpf_find_vma needs \
                     5.17+): {reason}"
                )),
            ),
        },
    };
    let failed_exec = match (&wanted.mappings, &scripts) {
        (Err(reason), _) | (_, Err(reason)) => Err(reason.clone()),
        (Ok(()), Ok(())) => optional(ebpf, SIGNAL_FAILED_EXEC_PROGRAM, SIGNAL_EXIT_TRACEPOINT),
    };
    Ok(SignalExtras {
        scripts,
        scripts_bounded,
        interpreter,
        failed_exec,
        mappings,
        mprotect,
    })
}

/// The signal backend's optional routes the agent can run: `Ok` when what
/// their programs read is there (and, for mappings, the user asked), else
/// why not.
#[derive(Clone, Debug)]
pub struct SignalRoutes {
    pub scripts: Result<(), String>,
    /// The ELF interpreter of an exec (its offsets are the mapping check's).
    pub interpreter: Result<(), String>,
    pub mappings: Result<(), String>,
}

/// The signal backend's optional programs: attached, or why not.
#[derive(Debug)]
pub struct SignalExtras {
    pub scripts: Result<(), String>,
    /// Why the script walk stops after 256 released files, when it does.
    pub scripts_bounded: Option<String>,
    pub interpreter: Result<(), String>,
    /// Execs that failed with `ENOEXEC` (with the mapping check, whose
    /// per-system-call cost it shares).
    pub failed_exec: Result<(), String>,
    pub mappings: Result<(), String>,
    pub mprotect: Result<(), String>,
}

impl SignalExtras {
    /// Whether mount changes are seen: by the mapping check's program on
    /// every system call's entry, which marks them.
    fn mount_changes(&self) -> Result<(), String> {
        self.mappings.clone()
    }
}

fn attach_raw_tracepoint(
    ebpf: &mut Ebpf,
    name: &'static str,
    tracepoint: &str,
    links: &Links,
) -> Result<(), BackendError> {
    let program_error = program_error(name);
    let program: &mut RawTracePoint = typed_program(ebpf, name)?;
    let started = Instant::now();
    program.load().map_err(&program_error)?;
    log_loaded(name, started, program.info());
    let link = program.attach(tracepoint).map_err(&program_error)?;
    let link = program.take_link(link).map_err(&program_error)?;
    links.keep(name, link.into())?;
    Ok(())
}

/// Which vShield operations the attached backend decides, and how.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VShieldRoutes {
    /// Bits of `vshield_op` whose programs are attached.
    pub attached: u32,
}

/// Attaches the programs that decide the vShield operations in `ops` (bits
/// of `vshield_op`) that are not attached yet; returns what is attached
/// afterwards. The signal backend has no hook that can refuse an open or a
/// mapping: it decides execs only, by SIGKILL.
pub fn attach_vshields(
    ebpf: &mut Ebpf,
    kind: BackendKind,
    routes: &mut VShieldRoutes,
    ops: u32,
    links: &Links,
) -> Result<(), BackendError> {
    match kind {
        BackendKind::Lsm => {
            let mut btf = None;
            for (program, hook, op) in VSHIELD_LSM {
                // Loaded means attached: the two are done together.
                if ops & op == 0 || ebpf.program(program).is_some_and(|p| p.fd().is_ok()) {
                    continue;
                }
                let btf = match &btf {
                    Some(btf) => btf,
                    None => btf.insert(Btf::from_sys_fs().map_err(BackendError::Btf)?),
                };
                keep_lsm_link(
                    load_lsm_program_named(ebpf, program, hook, btf)?,
                    program,
                    links,
                )?;
            }
            routes.attached |= ops;
        }
        BackendKind::Signal => {
            if ops & vshield_op::EXEC != 0 && routes.attached & vshield_op::EXEC == 0 {
                attach_raw_tracepoint(ebpf, VSHIELD_SIGNAL, SIGNAL_TRACEPOINT, links)?;
                routes.attached |= vshield_op::EXEC;
            }
        }
    }
    Ok(())
}

/// Loads the program that resolves file identities for the agent.
pub fn load_identity(ebpf: &mut Ebpf) -> Result<(), BackendError> {
    let program: &mut RawTracePoint = typed_program(ebpf, VSHIELD_IDENTITY)?;
    if program.fd().is_err() {
        let started = Instant::now();
        program.load().map_err(program_error(VSHIELD_IDENTITY))?;
        log_loaded(VSHIELD_IDENTITY, started, program.info());
    }
    Ok(())
}
