//! Types shared between the enforcer's kernel programs and its agent.
//!
//! Every type here crosses the kernel/user boundary as raw bytes (ring buffer
//! records, map values, load-time globals), so each one is `#[repr(C)]` with
//! explicit padding, uses `u32` codes instead of `bool` or Rust enums (an
//! unknown discriminant read from the kernel must not be undefined
//! behaviour), and has its size and field offsets pinned by the tests at the
//! bottom of this file.
#![no_std]

/// Bumped whenever any layout in this crate changes.
pub const ABI_VERSION: u32 = 19;

/// `OVERLAYFS_SUPER_MAGIC` from the kernel's `include/uapi/linux/magic.h`.
pub const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;

/// `TMPFS_MAGIC`: tmpfs and shmem, which also backs memfd.
pub const TMPFS_MAGIC: u64 = 0x0102_1994;

/// `HUGETLBFS_MAGIC`: backs `memfd_create(MFD_HUGETLB)`.
pub const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;

/// `SB_RDONLY` in `super_block.s_flags`.
pub const SB_RDONLY: u64 = 1;

/// `SB_KERNMOUNT` in `super_block.s_flags`: the internal mount that memfd
/// and System V shared memory files live on; no user mount has it.
pub const SB_KERNMOUNT: u64 = 1 << 22;

/// `MNT_READONLY` in `vfsmount.mnt_flags`.
pub const MNT_READONLY: u32 = 0x40;

/// `MNT_LOCK_READONLY` in `vfsmount.mnt_flags`: the mount was read-only when
/// it was copied into a mount namespace of a less privileged user namespace
/// (or cloned from such a mount), and nobody there can make it writable.
pub const MNT_LOCK_READONLY: u32 = 0x40_0000;

/// `PROT_EXEC`.
pub const PROT_EXEC: u64 = 4;

/// `MAP_ANONYMOUS`.
pub const MAP_ANONYMOUS: u64 = 0x20;

/// `FMODE_WRITE` in `file.f_mode`.
pub const FMODE_WRITE: u32 = 2;

/// The execute bits of a file mode (`S_IXUSR | S_IXGRP | S_IXOTH`).
pub const MODE_EXEC_BITS: u16 = 0o111;

/// Entries of the table of files written in containers with a root that is
/// not overlayfs. A full table is counted and reported.
pub const WRITTEN_FILES_MAX: u32 = 65_536;

/// `TASK_COMM_LEN`.
pub const COMM_LEN: usize = 16;

/// Bytes kept of a file's name (`dentry.d_name`, at most 255 bytes + NUL).
pub const NAME_LEN: usize = 256;

/// Bytes kept of the path passed to `execve`. Longer paths are cut and the
/// event carries [`event_flags::PATH_TRUNCATED`].
pub const EXEC_PATH_LEN: usize = 512;

/// Ancestors a decision record names ([`DecisionEvent::ancestor_pids`]).
pub const LINEAGE_MAX: usize = 8;

/// Ancestors the programs walk at most to find a process's entry leader (a
/// deeper tree leaves [`DecisionEvent::leader_tgid`] unknown).
pub const LINEAGE_WALK_MAX: usize = 16;

/// Bytes of a file's path in its container that the programs build to match
/// allowed paths ([`PathDfaState`]). A longer path is never allowed.
pub const PATH_MAX_LEN: usize = 1024;

/// Size of the per-CPU buffer the path is built in, right to left: twice
/// [`PATH_MAX_LEN`], so that a name of up to 255 bytes copied at any offset
/// below [`PATH_MAX_LEN`] stays inside it (the verifier checks the bounds,
/// not the logic).
pub const PATH_BUF_LEN: usize = 2 * PATH_MAX_LEN;

/// Path components and mount crossings walked to build a path. A deeper
/// path is never allowed.
pub const PATH_MAX_STEPS: u32 = 64;

/// States of one compiled allowed-path automaton. The `PATH_DFA` map holds
/// two such banks, so that a new automaton can be written while the
/// programs still read the old one, then switched to in one map update.
pub const PATH_DFA_STATES_MAX: u32 = 1024;

/// One allowed-path automaton, the value of one `PATH_DFA` entry. One value
/// rather than one entry per state: the programs look it up once and then
/// index it, which keeps the per-byte loop short for the verifier.
pub type PathDfaBank = [PathDfaState; PATH_DFA_STATES_MAX as usize];

/// Reserved states of a path automaton, relative to its bank.
pub mod path_dfa {
    /// No path that starts with the bytes read so far is allowed.
    pub const DEAD: u16 = 0;
    /// Where every path starts.
    pub const START: u16 = 1;
}

/// `EPERM`, returned by the LSM hook to refuse an exec.
pub const EPERM: i32 = 1;

/// `__FMODE_EXEC` in `file.f_flags`: the kernel opened the file to execute
/// it (the program, its interpreter, a script, the ELF interpreter). Not a
/// valid flag of `open()`, so nothing else sets it. (Its `f_mode` twin,
/// `FMODE_EXEC`, is not set on every kernel.)
pub const O_FMODE_EXEC: u32 = 0x20;

/// `callback_head`s of `task_struct.task_works` walked to find the scripts a
/// signal-backend exec ran (see `enforcer-ebpf/src/script.rs`), with
/// `bpf_loop` (5.17+): more than a process can queue (one per descriptor
/// closed on exec, and `fs.nr_open` is at most 2^20), so the walk always
/// reaches the end of the list.
pub const SCRIPT_WALK_MAX: u32 = 1 << 21;

/// The same walk on kernels without `bpf_loop`, unrolled by the verifier. A
/// longer list leaves the script unresolved: refused and reported.
pub const SCRIPT_WALK_BOUNDED: u32 = 256;

/// Files opened for execution that the script walk keeps, the oldest ones:
/// every level of nested scripts (the kernel allows five) and one more.
pub const SCRIPT_FILES_MAX: usize = 6;

/// `AT_BASE` in the auxiliary vector: where the ELF interpreter is mapped.
pub const AT_BASE: u64 = 7;

/// Entries (type and value pairs) of `mm_struct.saved_auxv` read to find
/// [`AT_BASE`]: `AT_VECTOR_SIZE` is under 64 on every architecture, and the
/// kernel writes `AT_BASE` among the first dozen.
pub const AUXV_PAIRS_MAX: u32 = 32;

