//! Kernel structure offsets, read from the running kernel's BTF.
//!
//! Rust eBPF code gets no CO-RE relocations, so the programs read kernel
//! structures through offsets resolved here at start-up and passed in as a
//! load-time global. Each field also has its size checked against the width
//! the programs read, so a kernel that changed a field's type is refused
//! instead of misread.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use std::os::fd::FromRawFd as _;

use btf_rs::{Btf, Type};
use enforcer_common::{
    KernelOffsets, MmapOffsets, MountOffsets, OverlayLower, TaskOffsets, mount_walk, overlay_lower,
};

/// BTF of the kernel image.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// Split BTF of the overlay module, present once the module is loaded (on
/// kernels where overlayfs is built in, its types are in vmlinux).
pub const OVERLAY_BTF: &str = "/sys/kernel/btf/overlay";

/// How wide a field must be for the programs' reads to be right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Width {
    Pointer,
    Bytes(usize),
}

impl fmt::Display for Width {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pointer => f.write_str("a pointer"),
            Self::Bytes(n) => write!(f, "{n} bytes"),
        }
    }
}

/// A field the programs read: `strukt.path` where `path` may go through
/// nested (named or anonymous) members, e.g. `mnt_namespace.ns.inum`.
#[derive(Clone, Copy, Debug)]
struct Field {
    strukt: &'static str,
    path: &'static str,
    width: Width,
}

const fn field(strukt: &'static str, path: &'static str, width: Width) -> Field {
    Field {
        strukt,
        path,
        width,
    }
}