/// `SIGKILL`, sent by the signal backend.
pub const SIGKILL: u32 = 9;

/// Kinds of ring buffer records ([`EventHeader::kind`]).
pub mod event_kind {
    /// A [`DecisionEvent`](super::DecisionEvent).
    pub const DECISION: u32 = 1;
    /// A [`RootNotice`](super::RootNotice).
    pub const UNTRACKED_ROOT: u32 = 2;
}

/// Whether writes on container roots that are not overlayfs are tracked
/// (the one entry of the `TRACKING` map).
pub mod tracking {
    /// Not tracked, and nobody waits for such a root: the kernel stays quiet.
    pub const OFF: u32 = 0;
    /// Not tracked yet: the first container process seen running a file from
    /// such a root makes the kernel send a [`RootNotice`](super::RootNotice),
    /// and the agent attaches the tracking programs.
    pub const ON_DEMAND: u32 = 1;
    /// The tracking programs are attached.
    pub const ATTACHED: u32 = 2;
}

/// What the kernel did ([`DecisionEvent::decision`]).
pub mod decision {
    /// The LSM hook refused the exec with `EPERM`; the program never ran.
    pub const BLOCKED: u32 = 1;
    /// The signal backend sent `SIGKILL` before the program's first instruction.
    pub const KILLED: u32 = 2;
    /// Audit mode: the exec was allowed and reported.
    pub const AUDIT: u32 = 3;
    /// The signal backend decided to kill but `bpf_send_signal` failed.
    pub const KILL_FAILED: u32 = 4;
}

/// Why a decision was taken ([`DecisionEvent::reason`]).
pub mod reason {
    /// The executable is not part of the container's image.
    pub const DRIFT: u32 = 1;
    /// The file is shielded by the vShield in [`DecisionEvent::rule`](super::DecisionEvent::rule).
    pub const VSHIELD: u32 = 2;
}

/// Which kernel mechanism took the decision ([`DecisionEvent::backend`]).
pub mod backend {
    /// BPF LSM program on `bprm_check_security`.
    pub const LSM: u32 = 1;
    /// Raw tracepoint on `sched_process_exec` plus `bpf_send_signal`.
    pub const SIGNAL: u32 = 2;
}

/// Where the file lives, i.e. why it is not from the image
/// ([`DecisionEvent::layer`]; 0 for vShield decisions).
pub mod layer {
    /// On the container's overlayfs root with an upper-layer dentry: created
    /// or copied up after the container started.
    pub const OVERLAY_UPPER: u32 = 1;
    /// A memfd (or other file on the kernel's internal shmem mount): fileless.
    pub const MEMFD: u32 = 2;
    /// On a writable mount other than the container's root filesystem:
    /// tmpfs such as /dev/shm, emptyDir and other volumes.
    pub const WRITABLE_MOUNT: u32 = 3;
    /// On a container root that is not overlayfs, and written, created,
    /// made executable, renamed or linked by a container process since the
    /// agent started.
    pub const WRITTEN: u32 = 4;
    /// On a mount or filesystem whose read-only state a container process
    /// could have set, or under an overlay it mounted: a filesystem created
    /// in a user namespace (tmpfs, overlay), a read-only bind mount made in
    /// one, a mount detached from every namespace, or a layer of such an
    /// overlay on a filesystem the container can write.
    pub const CONTAINER_MOUNT: u32 = 5;
    /// The kernel could not tell which file an exec ran (the signal
    /// backend's script lookup); refused, since it may be drift.
    pub const UNRESOLVED: u32 = 6;
    /// The check could not be done: a read of kernel memory failed. Refused
    /// for a process of a container the kernel or the agent knows, in
    /// enforce mode (fail closed); allowed and reported otherwise, since the
    /// process may be the host's. The record has no file, only the path
    /// given to exec where there is one.
    pub const READ_ERROR: u32 = 7;
    /// On a read-only mount made by the host or the runtime, whose
    /// filesystem the kernel could not look at for a mount the container
    /// can write (no `bpf_loop` before 5.17): allowed, and reported, since
    /// it may have been written through another mount of the same volume.
    pub const UNCHECKED_MOUNT: u32 = 8;
}

/// How the file was about to be used ([`DecisionEvent::via`]).
pub mod via {
    /// execve/execveat of the file (or of a script, for its interpreter line).
    pub const EXEC: u32 = 1;
    /// An executable mapping: the dynamic loader mapping a program or a
    /// library (`ld.so ./tool`, `LD_PRELOAD`, `dlopen`).
    pub const MMAP: u32 = 2;
    /// `mprotect` adding `PROT_EXEC` to a mapping of the file.
    pub const MPROTECT: u32 = 3;
    /// `open` for reading or writing (vShields).
    pub const OPEN: u32 = 4;
}

/// Bits of [`DecisionEvent::flags`].
pub mod event_flags {
    /// `path` filled the whole buffer; the real path may be longer.
    pub const PATH_TRUNCATED: u32 = 1;
    /// There is no path (mappings) or reading it failed; `path` is empty.
    pub const NO_PATH: u32 = 1 << 1;
    /// The process has more ancestors in its container than
    /// [`super::LINEAGE_MAX`]: the record names the nearest.
    pub const ANCESTORS_TRUNCATED: u32 = 1 << 2;
    /// Drift in an exec session of a container whose policy audits those
    /// ([`super::drift_flags::AUDIT_EXEC_SESSIONS`]): audited, not enforced.
    pub const EXEC_SESSION: u32 = 1 << 3;
}

/// Bits of [`DriftSettings::flags`].
pub mod drift_flags {
    /// Allow executing memfd files (`fexecve`).
    pub const ALLOW_MEMFD: u32 = 1;
    /// Allow executing and mapping files on writable mounts other than the
    /// container's root filesystem.
    pub const ALLOW_WRITABLE_MOUNTS: u32 = 1 << 1;
    /// Files whose path in the container the path automaton at
    /// [`DriftSettings::path_dfa_bank`] accepts are allowed.
    pub const ALLOW_PATHS: u32 = 1 << 2;
    /// Drift in an exec session (`kubectl exec`, `podman exec`: a process
    /// under one that entered the running container from outside) is
    /// audited where the mode enforces.
    pub const AUDIT_EXEC_SESSIONS: u32 = 1 << 3;
}

/// Enforcement modes ([`DriftSettings::mode`]).
pub mod mode {
    /// The check is not made.
    pub const OFF: u32 = 0;
    /// Refuse (lsm) or kill (signal), and report.
    pub const ENFORCE: u32 = 1;
    /// Allow, and report what enforce mode would have refused.
    pub const AUDIT: u32 = 2;
}

/// Indexes into the per-CPU `COUNTERS` array.
pub mod counter {
    /// Execs that reached the drift check.
    pub const EXEC_CHECKED: u32 = 0;
    /// Execs of container processes whose file was drift.
    pub const DRIFT_DETECTED: u32 = 1;
    /// Checks that could not be done because a kernel read failed; each
    /// one reported with [`layer::READ_ERROR`](super::layer::READ_ERROR),
    /// and refused for a container process in enforce mode.
    pub const READ_ERRORS: u32 = 2;
    /// Events that did not fit in the ring buffer.
    pub const EVENTS_LOST: u32 = 3;
    /// `bpf_send_signal` calls that failed.
    pub const SIGNAL_FAILED: u32 = 4;
    /// Files written in containers that the table could not take.
    pub const WRITTEN_TABLE_FULL: u32 = 5;
    /// Drift allowed because the file's path matched an allowed path.
    pub const DRIFT_ALLOWED_BY_PATH: u32 = 6;
    /// Drift whose path could not be built for the allowed-path check (too
    /// long, too deep, or outside the container's mount namespace); treated
    /// as not allowed.
    pub const PATH_UNRESOLVED: u32 = 7;
    /// Scripts run by a container process whose file the signal backend
    /// could not find; refused in enforce mode (each one also reported with
    /// [`layer::UNRESOLVED`](super::layer::UNRESOLVED)).
    pub const SCRIPT_UNRESOLVED: u32 = 8;
    /// Uses of a shielded file that a vShield decided (any mode).
    pub const VSHIELD_HITS: u32 = 9;
    /// Decision records not written because the same container had the
    /// same decision about the same file too often in the rate-limit window
    /// (the decision itself was carried out).
    pub const EVENTS_SUPPRESSED: u32 = 10;
    /// Container files run from a read-only mount that the kernel could not
    /// look at for a writable mount of the same filesystem (no `bpf_loop`
    /// before 5.17); allowed, each reported with
    /// [`layer::UNCHECKED_MOUNT`](super::layer::UNCHECKED_MOUNT).
    pub const UNCHECKED_MOUNTS: u32 = 11;
    /// Number of slots in the array.
    pub const COUNT: u32 = 12;
}

/// Kernel structure offsets, in bytes, read from the running kernel's BTF at
/// start-up and handed to the programs as a load-time global. Rust eBPF code
/// gets no CO-RE relocations, so nothing here may be compiled in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `linux_binprm.file`
    pub binprm_file: u32,
    /// `linux_binprm.filename`
    pub binprm_filename: u32,
    /// `inode.i_sb`
    pub inode_sb: u32,
    /// `inode.i_ino`
    pub inode_ino: u32,
    /// `super_block.s_magic`
    pub sb_magic: u32,
    /// `super_block.s_dev`
    pub sb_dev: u32,
    /// `ovl_inode.__upperdentry` minus `ovl_inode.vfs_inode`: from an overlay
    /// inode pointer to its upper dentry pointer.
    pub ovl_inode_upperdentry: u32,
    /// `task_struct.real_parent`
    pub task_real_parent: u32,
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `task_struct.nsproxy`
    pub task_nsproxy: u32,
    /// `nsproxy.mnt_ns`
    pub nsproxy_mnt_ns: u32,
    /// `mnt_namespace.ns.inum`
    pub mnt_namespace_inum: u32,
    /// `file.f_path.mnt`
    pub file_path_mnt: u32,
    /// `file.f_path.dentry`
    pub file_path_dentry: u32,
    /// `dentry.d_name.name`
    pub dentry_name: u32,
    /// `dentry.d_inode`
    pub dentry_inode: u32,
    /// `super_block.s_flags`
    pub sb_flags: u32,
    /// `vfsmount.mnt_flags`
    pub vfsmount_flags: u32,
    /// `task_struct.fs`
    pub task_fs: u32,
    /// `fs_struct.root.mnt`
    pub fs_root_mnt: u32,
    /// `fs_struct.root.dentry`
    pub fs_root_dentry: u32,
    /// `vm_area_struct.vm_file`
    pub vma_file: u32,
    /// `mount.mnt_ns` minus `mount.mnt`: from a `struct vfsmount *` to the
    /// namespace of the `struct mount` embedding it.
    pub vfsmount_mnt_ns: u32,
    /// `task_struct.mm`
    pub task_mm: u32,
    /// `mm_struct.exe_file`
    pub mm_exe_file: u32,
    /// `backing_file.user_path` (6.6+; 0 where the kernel has no backing
    /// files): the user-visible path of the file overlayfs maps through.
    pub backing_file_user_path: u32,
    /// `file.f_mode`
    pub file_mode: u32,
    /// `inode.i_mode`
    pub inode_mode: u32,
    /// `dentry.d_parent`
    pub dentry_parent: u32,
    /// `dentry.d_name.len`
    pub dentry_name_len: u32,
    /// `vfsmount.mnt_root`
    pub vfsmount_mnt_root: u32,
    /// `mount.mnt_parent` (it precedes the embedded `mnt`, so it is kept
    /// relative to `struct mount`, found from a `struct vfsmount *` by
    /// subtracting [`Self::mount_mnt`]).
    pub mount_parent: u32,
    /// `mount.mnt_mountpoint`
    pub mount_mountpoint: u32,
    /// `mount.mnt`: between a `struct mount *` and its `struct vfsmount`.
    pub mount_mnt: u32,
    /// `linux_binprm.interp`
    pub binprm_interp: u32,
    /// `task_struct.task_works`
    pub task_task_works: u32,
    /// The `callback_head` in `struct file` that `fput` queues on the task
    /// (`f_task_work`, `f_rcuhead` or `f_u.fu_rcuhead`, by kernel version).
    pub file_task_work: u32,
    /// `file.f_flags`
    pub file_flags: u32,
    /// `super_block.s_user_ns`: the user namespace that owns the filesystem.
    pub sb_user_ns: u32,
    /// `user_namespace.level`: 0 for the initial user namespace.
    pub user_ns_level: u32,
    /// `mnt_namespace.user_ns`: the user namespace that owns a mount
    /// namespace, whose root may change the flags of its mounts.
    pub mnt_namespace_user_ns: u32,
    /// `mnt_namespace.seq` (up to 6.17) or `mnt_namespace.ns.ns_id`: a
    /// 64-bit number never given to another mount namespace until reboot,
    /// unlike the inode number, which the next namespace may get.
    pub mnt_namespace_id: u32,
}