const BINPRM_FILE: Field = field("linux_binprm", "file", Width::Pointer);
const BINPRM_FILENAME: Field = field("linux_binprm", "filename", Width::Pointer);
const INODE_SB: Field = field("inode", "i_sb", Width::Pointer);
const INODE_INO: Field = field("inode", "i_ino", Width::Bytes(8));
const SB_MAGIC: Field = field("super_block", "s_magic", Width::Bytes(8));
const SB_DEV: Field = field("super_block", "s_dev", Width::Bytes(4));
const TASK_REAL_PARENT: Field = field("task_struct", "real_parent", Width::Pointer);
const TASK_TGID: Field = field("task_struct", "tgid", Width::Bytes(4));
const TASK_NSPROXY: Field = field("task_struct", "nsproxy", Width::Pointer);
const NSPROXY_MNT_NS: Field = field("nsproxy", "mnt_ns", Width::Pointer);
const MNT_NAMESPACE_INUM: Field = field("mnt_namespace", "ns.inum", Width::Bytes(4));
const FILE_PATH_MNT: Field = field("file", "f_path.mnt", Width::Pointer);
const FILE_PATH_DENTRY: Field = field("file", "f_path.dentry", Width::Pointer);
const DENTRY_NAME: Field = field("dentry", "d_name.name", Width::Pointer);
const DENTRY_INODE: Field = field("dentry", "d_inode", Width::Pointer);
const SB_FLAGS: Field = field("super_block", "s_flags", Width::Bytes(8));
const VFSMOUNT_FLAGS: Field = field("vfsmount", "mnt_flags", Width::Bytes(4));
const TASK_FS: Field = field("task_struct", "fs", Width::Pointer);
const FS_ROOT_MNT: Field = field("fs_struct", "root.mnt", Width::Pointer);
const FS_ROOT_DENTRY: Field = field("fs_struct", "root.dentry", Width::Pointer);
const VMA_FILE: Field = field("vm_area_struct", "vm_file", Width::Pointer);
const MOUNT_MNT: Field = field("mount", "mnt", Width::Bytes(0));
const MOUNT_MNT_NS: Field = field("mount", "mnt_ns", Width::Pointer);
const BACKING_FILE_USER_PATH: Field = field("backing_file", "user_path", Width::Bytes(0));
const FILE_MODE: Field = field("file", "f_mode", Width::Bytes(4));
const INODE_MODE: Field = field("inode", "i_mode", Width::Bytes(2));
const TASK_MM: Field = field("task_struct", "mm", Width::Pointer);
const MM_EXE_FILE: Field = field("mm_struct", "exe_file", Width::Pointer);
const DENTRY_PARENT: Field = field("dentry", "d_parent", Width::Pointer);
const DENTRY_NAME_LEN: Field = field("dentry", "d_name.len", Width::Bytes(4));
const VFSMOUNT_MNT_ROOT: Field = field("vfsmount", "mnt_root", Width::Pointer);
const MOUNT_MNT_PARENT: Field = field("mount", "mnt_parent", Width::Pointer);
const MOUNT_MNT_MOUNTPOINT: Field = field("mount", "mnt_mountpoint", Width::Pointer);
const BINPRM_INTERP: Field = field("linux_binprm", "interp", Width::Pointer);
const FILE_FLAGS: Field = field("file", "f_flags", Width::Bytes(4));
const SB_USER_NS: Field = field("super_block", "s_user_ns", Width::Pointer);
const USER_NS_LEVEL: Field = field("user_namespace", "level", Width::Bytes(4));
const MNT_NAMESPACE_USER_NS: Field = field("mnt_namespace", "user_ns", Width::Pointer);
const MNT_NAMESPACE_SEQ: Field = field("mnt_namespace", "seq", Width::Bytes(8));
const MNT_NAMESPACE_NS_ID: Field = field("mnt_namespace", "ns.ns_id", Width::Bytes(8));
const SB_MOUNTS_LIST: Field = field("super_block", "s_mounts.next", Width::Pointer);
const MOUNT_MNT_INSTANCE: Field = field("mount", "mnt_instance.next", Width::Pointer);
const SB_MOUNTS: Field = field("super_block", "s_mounts", Width::Pointer);
const MOUNT_NEXT_FOR_SB: Field = field("mount", "mnt_next_for_sb", Width::Pointer);
const TASK_FILES: Field = field("task_struct", "files", Width::Pointer);
const FILES_FDT: Field = field("files_struct", "fdt", Width::Pointer);
const FDTABLE_MAX_FDS: Field = field("fdtable", "max_fds", Width::Bytes(4));
const FDTABLE_FD: Field = field("fdtable", "fd", Width::Pointer);
/// x86-64's registers of the first and the third to fifth system call
/// arguments.
const REGS_SYSCALL_ARGS: [Field; 4] = [
    field("pt_regs", "di", Width::Bytes(8)),
    field("pt_regs", "dx", Width::Bytes(8)),
    field("pt_regs", "r10", Width::Bytes(8)),
    field("pt_regs", "r8", Width::Bytes(8)),
];
const THREAD_STATUS: Field = field("task_struct", "thread_info.status", Width::Bytes(4));
const REGS_ORIG_AX: Field = field("pt_regs", "orig_ax", Width::Bytes(8));
const REGS_AX: Field = field("pt_regs", "ax", Width::Bytes(8));
/// x86-64's registers of the 32-bit gate's first, second, fourth and sixth
/// system call arguments.
const REGS_COMPAT_ARGS: [Field; 4] = [
    field("pt_regs", "bx", Width::Bytes(8)),
    field("pt_regs", "cx", Width::Bytes(8)),
    field("pt_regs", "si", Width::Bytes(8)),
    field("pt_regs", "bp", Width::Bytes(8)),
];
const MM_SAVED_AUXV: Field = field("mm_struct", "saved_auxv", Width::Bytes(0));
const TASK_TASK_WORKS: Field = field("task_struct", "task_works", Width::Pointer);
/// The `callback_head` `fput` queues, by kernel version: 6.8+, 6.6, 5.x.
const FILE_TASK_WORK: [Field; 3] = [
    field("file", "f_task_work", Width::Bytes(0)),
    field("file", "f_rcuhead", Width::Bytes(0)),
    field("file", "f_u.fu_rcuhead", Width::Bytes(0)),
];
const OVL_INODE_VFS_INODE: Field = field("ovl_inode", "vfs_inode", Width::Bytes(0));
const OVL_INODE_UPPERDENTRY: Field = field("ovl_inode", "__upperdentry", Width::Pointer);
/// Where an overlay inode keeps its lower inode, by kernel version: 5.x,
/// 6.0 to 6.4, 6.5+.
const OVL_INODE_LOWER: Field = field("ovl_inode", "lower", Width::Pointer);
const OVL_INODE_LOWERPATH: Field = field("ovl_inode", "lowerpath", Width::Bytes(0));
const OVL_INODE_OE: Field = field("ovl_inode", "oe", Width::Pointer);
const OVL_PATH_DENTRY: Field = field("ovl_path", "dentry", Width::Pointer);
const OVL_ENTRY_NUMLOWER: Field = field("ovl_entry", "__numlower", Width::Bytes(4));
const OVL_ENTRY_LOWERSTACK: Field = field("ovl_entry", "__lowerstack", Width::Bytes(0));
const FILE_INODE: Field = field("file", "f_inode", Width::Pointer);
const TASK_COMM: Field = field("task_struct", "comm", Width::Bytes(0));
const TASK_THREAD_PID: Field = field("task_struct", "thread_pid", Width::Pointer);
const PID_LEVEL: Field = field("pid", "level", Width::Bytes(4));
const PID_NUMBERS: Field = field("pid", "numbers", Width::Bytes(0));
const UPID_NR: Field = field("upid", "nr", Width::Bytes(4));
const UPID_NS: Field = field("upid", "ns", Width::Pointer);
const PID_NAMESPACE_INUM: Field = field("pid_namespace", "ns.inum", Width::Bytes(4));
const TASK_CGROUPS: Field = field("task_struct", "cgroups", Width::Pointer);
const CSS_SET_DFL_CGRP: Field = field("css_set", "dfl_cgrp", Width::Pointer);
const CGROUP_KN: Field = field("cgroup", "kn", Width::Pointer);
const KERNFS_NODE_ID: Field = field("kernfs_node", "id", Width::Bytes(8));
const CGROUP_SELF: Field = field("cgroup", "self", Width::Bytes(0));
const CGROUP_PARENT: Field = field("cgroup", "self.parent", Width::Pointer);
const TASK_CRED: Field = field("task_struct", "cred", Width::Pointer);
// `kernel_cap_t`: a struct of `__u32 cap[2]` before 6.3, of `u64 val` since;
// 8 bytes either way, read as one u64.
const CRED_CAP_EFFECTIVE: Field = field("cred", "cap_effective", Width::Bytes(0));
const CRED_USER_NS: Field = field("cred", "user_ns", Width::Pointer);

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("reading kernel BTF from {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: btf_rs::Error,
    },
    #[error("kernel BTF has no definition of struct {strukt} (searched {searched})")]
    MissingStruct {
        strukt: &'static str,
        searched: String,
    },
    #[error("kernel BTF struct {strukt} has no field {path}")]
    MissingField {
        strukt: &'static str,
        path: &'static str,
    },
    #[error("{strukt}.{path} is {found}, the enforcer reads it as {expected}")]
    UnexpectedWidth {
        strukt: &'static str,
        path: &'static str,
        expected: String,
        found: String,
    },
    #[error("{strukt}.{path} is a bit-field, which the enforcer cannot read")]
    Bitfield {
        strukt: &'static str,
        path: &'static str,
    },
    #[error("malformed kernel BTF while resolving {strukt}.{path}: {source}")]
    Malformed {
        strukt: &'static str,
        path: &'static str,
        #[source]
        source: btf_rs::Error,
    },
}

impl LayoutError {
    /// The `struct.field` the error is about, when it is about one.
    pub fn field(&self) -> Option<String> {
        match self {
            Self::MissingStruct { strukt, .. } => Some((*strukt).to_owned()),
            Self::MissingField { strukt, path }
            | Self::UnexpectedWidth { strukt, path, .. }
            | Self::Bitfield { strukt, path }
            | Self::Malformed { strukt, path, .. } => Some(format!("{strukt}.{path}")),
            Self::Read { .. } => None,
        }
    }
}

/// Where the overlay inode layout came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OverlayLayout {
    /// Resolved from BTF (`searched` names the files).
    Btf { searched: String },
    /// No BTF describes `struct ovl_inode`; `__upperdentry` is taken to
    /// follow the embedded inode, `sizeof(struct inode)` bytes on.
    DerivedFromInodeSize { reason: String },
}

/// Whether the kernel maps overlay files through backing files (6.6+).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackingFiles {
    /// No `struct backing_file`: mappings carry the overlay path.
    Absent,
    /// `backing_file.user_path` resolved.
    Resolved,
    /// `struct backing_file` exists but its layout is not the known one:
    /// mprotect decisions on stacked overlays may be wrong.
    UnknownLayout(String),
}