/// Offsets only the signal backend's `mmap` check reads, apart from
/// [`KernelOffsets`] so that the other programs do not copy them onto their
/// 512-byte stacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmapOffsets {
    /// `task_struct.files`
    pub task_files: u32,
    /// `files_struct.fdt`
    pub files_fdt: u32,
    /// `fdtable.max_fds`
    pub fdtable_max_fds: u32,
    /// `fdtable.fd`
    pub fdtable_fd: u32,
    /// `pt_regs` field of a system call's first argument (`addr` of
    /// `mprotect`): `di` on x86-64.
    pub regs_arg1: u32,
    /// Third argument (`prot` of `mmap` and `mprotect`): `dx`.
    pub regs_arg3: u32,
    /// Fourth argument (`flags`): `r10`.
    pub regs_arg4: u32,
    /// Fifth argument (`fd`): `r8`.
    pub regs_arg5: u32,
    /// `mm_struct.saved_auxv`: the auxiliary vector of the program, whose
    /// `AT_BASE` is where its ELF interpreter is mapped.
    pub mm_saved_auxv: u32,
    /// `task_struct.thread_info.status` (x86: [`TS_COMPAT`]).
    pub thread_status: u32,
    /// `pt_regs.orig_ax`: the system call number at `sys_exit`.
    pub regs_orig_ax: u32,
    /// The 32-bit gate's argument registers not above: `bx` (first), `cx`
    /// (second), `si` (fourth), `bp` (sixth); `dx` is the third on both
    /// gates, `di` the fifth here.
    pub regs_bx: u32,
    pub regs_cx: u32,
    pub regs_si: u32,
    pub regs_bp: u32,
    /// `pt_regs.ax`: the return value at `sys_exit`.
    pub regs_ax: u32,
}

/// Offsets the programs read to name a process's ancestors and its entry
/// leader in decision records, apart from [`KernelOffsets`] for the same
/// reason as [`MmapOffsets`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    /// `task_struct.comm`
    pub task_comm: u32,
    /// `task_struct.thread_pid`
    pub task_thread_pid: u32,
    /// `pid.level`: depth of the task's pid namespace (0: the initial one).
    pub pid_level: u32,
    /// `pid.numbers`: one `struct upid` per level, the innermost last.
    pub pid_numbers: u32,
    /// `sizeof(struct upid)`
    pub upid_size: u32,
    /// `upid.nr`
    pub upid_nr: u32,
    /// `upid.ns`
    pub upid_ns: u32,
    /// `pid_namespace.ns.inum`
    pub pid_namespace_inum: u32,
    /// `task_struct.cgroups`
    pub task_cgroups: u32,
    /// `css_set.dfl_cgrp`: the task's cgroup v2 group.
    pub css_set_dfl_cgrp: u32,
    /// `cgroup.kn`
    pub cgroup_kn: u32,
    /// `kernfs_node.id`: what `bpf_get_current_cgroup_id` reports.
    pub kernfs_node_id: u32,
    /// `cgroup.self.parent`: the parent group's `cgroup_subsys_state`,
    /// which is its `struct cgroup` (`self` comes first).
    pub cgroup_parent: u32,
    /// `task_struct.cred`: the task's subjective credentials.
    pub task_cred: u32,
    /// `cred.cap_effective`: 64 bits of capabilities (`__u32 cap[2]` before
    /// 6.3, `u64 val` since: the same bits in little-endian memory).
    pub cred_cap_effective: u32,
    /// `cred.user_ns`: the user namespace the capabilities are held in.
    pub cred_user_ns: u32,
}

/// `CAP_SYS_ADMIN`, the capability that mounting takes.
pub const CAP_SYS_ADMIN: u32 = 21;

/// Offsets for the walk over a filesystem's mounts (is a read-only mount's
/// filesystem also mounted writable by a container?), apart from
/// [`KernelOffsets`] for the same reason as [`MmapOffsets`]; read by a
/// `bpf_loop` callback, which has a stack frame of its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MountOffsets {
    /// One of [`mount_walk`].
    pub walk: u32,
    /// `super_block.s_mounts`: the filesystem's mounts. Up to 6.15 a
    /// `struct list_head` whose nodes are `mount.mnt_instance`
    /// ([`Self::list_head`] 1); since, a `struct mount *` whose mounts are
    /// chained by `mount.mnt_next_for_sb` up to a null one.
    pub sb_mounts: u32,
    /// 1 for the `list_head` layout, 0 for the chain of pointers.
    pub list_head: u32,
    /// `mount.mnt_instance` or `mount.mnt_next_for_sb`: the link in
    /// `struct mount`.
    pub mount_link: u32,
    /// `mount.mnt`: between a `struct mount *` and its `struct vfsmount`.
    pub mount_mnt: u32,
    /// `vfsmount.mnt_flags`
    pub vfsmount_flags: u32,
    /// `vfsmount.mnt_root`
    pub vfsmount_mnt_root: u32,
    /// `mount.mnt_ns` minus `mount.mnt`.
    pub vfsmount_mnt_ns: u32,
    /// `dentry.d_parent`
    pub dentry_parent: u32,
    /// [`KernelOffsets::mnt_namespace_id`]
    pub mnt_namespace_id: u32,
    /// `mnt_namespace.user_ns`
    pub mnt_namespace_user_ns: u32,
    /// `user_namespace.level`
    pub user_ns_level: u32,
}

/// Directories between a file and its filesystem's root that the mount walk
/// compares mount roots with; a file deeper than this is not decided by
/// the walk (it is reported as `unresolved`).
pub const MOUNT_ANCESTORS_MAX: usize = 64;