/// The resolved kernel layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub offsets: KernelOffsets,
    pub overlay: OverlayLayout,
    pub backing_files: BackingFiles,
    /// Whether the fields the signal backend's script check reads (the
    /// files an exec released) resolved, or why not.
    pub deferred_release: Result<(), String>,
    /// What the signal backend's `mmap` check reads.
    pub mmap_offsets: MmapOffsets,
    /// Whether those fields resolved, or why not.
    pub syscall_mmap: Result<(), String>,
    /// Where overlayfs keeps an overlay inode's lower inode (vShields).
    pub overlay_lower: OverlayLower,
    /// How [`Self::overlay_lower`] was found, or why it is unknown.
    pub overlay_lower_source: Result<String, String>,
    /// What decision records read to name a process's ancestors.
    pub task_offsets: TaskOffsets,
    /// What the walk over a filesystem's mounts reads; its `walk` is set by
    /// the agent, which knows whether the kernel has `bpf_loop`.
    pub mount_offsets: MountOffsets,
    /// Whether those fields resolved, or why not.
    pub mount_walk: Result<(), String>,
}

/// Parsed vmlinux BTF plus, where present, the path of the overlay module's
/// split BTF (parsed on use: it only parses against the running kernel's
/// vmlinux BTF).
pub struct KernelBtf {
    vmlinux: Btf,
    vmlinux_path: PathBuf,
    overlay_path: Option<PathBuf>,
    /// The running kernel predates module BTF (5.11), so overlayfs' layout
    /// is that of 5.x.
    legacy_overlay: bool,
}

impl fmt::Debug for KernelBtf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelBtf")
            .field("sources", &self.sources())
            .finish_non_exhaustive()
    }
}

impl KernelBtf {
    /// Reads the running kernel's BTF from sysfs, or vmlinux BTF from
    /// `vmlinux` when given (kernels that do not expose it in sysfs).
    pub fn load(vmlinux: Option<&Path>) -> Result<Self, LayoutError> {
        let mut btf = Self::from_files(
            vmlinux.unwrap_or(Path::new(VMLINUX_BTF)),
            Path::new(OVERLAY_BTF),
        )?;
        btf.legacy_overlay = release_before(&super::features::kernel_release(), (5, 11));
        Ok(btf)
    }

    /// Reads vmlinux BTF from `vmlinux` and, if that file exists, the
    /// overlay module's split BTF from `overlay`.
    pub fn from_files(vmlinux: &Path, overlay: &Path) -> Result<Self, LayoutError> {
        Ok(Self {
            vmlinux: parse_mapped(vmlinux).map_err(|source| LayoutError::Read {
                path: vmlinux.to_owned(),
                source,
            })?,
            vmlinux_path: vmlinux.to_owned(),
            overlay_path: overlay.exists().then(|| overlay.to_owned()),
            legacy_overlay: false,
        })
    }

    /// The files the BTF came from, for the start-up log.
    pub fn sources(&self) -> Vec<&Path> {
        let mut sources = vec![self.vmlinux_path.as_path()];
        sources.extend(self.overlay_path.as_deref());
        sources
    }

    /// The BTF that defines overlayfs' private types: the module's split BTF
    /// when overlay is a module, vmlinux when it is built in.
    fn overlay_types(&self) -> Result<(Option<Btf>, String), LayoutError> {
        match &self.overlay_path {
            Some(path) => {
                let btf = Btf::from_split_file(path, &self.vmlinux).map_err(|source| {
                    LayoutError::Read {
                        path: path.clone(),
                        source,
                    }
                })?;
                Ok((
                    Some(btf),
                    format!("{} and {}", path.display(), self.vmlinux_path.display()),
                ))
            }
            None => Ok((None, self.vmlinux_path.display().to_string())),
        }
    }

    fn vmlinux_types(&self) -> (&Btf, String) {
        (&self.vmlinux, self.vmlinux_path.display().to_string())
    }

    /// The offset of `field` from vmlinux BTF.
    fn core(&self, field: Field) -> Result<u32, LayoutError> {
        let (btf, searched) = self.vmlinux_types();
        resolve(btf, &searched, field)
    }

    /// Resolves every offset the kernel programs need.
    pub fn offsets(&self) -> Result<Layout, LayoutError> {
        let core = |field| self.core(field);

        // First, so that a kernel without usable BTF is named by the exec
        // hook's own struct.
        let binprm_file = core(BINPRM_FILE)?;
        // The programs hold `struct vfsmount *`, embedded in `struct mount`.
        let mount_mnt = core(MOUNT_MNT)?;
        let vfsmount_mnt_ns = relative(mount_mnt, MOUNT_MNT_NS, core(MOUNT_MNT_NS)?, "mnt")?;
        let (backing_file_user_path, backing_files) = match core(BACKING_FILE_USER_PATH) {
            Ok(offset) => (offset, BackingFiles::Resolved),
            Err(LayoutError::MissingStruct { .. }) => (0, BackingFiles::Absent),
            Err(error) => (0, BackingFiles::UnknownLayout(error.to_string())),
        };

        let ((binprm_interp, task_task_works, file_task_work, file_flags), deferred_release) =
            match self.deferred_release() {
                Ok(offsets) => (offsets, Ok(())),
                // `f_flags` is also read by the vShield programs.
                Err(error) => ((0, 0, 0, self.core(FILE_FLAGS)?), Err(error.to_string())),
            };

        let (mmap_offsets, syscall_mmap) = match self.mmap_offsets() {
            Ok(offsets) => (offsets, Ok(())),
            Err(error) => (MmapOffsets::default(), Err(error.to_string())),
        };

        let (mount_offsets, mount_walk) = match self.mount_offsets(&core) {
            Ok(offsets) => (offsets, Ok(())),
            Err(error) => (MountOffsets::default(), Err(error.to_string())),
        };

        let (ovl_inode_upperdentry, overlay) = self.ovl_inode_upperdentry()?;
        let (overlay_lower, overlay_lower_source) =
            self.vshield_layout(ovl_inode_upperdentry, &overlay)?;
        let offsets = KernelOffsets {
            binprm_file,
            binprm_filename: core(BINPRM_FILENAME)?,
            inode_sb: core(INODE_SB)?,
            inode_ino: core(INODE_INO)?,
            sb_magic: core(SB_MAGIC)?,
            sb_dev: core(SB_DEV)?,
            ovl_inode_upperdentry,
            task_real_parent: core(TASK_REAL_PARENT)?,
            task_tgid: core(TASK_TGID)?,
            task_nsproxy: core(TASK_NSPROXY)?,
            nsproxy_mnt_ns: core(NSPROXY_MNT_NS)?,
            mnt_namespace_inum: core(MNT_NAMESPACE_INUM)?,
            file_path_mnt: core(FILE_PATH_MNT)?,
            file_path_dentry: core(FILE_PATH_DENTRY)?,
            dentry_name: core(DENTRY_NAME)?,
            dentry_inode: core(DENTRY_INODE)?,
            sb_flags: core(SB_FLAGS)?,
            vfsmount_flags: core(VFSMOUNT_FLAGS)?,
            task_fs: core(TASK_FS)?,
            fs_root_mnt: core(FS_ROOT_MNT)?,
            fs_root_dentry: core(FS_ROOT_DENTRY)?,
            vma_file: core(VMA_FILE)?,
            vfsmount_mnt_ns,
            task_mm: core(TASK_MM)?,
            mm_exe_file: core(MM_EXE_FILE)?,
            backing_file_user_path,
            file_mode: core(FILE_MODE)?,
            inode_mode: core(INODE_MODE)?,
            dentry_parent: core(DENTRY_PARENT)?,
            dentry_name_len: core(DENTRY_NAME_LEN)?,
            vfsmount_mnt_root: core(VFSMOUNT_MNT_ROOT)?,
            mount_parent: core(MOUNT_MNT_PARENT)?,
            mount_mountpoint: core(MOUNT_MNT_MOUNTPOINT)?,
            mount_mnt,
            binprm_interp,
            task_task_works,
            file_task_work,
            file_flags,
            sb_user_ns: core(SB_USER_NS)?,
            user_ns_level: core(USER_NS_LEVEL)?,
            mnt_namespace_user_ns: core(MNT_NAMESPACE_USER_NS)?,
            mnt_namespace_id: self.mnt_namespace_id()?,
        };
        Ok(Layout {
            offsets,
            overlay,
            backing_files,
            deferred_release,
            mmap_offsets,
            syscall_mmap,
            overlay_lower,
            overlay_lower_source,
            task_offsets: self.task_offsets()?,
            mount_offsets,
            mount_walk,
        })
    }

    /// Where a mount namespace keeps its 64-bit id: `seq` up to 6.17,
    /// `ns.ns_id` since.
    fn mnt_namespace_id(&self) -> Result<u32, LayoutError> {
        match self.core(MNT_NAMESPACE_SEQ) {
            Err(LayoutError::MissingField { .. }) => self.core(MNT_NAMESPACE_NS_ID),
            other => other,
        }
    }

    /// Whether the kernel has the `bpf_loop` helper (5.17, and kernels it
    /// was backported to): its number is in the `bpf_func_id` enum of the
    /// kernel's own BTF.
    fn has_bpf_loop(&self) -> bool {
        let btf = &self.vmlinux;
        btf.resolve_types_by_name("bpf_func_id")
            .unwrap_or_default()
            .iter()
            .any(|ty| match ty {
                Type::Enum(list) => list.members.iter().any(|member| {
                    btf.resolve_name(member)
                        .is_ok_and(|name| name == "BPF_FUNC_loop")
                }),
                _ => false,
            })
    }

    fn mount_offsets(
        &self,
        core: &impl Fn(Field) -> Result<u32, LayoutError>,
    ) -> Result<MountOffsets, LayoutError> {
        let mount_mnt = core(MOUNT_MNT)?;
        // Up to 6.15 a list of `mnt_instance` nodes; since, a chain of
        // pointers.
        let (sb_mounts, list_head, mount_link) = match core(MOUNT_NEXT_FOR_SB) {
            Ok(link) => (core(SB_MOUNTS)?, 0, link),
            Err(LayoutError::MissingField { .. }) => {
                (core(SB_MOUNTS_LIST)?, 1, core(MOUNT_MNT_INSTANCE)?)
            }
            Err(error) => return Err(error),
        };
        Ok(MountOffsets {
            walk: if self.has_bpf_loop() {
                mount_walk::LOOP
            } else {
                mount_walk::NO_LOOP
            },
            sb_mounts,
            list_head,
            mount_link,
            mount_mnt,
            vfsmount_flags: core(VFSMOUNT_FLAGS)?,
            vfsmount_mnt_root: core(VFSMOUNT_MNT_ROOT)?,
            vfsmount_mnt_ns: relative(mount_mnt, MOUNT_MNT_NS, core(MOUNT_MNT_NS)?, "mnt")?,
            dentry_parent: core(DENTRY_PARENT)?,
            mnt_namespace_id: self.mnt_namespace_id()?,
            mnt_namespace_user_ns: core(MNT_NAMESPACE_USER_NS)?,
            user_ns_level: core(USER_NS_LEVEL)?,
        })
    }

    /// What the vShield programs read: `file.f_inode`, and where overlayfs
    /// keeps an overlay inode's lower inode (or why that is unknown).
    fn vshield_layout(
        &self,
        upperdentry: u32,
        overlay: &OverlayLayout,
    ) -> Result<(OverlayLower, Result<String, String>), LayoutError> {
        let file_inode = self.core(FILE_INODE)?;
        Ok(match self.overlay_lower(upperdentry, overlay) {
            Ok((lower, source)) => (
                OverlayLower {
                    file_inode,
                    ..lower
                },
                Ok(source),
            ),
            Err(reason) => (
                OverlayLower {
                    file_inode,
                    ..OverlayLower::default()
                },
                Err(reason),
            ),
        })
    }