/// Mounts of one filesystem the walk looks at before it gives up (and the
/// file is reported as `unresolved`): far more than a node holds.
pub const MOUNT_WALK_MAX: u32 = 1 << 16;

/// How the kernel programs walk a filesystem's mounts.
pub mod mount_walk {
    /// Not at all: the offsets did not resolve. Read-only mounts the
    /// runtime made are trusted, which the agent says at start-up.
    pub const OFF: u32 = 0;
    /// With `bpf_loop` (5.17+), up to [`super::MOUNT_WALK_MAX`] mounts.
    pub const LOOP: u32 = 1;
    /// Not at all, for want of `bpf_loop`: the programs for such kernels
    /// are built without the walk, and the agent says so at start-up.
    pub const NO_LOOP: u32 = 2;
}

/// Entries of `CONTAINER_MOUNT_NS`: the mount namespaces of the containers
/// in `CONTAINER_ROOTS`.
pub const CONTAINER_MOUNT_NS_MAX: u32 = 65_536;

/// Settings fixed for the lifetime of the loaded programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentConfig {
    /// Inode number of the host's mount namespace. A process in any other
    /// mount namespace is a container process.
    pub host_mnt_ns: u32,
    /// [`ABI_VERSION`] the agent was built with; the programs refuse to act
    /// (and count a read error) when it does not match their own.
    pub abi_version: u32,
    /// `s_dev` (kernel encoding) of the host's root directory. A process in
    /// another mount namespace whose root is the host's root (a sandboxed
    /// host service) is a host process.
    pub host_root_dev: u32,
    /// Number of the `mmap` system call on this architecture, for the
    /// signal backend's mapping check; zero turns that check off.
    pub mmap_syscall: u32,
    /// Inode number of the host's root directory.
    pub host_root_ino: u64,
    /// Address of the kernel's `____fput` (from `/proc/kallsyms`): marks the
    /// task works that are deferred file releases. Zero turns off the
    /// signal backend's script check.
    pub fput_fn: u64,
    /// Number of the `mprotect` system call, for the same check as
    /// [`Self::mmap_syscall`]; zero turns it off.
    pub mprotect_syscall: u32,
    /// Decision records written per [`ReportKey`] and window; zero writes
    /// every one.
    pub report_burst: u32,
    /// The rate-limit window, nanoseconds.
    pub report_window_ns: u64,
    /// Number of `pkey_mprotect`, decided like `mprotect`; zero turns it off.
    pub pkey_mprotect_syscall: u32,
    /// Numbers of `execve` and `execveat`, whose failure with `ENOEXEC` the
    /// signal backend decides; zero turns that check off.
    pub execve_syscall: u32,
    pub execveat_syscall: u32,
    /// Whether the 32-bit system call gate is looked at (1) or not (0): the
    /// numbers of [`compat_syscall`] on x86-64.
    pub compat_syscalls: u32,
    /// Numbers of `mount`, `move_mount`, `fsconfig` and `mount_setattr`,
    /// whose calls by container processes the signal backend marks (with
    /// the mapping check, whose per-system-call cost it shares); zero turns
    /// that off.
    pub mount_syscall: u32,
    pub move_mount_syscall: u32,
    pub fsconfig_syscall: u32,
    pub mount_setattr_syscall: u32,
}

/// System call numbers of the 32-bit gate on x86-64 (`int $0x80`,
/// `sysenter`), from the kernel's `arch/x86/entry/syscalls/syscall_32.tbl`,
/// an ABI that never changes.
pub mod compat_syscall {
    /// `old_mmap`: its one argument points at the six of `mmap`.
    pub const OLD_MMAP: u64 = 90;
    pub const MPROTECT: u64 = 125;
    pub const MMAP2: u64 = 192;
    pub const PKEY_MPROTECT: u64 = 380;
    pub const EXECVE: u64 = 11;
    pub const EXECVEAT: u64 = 358;
    /// The calls that change mounts.
    pub const MOUNT: u64 = 21;
    pub const MOVE_MOUNT: u64 = 429;
    pub const FSCONFIG: u64 = 431;
    pub const MOUNT_SETATTR: u64 = 442;
}

/// `TS_COMPAT` in x86's `thread_info.status`: the task is in a system call
/// made through the 32-bit gate.
pub const TS_COMPAT: u32 = 2;

/// `ENOEXEC`: the kernel knows no format for the file; shells then run it
/// as a script themselves.
pub const ENOEXEC: i64 = 8;

/// What the rate limit of decision records counts by: one container (its
/// cgroup), one file, one decision.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReportKey {
    pub cgroup_id: u64,
    pub inode: u64,
    pub dev: u32,
    /// `decision | reason << 8 | via << 16`.
    pub what: u32,
}

/// The rate limit's state for one [`ReportKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportWindow {
    /// When the window began (`bpf_ktime_get_boot_ns`).
    pub start_ns: u64,
    /// Records written in the window.
    pub reported: u32,
    /// Records suppressed since the last one written.
    pub suppressed: u32,
}

/// Entries of the rate limit's LRU table: the keys seen most recently.
pub const REPORT_KEYS_MAX: u32 = 16_384;

/// Drift prevention settings, the value of the `DRIFT_POLICY` array map
/// (indices: [`drift_policy`]). A map rather than a global so that the
/// settings can change while the programs stay attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriftSettings {
    /// One of [`mode`].
    pub mode: u32,
    /// Bits of [`drift_flags`].
    pub flags: u32,
    /// Index in the `PATH_DFA` map of the allowed-path automaton in force,
    /// 0 or 1 (used with [`drift_flags::ALLOW_PATHS`]).
    pub path_dfa_bank: u32,
    /// The bits of [`PathDfaState::accept`] a path's last state must all
    /// have for the path to be allowed (with [`drift_flags::ALLOW_PATHS`]):
    /// one automaton serves every `DriftPolicy`, each with its own bit.
    pub path_mask: u32,
}