    /// Where overlayfs keeps an overlay inode's lower inode, relative to its
    /// `vfs_inode`, and how that was found; or why it is unknown.
    fn overlay_lower(
        &self,
        upperdentry: u32,
        overlay: &OverlayLayout,
    ) -> Result<(OverlayLower, String), String> {
        if let OverlayLayout::DerivedFromInodeSize { reason } = overlay {
            // Kernels without module BTF: 5.10 and older in practice (module
            // BTF came with 5.11), whose `struct inode *lower` follows
            // `__upperdentry`. Newer layouts cannot be guessed.
            return if self.legacy_overlay {
                Ok((
                    OverlayLower {
                        kind: overlay_lower::INODE,
                        lower: upperdentry + 8,
                        ..OverlayLower::default()
                    },
                    format!("ovl_inode.lower right after __upperdentry, the 5.x layout ({reason})"),
                ))
            } else {
                Err(reason.clone())
            };
        }
        let (overlay_module, searched) = self.overlay_types().map_err(|error| error.to_string())?;
        let btf = overlay_module.as_ref().unwrap_or(&self.vmlinux);
        let found = lower_fields(btf, &searched).map_err(|error| error.to_string())?;
        Ok((found, format!("from BTF ({searched})")))
    }

    /// `linux_binprm.interp`, `task_struct.task_works`, the file's task
    /// work and `file.f_flags`: optional, only the signal backend's script check reads them.
    fn deferred_release(&self) -> Result<(u32, u32, u32, u32), LayoutError> {
        let core = |field| self.core(field);
        let file_task_work = FILE_TASK_WORK
            .into_iter()
            .map(&core)
            .reduce(Result::or)
            .unwrap_or(Err(LayoutError::MissingField {
                strukt: "file",
                path: "f_task_work",
            }))?;
        Ok((
            core(BINPRM_INTERP)?,
            core(TASK_TASK_WORKS)?,
            file_task_work,
            core(FILE_FLAGS)?,
        ))
    }

    /// What the lineage walk of decision records and the exec-session
    /// check read: tasks' names, pid namespaces and cgroups.
    fn task_offsets(&self) -> Result<TaskOffsets, LayoutError> {
        let core = |field| self.core(field);
        let (btf, searched) = self.vmlinux_types();
        let upid = find_struct(btf, "upid")
            .map_err(|source| LayoutError::Malformed {
                strukt: "upid",
                path: "",
                source,
            })?
            .ok_or(LayoutError::MissingStruct {
                strukt: "upid",
                searched,
            })?;
        Ok(TaskOffsets {
            task_comm: core(TASK_COMM)?,
            task_thread_pid: core(TASK_THREAD_PID)?,
            pid_level: core(PID_LEVEL)?,
            pid_numbers: core(PID_NUMBERS)?,
            upid_size: u32::try_from(upid.size()).map_err(|_| LayoutError::UnexpectedWidth {
                strukt: "upid",
                path: "",
                expected: "under 4 GiB".to_owned(),
                found: upid.size().to_string(),
            })?,
            upid_nr: core(UPID_NR)?,
            upid_ns: core(UPID_NS)?,
            pid_namespace_inum: core(PID_NAMESPACE_INUM)?,
            task_cgroups: core(TASK_CGROUPS)?,
            css_set_dfl_cgrp: core(CSS_SET_DFL_CGRP)?,
            cgroup_kn: core(CGROUP_KN)?,
            kernfs_node_id: core(KERNFS_NODE_ID)?,
            cgroup_parent: {
                // The parent's css is its cgroup only while `self` comes
                // first, as it has since cgroup v2 exists.
                if core(CGROUP_SELF)? != 0 {
                    return Err(LayoutError::UnexpectedWidth {
                        strukt: "cgroup",
                        path: "self",
                        expected: "at offset 0".to_owned(),
                        found: "elsewhere".to_owned(),
                    });
                }
                core(CGROUP_PARENT)?
            },
            task_cred: core(TASK_CRED)?,
            cred_cap_effective: core(CRED_CAP_EFFECTIVE)?,
            cred_user_ns: core(CRED_USER_NS)?,
        })
    }

    fn mmap_offsets(&self) -> Result<MmapOffsets, LayoutError> {
        let core = |field| self.core(field);
        let [arg1, arg3, arg4, arg5] = REGS_SYSCALL_ARGS;
        Ok(MmapOffsets {
            task_files: core(TASK_FILES)?,
            files_fdt: core(FILES_FDT)?,
            fdtable_max_fds: core(FDTABLE_MAX_FDS)?,
            fdtable_fd: core(FDTABLE_FD)?,
            regs_arg1: core(arg1)?,
            regs_arg3: core(arg3)?,
            regs_arg4: core(arg4)?,
            regs_arg5: core(arg5)?,
            mm_saved_auxv: core(MM_SAVED_AUXV)?,
            thread_status: core(THREAD_STATUS)?,
            regs_orig_ax: core(REGS_ORIG_AX)?,
            regs_bx: core(REGS_COMPAT_ARGS[0])?,
            regs_cx: core(REGS_COMPAT_ARGS[1])?,
            regs_si: core(REGS_COMPAT_ARGS[2])?,
            regs_bp: core(REGS_COMPAT_ARGS[3])?,
            regs_ax: core(REGS_AX)?,
        })
    }

    /// `ovl_inode.__upperdentry` relative to the embedded `vfs_inode`: from
    /// overlay's BTF, or, on kernels that publish no BTF for it, derived
    /// from `sizeof(struct inode)`.
    fn ovl_inode_upperdentry(&self) -> Result<(u32, OverlayLayout), LayoutError> {
        let (overlay_module, searched) = self.overlay_types()?;
        let overlay_btf = overlay_module.as_ref().unwrap_or(&self.vmlinux);
        if overlay_module.is_none()
            && find_struct(overlay_btf, OVL_INODE_UPPERDENTRY.strukt)
                .map_err(|source| LayoutError::Malformed {
                    strukt: OVL_INODE_UPPERDENTRY.strukt,
                    path: OVL_INODE_UPPERDENTRY.path,
                    source,
                })?
                .is_none()
        {
            // Kernels before 5.11 (or without CONFIG_DEBUG_INFO_BTF_MODULES)
            // publish no BTF for modules, and overlay is usually a module.
            // `__upperdentry` directly follows the embedded inode in every
            // kernel from 5.x to 7.x.
            let inode = find_struct(&self.vmlinux, "inode")
                .map_err(|source| LayoutError::Malformed {
                    strukt: "inode",
                    path: "",
                    source,
                })?
                .ok_or_else(|| LayoutError::MissingStruct {
                    strukt: "inode",
                    searched: searched.clone(),
                })?;
            let size = u32::try_from(inode.size()).map_err(|_| LayoutError::UnexpectedWidth {
                strukt: "inode",
                path: "",
                expected: "under 4 GiB".to_owned(),
                found: inode.size().to_string(),
            })?;
            return Ok((
                size,
                OverlayLayout::DerivedFromInodeSize {
                    reason: format!(
                        "no BTF defines struct ovl_inode (searched {searched}; this kernel publishes no BTF for the \
                         overlay module)"
                    ),
                },
            ));
        }
        let ovl = |f: Field| resolve(overlay_btf, &searched, f);
        // The programs hold a pointer to the `vfs_inode` embedded in an
        // `ovl_inode`, so the upper dentry is addressed relative to it.
        let vfs_inode = ovl(OVL_INODE_VFS_INODE)?;
        let upper = ovl(OVL_INODE_UPPERDENTRY)?;
        let offset = relative(vfs_inode, OVL_INODE_UPPERDENTRY, upper, "vfs_inode")?;
        Ok((offset, OverlayLayout::Btf { searched }))
    }
}