/// Indices of the `DRIFT_POLICY` map. A container's index is in
/// `CONTAINER_DRIFT` (by cgroup id); a container not there is unknown.
pub mod drift_policy {
    /// The `DriftPolicy` for every container (or the built-in one): for known
    /// containers no selected `DriftPolicy` selects.
    pub const ALL_CONTAINERS: u32 = 0;
    /// Containers the agent has not placed yet (or cannot tell yet which
    /// `DriftPolicy` selects): the strictest of all `DriftPolicies` in force
    /// (enforce if any enforces; an allowance only if all allow it).
    pub const UNKNOWN: u32 = 1;
    /// The first selected `DriftPolicy`. Two banks of
    /// [`DRIFT_SELECTED_MAX`](super::DRIFT_SELECTED_MAX): a new policy is written
    /// into the bank no container points at, then containers are pointed at
    /// it, so that each container is under the old or the new policy,
    /// never a mix or a gap.
    pub const FIRST_SELECTED: u32 = 2;
}

/// `DriftPolicies` with a selector one policy can hold (per bank).
pub const DRIFT_SELECTED_MAX: u32 = 31;

/// Entries of `DRIFT_POLICY`: every container, unknown, and two banks of
/// selected `DriftPolicies`.
pub const DRIFT_POLICIES_MAX: u32 = drift_policy::FIRST_SELECTED + 2 * DRIFT_SELECTED_MAX;

/// Files the vShields of a policy shield (entries of `VSHIELD_FILES`).
pub const VSHIELD_FILES_MAX: u32 = 262_144;

/// (file, scope, operation) rules (entries of `VSHIELD_RULES`).
pub const VSHIELD_RULES_MAX: u32 = 524_288;

/// vShield slots ([`VShieldRule::rule`] runs from 1 to this): the number of
/// vShields one policy can hold, and the size of the hit counters.
pub const VSHIELD_SLOTS: u32 = 16_384;

/// What a vShield stops a file from being used for: [`VShieldKey::op`], and
/// bits of `VSHIELD_FILES` values.
pub mod vshield_op {
    /// `execve` of the file (also as a script or an interpreter).
    pub const EXEC: u32 = 1;
    /// `open` for reading or writing.
    pub const OPEN: u32 = 1 << 1;
    /// An executable mapping (`mmap`, `mprotect`): loading it as a library.
    pub const LOAD: u32 = 1 << 2;
}

/// Whom a vShield rule applies to ([`VShieldKey::scope`]).
///
/// A container process looks its rules up under its container's scope
/// (`CONTAINER_SCOPES`, by cgroup id), and under [`CONTAINERS`] when that
/// finds nothing: the rules of a selected scope already hold the decision
/// of every vShield for all containers on the same file.
pub mod scope {
    /// The host's own processes.
    pub const HOST: u32 = 0;
    /// Every container process; also the scope of a known container that no
    /// vShield with a selector selects.
    pub const CONTAINERS: u32 = 1;
    /// A container the agent does not know yet (its group is not in
    /// `CONTAINER_SCOPES`): every vShield with a selector applies, so a
    /// container is never less shielded before the agent knows its image.
    pub const UNKNOWN: u32 = 2;
    /// The first scope of a set of vShields with selectors that select the
    /// same containers.
    pub const FIRST_SELECTED: u32 = 3;
}

/// A container as the kernel first saw it (the value of `CONTAINER_ROOTS`,
/// by cgroup id): what its processes are measured against afterwards,
/// whatever root directory or mount namespace they move to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerRoot {
    /// `s_dev` (kernel encoding) of the container's root filesystem.
    pub root_dev: u32,
    /// Inode number of the mount namespace its runtime made.
    pub mnt_ns: u32,
}

/// Entries of `CONTAINER_ROOTS`: the containers seen most recently.
pub const CONTAINER_ROOTS_MAX: u32 = 65_536;

/// Entries of `CONTAINER_SCOPES` and `CONTAINER_DRIFT`: cgroups of known
/// containers.
pub const CONTAINER_SCOPES_MAX: u32 = 65_536;

/// How overlayfs keeps the lower inode of one of its inodes
/// ([`OverlayLower::kind`]), by kernel version.
pub mod overlay_lower {
    /// Unknown: a file on overlayfs is identified by its overlay inode.
    pub const UNKNOWN: u32 = 0;
    /// `struct inode *lower` (5.x).
    pub const INODE: u32 = 1;
    /// `struct ovl_path lowerpath`, whose `dentry` is at the offset (6.0 to 6.4).
    pub const DENTRY: u32 = 2;
    /// `struct ovl_entry *oe`, whose first lower `dentry` is at
    /// [`OverlayLower::entry_dentry`] when `__numlower` is nonzero (6.5+).
    pub const ENTRY: u32 = 3;
}

/// Where overlayfs keeps the lower inode an overlay inode stands for, read
/// from BTF at start-up (a load-time global of its own, so that only the
/// vShield code reads it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverlayLower {
    /// One of [`overlay_lower`].
    pub kind: u32,
    /// From the overlay's `vfs_inode` to the field [`Self::kind`] names.
    pub lower: u32,
    /// `ovl_entry.__numlower`.
    pub entry_numlower: u32,
    /// `ovl_entry.__lowerstack[0].dentry`.
    pub entry_dentry: u32,
    /// `file.f_inode`.
    pub file_inode: u32,
    /// Reserved, zero.
    pub pad: u32,
}

/// Overlays stacked on overlays that the identity walk follows
/// (the kernel's `FILESYSTEM_MAX_STACK_DEPTH` is 2).
pub const OVERLAY_STACK_MAX: u32 = 3;

/// A file's identity for vShields: the inode its content comes from. For a
/// file on overlayfs that is the lower-layer inode (also after a copy-up,
/// which keeps the overlay inode's link to it), else its upper inode; for
/// other files the inode itself. The same for every container of an image,
/// and computed by the same kernel code when the agent resolves a path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// `i_ino`.
    pub ino: u64,
    /// `s_dev` of the inode's super block, kernel encoding.
    pub dev: u32,
    /// Reserved, zero.
    pub pad: u32,
}

/// Key of `VSHIELD_RULES`: what applies to one use of one file by one scope.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VShieldKey {
    pub file: FileId,
    /// One of [`scope`].
    pub scope: u32,
    /// One of [`vshield_op`].
    pub op: u32,
}

/// Value of `VSHIELD_RULES`: the vShield that decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VShieldRule {
    /// The vShield's slot, 1 to [`VSHIELD_SLOTS`]; index of its hit counter.
    pub rule: u32,
    /// [`mode::ENFORCE`] or [`mode::AUDIT`].
    pub mode: u32,
}