/// The fields of [`OverlayLower`] (but `file_inode`) from the BTF that
/// defines overlayfs' types.
fn lower_fields(btf: &Btf, searched: &str) -> Result<OverlayLower, LayoutError> {
    let ovl = |f: Field| resolve(btf, searched, f);
    let vfs_inode = ovl(OVL_INODE_VFS_INODE)?;
    let after_inode = |f: Field, offset: u32| relative(vfs_inode, f, offset, "vfs_inode");
    if let Ok(lower) = ovl(OVL_INODE_LOWER) {
        return Ok(OverlayLower {
            kind: overlay_lower::INODE,
            lower: after_inode(OVL_INODE_LOWER, lower)?,
            ..OverlayLower::default()
        });
    }
    if let Ok(lowerpath) = ovl(OVL_INODE_LOWERPATH) {
        return Ok(OverlayLower {
            kind: overlay_lower::DENTRY,
            lower: after_inode(OVL_INODE_LOWERPATH, lowerpath)? + ovl(OVL_PATH_DENTRY)?,
            ..OverlayLower::default()
        });
    }
    let oe = ovl(OVL_INODE_OE)?;
    Ok(OverlayLower {
        kind: overlay_lower::ENTRY,
        lower: after_inode(OVL_INODE_OE, oe)?,
        entry_numlower: ovl(OVL_ENTRY_NUMLOWER)?,
        entry_dentry: ovl(OVL_ENTRY_LOWERSTACK)? + ovl(OVL_PATH_DENTRY)?,
        ..OverlayLower::default()
    })
}

/// Parses BTF through btf-rs' mmap backend, which reads types on demand:
/// about ten times faster than parsing every type up front, which matters
/// on small nodes and under emulation. sysfs BTF files can only be mapped on
/// recent kernels, so the bytes go through a memfd.
fn parse_mapped(path: &Path) -> btf_rs::Result<Btf> {
    let bytes = std::fs::read(path)?;
    // SAFETY: a valid C string; flags are plain bits.
    let fd = unsafe { libc::memfd_create(c"kernel-btf".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: `fd` was just created and is owned here alone.
    let memfd = std::fs::File::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
    std::io::Write::write_all(&mut &memfd, &bytes)?;
    // btf-rs maps by path; the mapping outlives the descriptor.
    Btf::from_file_with_backend(format!("/proc/self/fd/{fd}"), btf_rs::Backend::Mmap)
}

/// Whether kernel release `release` ("5.10.0-30-amd64") is older than
/// `(major, minor)`; an unparsable release is not.
fn release_before(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(found_major)), Some(Ok(found_minor))) => {
            (found_major, found_minor) < (major, minor)
        }
        _ => false,
    }
}

/// `field`'s offset from an embedded member at `base` (named `base_name`)
/// of the same struct; the field must come after it.
fn relative(base: u32, field: Field, offset: u32, base_name: &str) -> Result<u32, LayoutError> {
    offset
        .checked_sub(base)
        .ok_or_else(|| LayoutError::UnexpectedWidth {
            strukt: field.strukt,
            path: field.path,
            expected: format!("placed after {base_name}"),
            found: format!("at offset {offset}, before {base_name} at {base}"),
        })
}

/// Byte offset of `field` in its struct, after checking its width.
fn resolve(btf: &Btf, searched: &str, field: Field) -> Result<u32, LayoutError> {
    let malformed = |source| LayoutError::Malformed {
        strukt: field.strukt,
        path: field.path,
        source,
    };
    let mut current = find_struct(btf, field.strukt)
        .map_err(malformed)?
        .ok_or_else(|| LayoutError::MissingStruct {
            strukt: field.strukt,
            searched: searched.to_owned(),
        })?;
    let mut bit_offset = 0u32;
    let mut member_type = None;
    for (depth, name) in field.path.split('.').enumerate() {
        if depth > 0 {
            current = match member_type
                .take()
                .map(|ty| strip(btf, ty))
                .transpose()
                .map_err(malformed)?
            {
                Some(Type::Struct(s) | Type::Union(s)) => s,
                _ => {
                    return Err(LayoutError::MissingField {
                        strukt: field.strukt,
                        path: field.path,
                    });
                }
            };
        }
        let found = find_member(btf, &current, name).map_err(malformed)?.ok_or(
            LayoutError::MissingField {
                strukt: field.strukt,
                path: field.path,
            },
        )?;
        if found.bitfield {
            return Err(LayoutError::Bitfield {
                strukt: field.strukt,
                path: field.path,
            });
        }
        bit_offset += found.bit_offset;
        member_type = Some(found.ty);
    }
    if !bit_offset.is_multiple_of(8) {
        return Err(LayoutError::Bitfield {
            strukt: field.strukt,
            path: field.path,
        });
    }
    let member_type = member_type.ok_or(LayoutError::MissingField {
        strukt: field.strukt,
        path: field.path,
    })?;
    check_width(btf, field, member_type)?;
    Ok(bit_offset / 8)
}

/// The complete (non-forward) definition of `struct name`.
fn find_struct(btf: &Btf, name: &str) -> btf_rs::Result<Option<btf_rs::Struct>> {
    Ok(btf
        .resolve_types_by_name(name)?
        .into_iter()
        .find_map(|ty| match ty {
            Type::Struct(s) if s.size() > 0 || !s.members.is_empty() => Some(s),
            _ => None,
        }))
}