/// One state of an allowed-path automaton: a DFA over the bytes of a file's
/// path in its container, compiled by the agent from the allowed globs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathDfaState {
    /// The next state for each byte: an index in the same bank.
    pub next: [u16; 256],
    /// The `DriftPolicy`s that allow a path that ends in this state: bit `i`
    /// for the policy whose [`DriftSettings::path_mask`] is `1 << i`.
    pub accept: u32,
}

impl Default for PathDfaState {
    fn default() -> Self {
        Self {
            next: [path_dfa::DEAD; 256],
            accept: 0,
        }
    }
}

/// Common first field of every ring buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`event_kind`].
    pub kind: u32,
    /// Reserved, zero.
    pub pad: u32,
    /// `bpf_ktime_get_boot_ns()` when the event was made.
    pub boot_ns: u64,
}

/// A decision on a file: a container process was about to run a file that
/// is not from its image (drift), or a process was about to use a file a
/// vShield shields.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecisionEvent {
    pub header: EventHeader,
    /// Thread id of the task.
    pub pid: u32,
    /// Process id (thread group id).
    pub tgid: u32,
    /// Process id of the real parent.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Inode number of the task's mount namespace.
    pub mnt_ns: u32,
    /// cgroup v2 id of the task (`bpf_get_current_cgroup_id`).
    pub cgroup_id: u64,
    /// `i_ino` of the file.
    pub inode: u64,
    /// `s_dev` of the file's super block, kernel encoding (major << 20 | minor).
    pub dev: u32,
    /// One of [`decision`].
    pub decision: u32,
    /// One of [`reason`].
    pub reason: u32,
    /// One of [`backend`].
    pub backend: u32,
    /// One of [`layer`].
    pub layer: u32,
    /// One of [`via`].
    pub via: u32,
    /// Bytes of `path` in use, without the terminating NUL.
    pub path_len: u32,
    /// Bits of [`event_flags`].
    pub flags: u32,
    /// The vShield's slot ([`VShieldRule::rule`]) for [`reason::VSHIELD`];
    /// the `DRIFT_POLICY` index ([`drift_policy`]) for [`reason::DRIFT`].
    pub rule: u32,
    /// Records of the same [`ReportKey`] the rate limit suppressed since the
    /// last one written (their window has ended).
    pub suppressed: u32,
    /// `comm` of the task, NUL padded.
    pub comm: [u8; COMM_LEN],
    /// The file's name (last path component), NUL terminated.
    pub name: [u8; NAME_LEN],
    /// The path given to exec (`linux_binprm.filename`), NUL terminated;
    /// empty for mappings and opens.
    pub path: [u8; EXEC_PATH_LEN],
    /// `comm` of the real parent, NUL padded (zero when unread).
    pub parent_comm: [u8; COMM_LEN],
    /// Process ids of the task's ancestors that share its mount namespace
    /// (its container), nearest first; `ancestors_len` are in use.
    pub ancestor_pids: [u32; LINEAGE_MAX],
    /// Their `comm`s, NUL padded.
    pub ancestor_comms: [[u8; COMM_LEN]; LINEAGE_MAX],
    pub ancestors_len: u32,
    /// Process id of the entry leader: the topmost of the task and those
    /// ancestors (whose parent is outside the mount namespace: the
    /// container's first process, or the first process of an exec
    /// session). 0 when not found (a host process, a deeper tree).
    pub leader_tgid: u32,
    /// The leader's process id in its own pid namespace.
    pub leader_nspid: u32,
    /// Inode number of the leader's pid namespace.
    pub leader_pid_ns: u32,
}