/// A member found by [`find_member`].
struct FoundMember {
    /// Bit offset from the start of the searched struct.
    bit_offset: u32,
    ty: Type,
    bitfield: bool,
}

/// Finds member `name` in `strukt`, descending into anonymous struct and
/// union members (the kernel uses them freely, and randomised layouts add
/// more).
fn find_member(
    btf: &Btf,
    strukt: &btf_rs::Struct,
    name: &str,
) -> btf_rs::Result<Option<FoundMember>> {
    for member in &strukt.members {
        let member_name = btf.resolve_name(member)?;
        let ty = btf.resolve_chained_type(member)?;
        if member_name == name {
            return Ok(Some(FoundMember {
                bit_offset: member.bit_offset(),
                ty,
                bitfield: member.bitfield_size().is_some_and(|size| size != 0),
            }));
        }
        if member_name.is_empty()
            && let Type::Struct(inner) | Type::Union(inner) = strip(btf, ty)?
            && let Some(found) = find_member(btf, &inner, name)?
        {
            return Ok(Some(FoundMember {
                bit_offset: member.bit_offset() + found.bit_offset,
                ..found
            }));
        }
    }
    Ok(None)
}

/// Follows typedefs and qualifiers to the underlying type.
fn strip(btf: &Btf, mut ty: Type) -> btf_rs::Result<Type> {
    // Bounded: a malformed BTF could contain a cycle.
    for _ in 0..32 {
        ty = match ty {
            Type::Typedef(t) => btf.resolve_chained_type(&t)?,
            Type::Volatile(t) | Type::Const(t) | Type::Restrict(t) => {
                btf.resolve_chained_type(&t)?
            }
            Type::TypeTag(t) => btf.resolve_chained_type(&t)?,
            other => return Ok(other),
        };
    }
    Err(btf_rs::Error::Format(
        "type chain longer than 32 links".to_owned(),
    ))
}