/// A container process ran a file from a root filesystem that is not
/// overlayfs while such roots were not tracked ([`tracking::ON_DEMAND`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RootNotice {
    pub header: EventHeader,
    /// Inode number of the process's mount namespace.
    pub mnt_ns: u32,
    /// `s_dev` of the root's super block, kernel encoding.
    pub dev: u32,
    /// `s_magic` of the root's super block.
    pub fs_magic: u64,
    /// Process id (thread group id).
    pub tgid: u32,
    /// Reserved, zero.
    pub pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::{
        AgentConfig, ContainerRoot, DriftSettings, FileId, KernelOffsets, MmapOffsets,
        MountOffsets, OverlayLower, PathDfaState, ReportKey, ReportWindow, TaskOffsets, VShieldKey,
        VShieldRule,
    };

    // SAFETY: `#[repr(C)]`, only integer fields, no implicit padding (pinned
    // by the layout tests).
    unsafe impl aya::Pod for KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for MmapOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TaskOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for MountOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AgentConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DriftSettings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PathDfaState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for OverlayLower {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FileId {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VShieldKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VShieldRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ReportKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ReportWindow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ContainerRoot {}
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::{
        AgentConfig, DecisionEvent, DriftSettings, EventHeader, FileId, KernelOffsets, MmapOffsets,
        MountOffsets, OverlayLower, PathDfaState, ReportKey, ReportWindow, RootNotice, TaskOffsets,
        VShieldKey, VShieldRule,
    };

    #[test]
    fn vshield_layout() {
        assert_eq!(size_of::<FileId>(), 16);
        assert_eq!(offset_of!(FileId, ino), 0);
        assert_eq!(offset_of!(FileId, dev), 8);
        assert_eq!(size_of::<VShieldKey>(), 24);
        assert_eq!(offset_of!(VShieldKey, scope), 16);
        assert_eq!(offset_of!(VShieldKey, op), 20);
        assert_eq!(size_of::<VShieldRule>(), 8);
        assert_eq!(offset_of!(VShieldRule, mode), 4);
        assert_eq!(size_of::<OverlayLower>(), 24);
        assert_eq!(offset_of!(OverlayLower, entry_dentry), 12);
        assert_eq!(offset_of!(OverlayLower, file_inode), 16);
    }

    #[test]
    fn root_notice_layout() {
        assert_eq!(size_of::<RootNotice>(), 40);
        assert_eq!(offset_of!(RootNotice, mnt_ns), 16);
        assert_eq!(offset_of!(RootNotice, dev), 20);
        assert_eq!(offset_of!(RootNotice, fs_magic), 24);
        assert_eq!(offset_of!(RootNotice, tgid), 32);
    }

    #[test]
    fn event_header_layout() {
        assert_eq!(size_of::<EventHeader>(), 16);
        assert_eq!(offset_of!(EventHeader, kind), 0);
        assert_eq!(offset_of!(EventHeader, boot_ns), 8);
    }

    #[test]
    fn drift_event_layout() {
        assert_eq!(size_of::<DecisionEvent>(), 1072);
        assert_eq!(offset_of!(DecisionEvent, header), 0);
        assert_eq!(offset_of!(DecisionEvent, pid), 16);
        assert_eq!(offset_of!(DecisionEvent, tgid), 20);
        assert_eq!(offset_of!(DecisionEvent, ppid), 24);
        assert_eq!(offset_of!(DecisionEvent, uid), 28);
        assert_eq!(offset_of!(DecisionEvent, gid), 32);
        assert_eq!(offset_of!(DecisionEvent, mnt_ns), 36);
        assert_eq!(offset_of!(DecisionEvent, cgroup_id), 40);
        assert_eq!(offset_of!(DecisionEvent, inode), 48);
        assert_eq!(offset_of!(DecisionEvent, dev), 56);
        assert_eq!(offset_of!(DecisionEvent, decision), 60);
        assert_eq!(offset_of!(DecisionEvent, reason), 64);
        assert_eq!(offset_of!(DecisionEvent, backend), 68);
        assert_eq!(offset_of!(DecisionEvent, layer), 72);
        assert_eq!(offset_of!(DecisionEvent, via), 76);
        assert_eq!(offset_of!(DecisionEvent, path_len), 80);
        assert_eq!(offset_of!(DecisionEvent, flags), 84);
        assert_eq!(offset_of!(DecisionEvent, rule), 88);
        assert_eq!(offset_of!(DecisionEvent, comm), 96);
        assert_eq!(offset_of!(DecisionEvent, name), 112);
        assert_eq!(offset_of!(DecisionEvent, path), 112 + super::NAME_LEN);
        assert_eq!(offset_of!(DecisionEvent, parent_comm), 880);
        assert_eq!(offset_of!(DecisionEvent, ancestor_pids), 896);
        assert_eq!(offset_of!(DecisionEvent, ancestor_comms), 928);
        assert_eq!(offset_of!(DecisionEvent, ancestors_len), 1056);
        assert_eq!(offset_of!(DecisionEvent, leader_tgid), 1060);
        assert_eq!(offset_of!(DecisionEvent, leader_nspid), 1064);
        // No tail padding: the last field ends the struct.
        assert_eq!(
            offset_of!(DecisionEvent, leader_pid_ns) + 4,
            size_of::<DecisionEvent>()
        );
    }

    #[test]
    fn kernel_offsets_layout() {
        assert_eq!(size_of::<KernelOffsets>(), 42 * 4);
        assert_eq!(size_of::<MmapOffsets>(), 16 * 4);
        assert_eq!(size_of::<TaskOffsets>(), 16 * 4);
        assert_eq!(size_of::<MountOffsets>(), 12 * 4);
        assert_eq!(offset_of!(MountOffsets, walk), 0);
        assert_eq!(offset_of!(MountOffsets, user_ns_level), 44);
        assert_eq!(offset_of!(TaskOffsets, kernfs_node_id), 44);
        assert_eq!(offset_of!(TaskOffsets, upid_nr), 20);
        assert_eq!(offset_of!(KernelOffsets, binprm_file), 0);
        assert_eq!(offset_of!(KernelOffsets, ovl_inode_upperdentry), 24);
        assert_eq!(offset_of!(KernelOffsets, mnt_namespace_inum), 44);
        assert_eq!(offset_of!(KernelOffsets, vma_file), 84);
        assert_eq!(offset_of!(KernelOffsets, mm_exe_file), 96);
        assert_eq!(offset_of!(KernelOffsets, backing_file_user_path), 100);
        assert_eq!(offset_of!(KernelOffsets, inode_mode), 108);
        assert_eq!(offset_of!(KernelOffsets, dentry_parent), 112);
        assert_eq!(offset_of!(KernelOffsets, mount_mnt), 132);
        assert_eq!(offset_of!(KernelOffsets, file_task_work), 144);
        assert_eq!(offset_of!(KernelOffsets, sb_user_ns), 152);
        assert_eq!(offset_of!(KernelOffsets, mnt_namespace_user_ns), 160);
        assert_eq!(size_of::<super::ContainerRoot>(), 8);
        assert_eq!(offset_of!(super::ContainerRoot, mnt_ns), 4);
    }

    #[test]
    fn settings_layout() {
        assert_eq!(offset_of!(AgentConfig, report_burst), 36);
        assert_eq!(offset_of!(AgentConfig, mount_syscall), 64);
        assert_eq!(offset_of!(AgentConfig, mount_setattr_syscall), 76);
        assert_eq!(size_of::<AgentConfig>(), 80);
        assert_eq!(offset_of!(AgentConfig, report_window_ns), 40);
        assert_eq!(size_of::<ReportKey>(), 24);
        assert_eq!(size_of::<ReportWindow>(), 16);
        assert_eq!(offset_of!(AgentConfig, host_mnt_ns), 0);
        assert_eq!(offset_of!(AgentConfig, abi_version), 4);
        assert_eq!(offset_of!(AgentConfig, host_root_dev), 8);
        assert_eq!(offset_of!(AgentConfig, host_root_ino), 16);
        assert_eq!(offset_of!(AgentConfig, fput_fn), 24);
        assert_eq!(size_of::<DriftSettings>(), 16);
        assert_eq!(offset_of!(DriftSettings, mode), 0);
        assert_eq!(offset_of!(DriftSettings, flags), 4);
        assert_eq!(offset_of!(DriftSettings, path_dfa_bank), 8);
        assert_eq!(offset_of!(DriftSettings, path_mask), 12);
    }

    #[test]
    fn path_dfa_layout() {
        assert_eq!(size_of::<PathDfaState>(), 516);
        assert_eq!(offset_of!(PathDfaState, next), 0);
        assert_eq!(offset_of!(PathDfaState, accept), 512);
        // Both banks together stay a small map (about 1 MiB).
        assert!(2 * super::PATH_DFA_STATES_MAX as usize * size_of::<PathDfaState>() < 1 << 21);
    }
}