fn check_width(btf: &Btf, field: Field, ty: Type) -> Result<(), LayoutError> {
    let ty = strip(btf, ty).map_err(|source| LayoutError::Malformed {
        strukt: field.strukt,
        path: field.path,
        source,
    })?;
    let found = match &ty {
        Type::Ptr(_) => Width::Pointer,
        Type::Int(int) => Width::Bytes(int.size()),
        // Embedded structs are only located, never read whole.
        Type::Struct(_) | Type::Union(_) | Type::Array(_) if field.width == Width::Bytes(0) => {
            return Ok(());
        }
        other => {
            return Err(LayoutError::UnexpectedWidth {
                strukt: field.strukt,
                path: field.path,
                expected: field.width.to_string(),
                found: format!("a {}", other.name()),
            });
        }
    };
    if found == field.width {
        Ok(())
    } else {
        Err(LayoutError::UnexpectedWidth {
            strukt: field.strukt,
            path: field.path,
            expected: field.width.to_string(),
            found: found.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The host's own BTF: these tests resolve real kernel layouts, not fixtures.
    fn host_btf() -> Option<KernelBtf> {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("skipping: {VMLINUX_BTF} does not exist (kernel built without BTF)");
            return None;
        }
        Some(KernelBtf::load(None).expect("host BTF parses"))
    }

    #[test]
    fn resolves_the_lineage_offsets_from_host_btf() {
        let Some(btf) = host_btf() else { return };
        let task = btf.offsets().expect("all offsets resolve").task_offsets;
        // Fields that cannot be first in their struct on any kernel.
        for (name, value) in [
            ("task_struct.comm", task.task_comm),
            ("task_struct.thread_pid", task.task_thread_pid),
            ("pid.level", task.pid_level),
            ("pid.numbers", task.pid_numbers),
            ("upid.ns", task.upid_ns),
            ("pid_namespace.ns.inum", task.pid_namespace_inum),
            ("task_struct.cgroups", task.task_cgroups),
            ("css_set.dfl_cgrp", task.css_set_dfl_cgrp),
            ("cgroup.kn", task.cgroup_kn),
            ("kernfs_node.id", task.kernfs_node_id),
        ] {
            assert_ne!(value, 0, "{name}");
        }
        // `struct upid { int nr; struct pid_namespace *ns; }`.
        assert_eq!((task.upid_size, task.upid_nr), (16, 0));
    }

    #[test]
    fn resolves_every_offset_from_host_btf() {
        let Some(btf) = host_btf() else { return };
        let layout = btf.offsets().expect("all offsets resolve");
        // The vShield identity walk: found wherever overlay's types are in
        // BTF, in the layout of the kernel's era.
        assert_ne!(layout.overlay_lower.file_inode, 0);
        if matches!(layout.overlay, OverlayLayout::Btf { .. }) {
            assert!(
                layout.overlay_lower_source.is_ok(),
                "{:?}",
                layout.overlay_lower_source
            );
            let lower = layout.overlay_lower;
            assert_ne!(lower.kind, overlay_lower::UNKNOWN);
            if lower.kind == overlay_lower::ENTRY {
                // `__lowerstack` follows `__numlower`; a path is two pointers.
                assert!(lower.entry_dentry > lower.entry_numlower, "{lower:?}");
            }
        }
        // Kernels with backing files (6.6+) must have the layout the
        // programs read; older ones have none.
        assert!(
            !matches!(layout.backing_files, BackingFiles::UnknownLayout(_)),
            "{:?}",
            layout.backing_files
        );
        if layout.backing_files == BackingFiles::Resolved {
            let file = find_struct(&btf.vmlinux, "file").unwrap().unwrap();
            assert_eq!(layout.offsets.backing_file_user_path as usize, file.size());
        }
        // The script check of the signal backend reads these on every kernel
        // of the matrix (this test runs in each VM).
        assert_eq!(layout.deferred_release, Ok(()));
        assert_eq!(layout.syscall_mmap, Ok(()));
        assert_eq!(layout.mount_walk, Ok(()));
        // The helper arrived in 5.17; the matrix has kernels on both sides.
        assert_eq!(
            layout.mount_offsets.walk == mount_walk::LOOP,
            !release_before(&super::super::features::kernel_release(), (5, 17))
        );
        let offsets = layout.offsets;
        // Fields that cannot be first in their struct on any kernel.
        for (name, value) in [
            ("linux_binprm.interp", offsets.binprm_interp),
            ("task_struct.task_works", offsets.task_task_works),
            ("file.f_flags", offsets.file_flags),
            ("task_struct.files", layout.mmap_offsets.task_files),
            ("fdtable.fd", layout.mmap_offsets.fdtable_fd),
            ("pt_regs.dx", layout.mmap_offsets.regs_arg3),
            ("linux_binprm.file", offsets.binprm_file),
            ("linux_binprm.filename", offsets.binprm_filename),
            ("inode.i_sb", offsets.inode_sb),
            ("inode.i_ino", offsets.inode_ino),
            ("super_block.s_magic", offsets.sb_magic),
            ("task_struct.real_parent", offsets.task_real_parent),
            ("task_struct.tgid", offsets.task_tgid),
            ("task_struct.nsproxy", offsets.task_nsproxy),
            ("nsproxy.mnt_ns", offsets.nsproxy_mnt_ns),
            ("mnt_namespace.ns.inum", offsets.mnt_namespace_inum),
            ("file.f_path.mnt", offsets.file_path_mnt),
            ("dentry.d_name.name", offsets.dentry_name),
            ("dentry.d_inode", offsets.dentry_inode),
            ("super_block.s_flags", offsets.sb_flags),
            ("task_struct.fs", offsets.task_fs),
            ("fs_struct.root.mnt", offsets.fs_root_mnt),
            ("vm_area_struct.vm_file", offsets.vma_file),
            ("mount.mnt_ns - mount.mnt", offsets.vfsmount_mnt_ns),
            ("super_block.s_mounts", layout.mount_offsets.sb_mounts),
            ("mount.mnt_instance", layout.mount_offsets.mount_link),
            ("task_struct.mm", offsets.task_mm),
            ("dentry.d_parent", offsets.dentry_parent),
            ("dentry.d_name.len", offsets.dentry_name_len),
            ("mount.mnt_parent", offsets.mount_parent),
            ("mount.mnt_mountpoint", offsets.mount_mountpoint),
            ("mount.mnt", offsets.mount_mnt),
        ] {
            assert_ne!(value, 0, "{name} resolved to offset 0");
        }
        // Pointers are 8-byte aligned in every kernel struct.
        // (The file's task work is the first member on 5.10 and 6.1.)
        for value in [
            offsets.file_task_work,
            offsets.task_task_works,
            offsets.binprm_interp,
            offsets.binprm_file,
            offsets.binprm_filename,
            offsets.inode_sb,
            offsets.task_real_parent,
            offsets.task_nsproxy,
            offsets.nsproxy_mnt_ns,
            offsets.file_path_mnt,
            offsets.file_path_dentry,
            offsets.dentry_name,
            offsets.dentry_inode,
            offsets.task_fs,
            offsets.fs_root_mnt,
            offsets.fs_root_dentry,
            offsets.vma_file,
            offsets.dentry_parent,
            offsets.vfsmount_mnt_root,
            offsets.mount_parent,
            offsets.mount_mountpoint,
        ] {
            assert_eq!(value % 8, 0);
        }
        // struct qstr is { { u32 hash; u32 len; } or u64 hash_len; name } on
        // little-endian machines: the length is the hash_len word's upper half.
        assert_eq!(offsets.dentry_name_len + 4, offsets.dentry_name);
        // struct path is { mnt, dentry }.
        assert_eq!(offsets.fs_root_dentry, offsets.fs_root_mnt + 8);
        assert_eq!(offsets.file_path_dentry, offsets.file_path_mnt + 8);
        // The upper dentry pointer directly follows the embedded inode on
        // every kernel from 5.x to 7.x: its distance is sizeof(struct inode).
        let inode = find_struct(&btf.vmlinux, "inode").unwrap().unwrap();
        assert_eq!(offsets.ovl_inode_upperdentry as usize, inode.size());
    }

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert!(release_before("5.10.0-46-amd64", (5, 11)));
        assert!(!release_before("5.11.0", (5, 11)));
        assert!(!release_before("6.1.0-56-amd64", (5, 11)));
        assert!(!release_before("garbage", (5, 11)));
    }

    #[test]
    fn nested_fields_go_through_anonymous_members() {
        let Some(btf) = host_btf() else { return };
        let (vmlinux, searched) = btf.vmlinux_types();
        // `ns_common.inum` sits inside `mnt_namespace.ns`; resolving the
        // nested path must add both offsets.
        let ns = resolve(
            vmlinux,
            &searched,
            field("mnt_namespace", "ns", Width::Bytes(0)),
        )
        .unwrap();
        let inum = resolve(
            vmlinux,
            &searched,
            field("ns_common", "inum", Width::Bytes(4)),
        )
        .unwrap();
        assert_eq!(ns + inum, btf.offsets().unwrap().offsets.mnt_namespace_inum);
    }

    #[test]
    fn missing_fields_and_structs_are_named() {
        let Some(btf) = host_btf() else { return };
        let (vmlinux, searched) = btf.vmlinux_types();
        let err = resolve(
            vmlinux,
            &searched,
            field("inode", "i_no_such_field", Width::Pointer),
        )
        .unwrap_err();
        assert_eq!(err.field().as_deref(), Some("inode.i_no_such_field"));
        assert!(
            err.to_string()
                .contains("inode has no field i_no_such_field"),
            "{err}"
        );

        let err = resolve(
            vmlinux,
            &searched,
            field("no_such_struct", "x", Width::Pointer),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                LayoutError::MissingStruct {
                    strukt: "no_such_struct",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn wrong_widths_are_refused() {
        let Some(btf) = host_btf() else { return };
        let (vmlinux, searched) = btf.vmlinux_types();
        // s_magic is an unsigned long: reading it as 4 bytes would be wrong.
        let err = resolve(
            vmlinux,
            &searched,
            field("super_block", "s_magic", Width::Bytes(4)),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("super_block.s_magic is 8 bytes, the enforcer reads it as 4 bytes"),
            "{err}"
        );
        let err = resolve(vmlinux, &searched, field("inode", "i_ino", Width::Pointer)).unwrap_err();
        assert!(matches!(err, LayoutError::UnexpectedWidth { .. }), "{err}");
    }

    #[test]
    fn unreadable_btf_is_a_read_error_naming_the_file() {
        let err = KernelBtf::from_files(
            Path::new("/nonexistent/vmlinux"),
            Path::new("/nonexistent/overlay"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmlinux"), "{err}");
    }
}
