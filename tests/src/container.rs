//! Real containers, minimally: an image directory as the overlayfs lower
//! layer, a fresh mount namespace, a private tmpfs for the upper layer, a
//! cgroup v2 group of its own, a tmpfs at /dev/shm, /proc, optional bind-mounted
//! volumes, and `pivot_root` into the overlay. This is what a container runtime
//! sets up for a container's filesystems.

use std::{
    ffi::CString,
    fs, io,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::require::{self, patience};

/// Applets linked into the image; each is an exec of the image's busybox.
const APPLETS: &[&str] = &[
    "sh", "echo", "cp", "cat", "ls", "stat", "mv", "ln", "chmod", "rm", "true",
];
const BUSYBOX: &str = "/bin/busybox";
/// The capabilities a container keeps: Docker's and containerd's default
/// set (`CAP_CHOWN`, `CAP_DAC_OVERRIDE`, `CAP_FOWNER`, `CAP_FSETID`,
/// `CAP_KILL`, `CAP_SETGID`, `CAP_SETUID`, `CAP_SETPCAP`,
/// `CAP_NET_BIND_SERVICE`, `CAP_NET_RAW`, `CAP_SYS_CHROOT`, `CAP_MKNOD`,
/// `CAP_AUDIT_WRITE`, `CAP_SETFCAP`), by number. No `CAP_SYS_ADMIN`: a
/// container process mounts only in a user namespace of its own.
const DEFAULT_CAPABILITIES: &[libc::c_int] = &[0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];
/// Capability numbers dropped from the bounding set beyond those the
/// kernel knows (`EINVAL`, ignored).
const CAPABILITY_MAX: libc::c_int = 63;
/// Limit for a container's run; a hang is a test failure, not a stuck CI job.
const RUN_TIMEOUT: Duration = Duration::from_mins(2);

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A unique scratch directory, removed on drop.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(what: &str) -> io::Result<Self> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("enforcer-test-{}-{what}-{id}", std::process::id()));
        fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A scratch directory with a fresh tmpfs mounted on it: a container
/// runtime's storage (overlayfs needs an upper layer that is not itself on
/// overlayfs, as the VMs' /tmp is). The caller unmounts it.
pub fn tmpfs_scratch(what: &str) -> anyhow::Result<Scratch> {
    let dir = Scratch::new(what)?;
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(dir.path())
        .status()
        .context("running mount")?;
    if !status.success() {
        bail!("mounting a tmpfs at {} failed", dir.path().display());
    }
    Ok(dir)
}

/// Unmounts what is mounted at `path` (lazily: a test's leftovers must not
/// fail the next one).
pub fn unmount(path: &Path) {
    if let Ok(path) = cstring(path) {
        // SAFETY: a valid NUL-terminated string.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A container image: the read-only lower layer.
#[derive(Debug)]
pub struct Image {
    root: PathBuf,
    /// The directory the image was made in, removed on drop; `None` for a
    /// root filesystem made elsewhere ([`Image::from_root`]).
    _scratch: Option<Scratch>,
    /// Absolute paths (inside the image) of the shared libraries copied in.
    libraries: Vec<String>,
    /// The image is on a tmpfs of its own, unmounted on drop.
    on_tmpfs: bool,
}

impl Image {
    /// A small image: a static busybox with applet links, /tmp, /dev/shm.
    pub fn busybox() -> anyhow::Result<Self> {
        Self::busybox_in(Scratch::new("image")?, false)
    }

    fn busybox_in(root: Scratch, on_tmpfs: bool) -> anyhow::Result<Self> {
        let busybox = require::program(BUSYBOX, "busybox-static");
        let bin = root.path().join("bin");
        fs::create_dir_all(&bin)?;
        fs::create_dir_all(root.path().join("tmp"))?;
        fs::create_dir_all(root.path().join("dev/shm"))?;
        fs::create_dir_all(root.path().join("proc"))?;
        fs::copy(busybox, bin.join("busybox")).context("copying busybox into the image")?;
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
        Ok(Self {
            root: root.path().to_owned(),
            _scratch: Some(root),
            libraries: Vec::new(),
            on_tmpfs,
        })
    }

    /// A root filesystem made elsewhere (such as the Debian image `cargo
    /// xtask setup` builds), used where it is and left there.
    pub fn from_root(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            _scratch: None,
            libraries: Vec::new(),
            on_tmpfs: false,
        }
    }

    /// The busybox image plus a dynamically linked program at `/bin/NAME`
    /// with the libraries and dynamic loader it needs, copied from the host
    /// to the same paths (as `ldd` lists them).
    pub fn with_dynamic(program: &Path, name: &str) -> anyhow::Result<Self> {
        Self::dynamic_in(Self::busybox()?, program, name)
    }

    /// [`Image::with_dynamic`] on a tmpfs of its own rather than in the
    /// temporary directory, which is overlayfs itself in the VMs: an overlay
    /// that a container mounts over its own root is then within the
    /// kernel's stacking limit of two.
    pub fn with_dynamic_on_tmpfs(program: &Path, name: &str) -> anyhow::Result<Self> {
        let image = Self::busybox_in(tmpfs_scratch("image")?, true)?;
        Self::dynamic_in(image, program, name)
    }

    fn dynamic_in(image: Self, program: &Path, name: &str) -> anyhow::Result<Self> {
        let mut image = image;
        fs::copy(program, image.root().join("bin").join(name))
            .with_context(|| format!("copying {} into the image", program.display()))?;
        let ldd = Command::new("ldd")
            .arg(program)
            .output()
            .context("running ldd")?;
        anyhow::ensure!(ldd.status.success(), "ldd {} failed", program.display());
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; vdso has no file.
            let library = line
                .split("=>")
                .last()
                .and_then(|rest| rest.split_whitespace().next())
                .filter(|path| path.starts_with('/'));
            if let Some(library) = library {
                let target = image.root().join(library.trim_start_matches('/'));
                fs::create_dir_all(target.parent().context("library path has a parent")?)?;
                // Copies the file a symlink points to, under the link's name.
                fs::copy(library, &target)
                    .with_context(|| format!("copying {library} into the image"))?;
                image.libraries.push(library.to_owned());
            }
        }
        Ok(image)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The image path of the copied library whose file name starts with
    /// `prefix`.
    pub fn library(&self, prefix: &str) -> Option<&str> {
        self.libraries.iter().map(String::as_str).find(|path| {
            path.rsplit('/')
                .next()
                .is_some_and(|name| name.starts_with(prefix))
        })
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if self.on_tmpfs {
            unmount(&self.root);
        }
    }
}

/// A host directory bind-mounted into a container.
#[derive(Debug, Clone)]
pub struct Volume {
    pub host: PathBuf,
    /// Absolute path inside the container.
    pub at: String,
    pub read_only: bool,
}

/// A cgroup v2 group for one container, named the way Podman names its
/// containers' groups (`libpod-<ID>.scope`) or, in a Kubernetes pod, the
/// way containerd's CRI plugin does with the systemd driver
/// (`kubepods-besteffort-pod<UID>.slice/cri-containerd-<ID>.scope`); under a
/// parent group of the test run, removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    /// The directories made, innermost first.
    made: Vec<PathBuf>,
    path: PathBuf,
    /// The container id the group's name carries.
    pub container_id: String,
}

impl Cgroup {
    /// Creates a Podman-named group under the cgroup v2 mount, if there is one.
    pub fn create() -> anyhow::Result<Option<Self>> {
        Self::named(|id| format!("libpod-{id}.scope"))
    }

    /// Creates the group of a container of the Kubernetes pod `uid`.
    pub fn in_pod(uid: &str) -> anyhow::Result<Option<Self>> {
        let slice = format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_"));
        Self::named(|id| format!("{slice}/cri-containerd-{id}.scope"))
    }

    fn named(name: impl Fn(&str) -> String) -> anyhow::Result<Option<Self>> {
        let Some(mount) = cgroup2_mount()? else {
            return Ok(None);
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let parent = mount.join(format!("enforcer-test-{}-{id}", std::process::id()));
        let container_id = format!(
            "{:064x}",
            u128::from(std::process::id()) << 64 | u128::from(id)
        );
        let path = parent.join(name(&container_id));
        fs::create_dir_all(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        let made = path
            .ancestors()
            .take_while(|dir| dir.starts_with(&parent))
            .map(Path::to_path_buf)
            .collect();
        Ok(Some(Self {
            made,
            path,
            container_id,
        }))
    }

    /// The id `bpf_get_current_cgroup_id` reports: the group's inode number.
    pub fn id(&self) -> anyhow::Result<u64> {
        Ok(fs::metadata(&self.path)?.ino())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for dir in &self.made {
            let _ = fs::remove_dir(dir);
        }
    }
}

fn cgroup2_mount() -> anyhow::Result<Option<PathBuf>> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    // Fields: id parent maj:min root mountpoint options ... - fstype source superopts
    Ok(mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        before.split_whitespace().nth(4).map(PathBuf::from)
    }))
}

/// The result of one container run.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The container's cgroup id, when cgroup v2 is mounted.
    pub cgroup_id: Option<u64>,
    /// The container id its cgroup's name carries, when cgroup v2 is
    /// mounted.
    pub container_id: Option<String>,
}

impl Run {
    /// The value of the first `key=value` line of stdout.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.stdout
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
    }
}

fn cstring(path: &Path) -> anyhow::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).context("path with a NUL byte")
}

/// What the container's first process does between fork and exec. Every
/// string is prepared before the fork: only async-signal-safe calls are
/// allowed there, so nothing may allocate.
struct Setup {
    /// Mount an overlay of the image at `merged`; otherwise `merged` already
    /// holds a plain root filesystem.
    overlay: bool,
    cgroup_procs: Option<CString>,
    scratch: CString,
    upper: CString,
    work: CString,
    merged: CString,
    overlay_options: CString,
    shm: CString,
    proc: CString,
    /// (host directory, mount point in the root, read-only)
    volumes: Vec<(CString, CString, bool)>,
    /// Keep every capability (`--privileged`), instead of Docker's default
    /// set.
    privileged: bool,
}

impl Setup {
    fn new(
        state: &Path,
        root: &Root<'_>,
        cgroup: Option<&Cgroup>,
        volumes: &[Volume],
    ) -> anyhow::Result<Self> {
        let upper = state.join("upper");
        let work = state.join("work");
        let (merged, lower, overlay) = match root {
            Root::Overlay(image) => (state.join("merged"), image.root().to_owned(), true),
            Root::Plain(plain) => (plain.path.clone(), PathBuf::new(), false),
        };
        let volumes = volumes
            .iter()
            .map(|volume| {
                let at = merged.join(volume.at.trim_start_matches('/'));
                Ok((cstring(&volume.host)?, cstring(&at)?, volume.read_only))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            overlay,
            cgroup_procs: cgroup
                .map(|cgroup| cstring(&cgroup.path.join("cgroup.procs")))
                .transpose()?,
            scratch: cstring(state)?,
            overlay_options: CString::new(format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            ))?,
            upper: cstring(&upper)?,
            work: cstring(&work)?,
            shm: cstring(&merged.join("dev/shm"))?,
            proc: cstring(&merged.join("proc"))?,
            merged: cstring(&merged)?,
            volumes,
            privileged: false,
        })
    }

    /// Joins the cgroup, enters a new mount namespace, mounts the root
    /// filesystem (an overlay with a private tmpfs for its upper layer, or
    /// the plain root as it is), /dev/shm and the volumes, pivots into the
    /// root, and keeps Docker's default capabilities, as runc does.
    fn enter(&self) -> io::Result<()> {
        fn check(rc: libc::c_int) -> io::Result<()> {
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }
        let none = std::ptr::null();
        // SAFETY: system calls on NUL-terminated strings owned by `self`.
        unsafe {
            if let Some(procs) = &self.cgroup_procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // "0" moves the writing process itself.
                let written = libc::write(fd, c"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                none.cast(),
            ))?;
            if self.overlay {
                check(libc::mount(
                    c"tmpfs".as_ptr(),
                    self.scratch.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    none.cast(),
                ))?;
                for dir in [&self.upper, &self.work, &self.merged] {
                    check(libc::mkdir(dir.as_ptr(), 0o755))?;
                }
                check(libc::mount(
                    c"overlay".as_ptr(),
                    self.merged.as_ptr(),
                    c"overlay".as_ptr(),
                    0,
                    self.overlay_options.as_ptr().cast(),
                ))?;
            }
            check(libc::mount(
                c"shm".as_ptr(),
                self.shm.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                none.cast(),
            ))?;
            check(libc::mount(
                c"proc".as_ptr(),
                self.proc.as_ptr(),
                c"proc".as_ptr(),
                0,
                none.cast(),
            ))?;
            for (host, at, read_only) in &self.volumes {
                // Mount points are created in the container's root, as
                // runtimes do.
                libc::mkdir(at.as_ptr(), 0o755);
                check(libc::mount(
                    host.as_ptr(),
                    at.as_ptr(),
                    none,
                    libc::MS_BIND,
                    none.cast(),
                ))?;
                if *read_only {
                    check(libc::mount(
                        none,
                        at.as_ptr(),
                        none,
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                        none.cast(),
                    ))?;
                }
            }
            // pivot_root, as runtimes do (runc's `pivot_root(".", ".")`):
            // the container's root becomes its mount namespace's root, and
            // the host's tree is detached rather than hidden by a chroot.
            check(libc::chdir(self.merged.as_ptr()))?;
            check(
                libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr())
                    .try_into()
                    .unwrap_or(-1),
            )?;
            check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
            check(libc::chdir(c"/".as_ptr()))?;
        }
        if self.privileged {
            return Ok(());
        }
        drop_capabilities()
    }
}

/// Keeps Docker's default capabilities: root's capabilities after the exec
/// are its bounding set.
fn drop_capabilities() -> io::Result<()> {
    for capability in 0..=CAPABILITY_MAX {
        if DEFAULT_CAPABILITIES.contains(&capability) {
            continue;
        }
        // SAFETY: a plain system call.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0) };
        if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A container's root filesystem.
#[derive(Debug)]
pub enum Root<'a> {
    /// An overlay with the image as its lower layer, as overlayfs
    /// snapshotters make.
    Overlay(&'a Image),
    /// A writable copy of the image on a filesystem that is not overlayfs, as
    /// btrfs or zfs snapshotters and bind-mounted directories give.
    Plain(&'a PlainRoot),
}

/// A copy of an image on a tmpfs of its own (a directory would not do: the
/// VMs' `/tmp` is overlayfs itself). Unmounted on drop.
#[derive(Debug)]
pub struct PlainRoot {
    _scratch: Scratch,
    path: PathBuf,
}

impl PlainRoot {
    pub fn new(image: &Image) -> anyhow::Result<Self> {
        let scratch = Scratch::new("plain-root")?;
        let path = scratch.path().join("root");
        fs::create_dir(&path)?;
        let target = cstring(&path)?;
        // SAFETY: valid NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        anyhow::ensure!(rc == 0, "mount tmpfs: {}", io::Error::last_os_error());
        let root = Self {
            _scratch: scratch,
            path,
        };
        copy_tree(image.root(), &root.path)?;
        Ok(root)
    }
}

impl Drop for PlainRoot {
    fn drop(&mut self) {
        unmount(&self.path);
    }
}

/// Copies a directory tree with its symlinks and permissions.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&source)?, &target)?;
        } else if kind.is_dir() {
            fs::create_dir(&target)?;
            fs::set_permissions(&target, entry.metadata()?.permissions())?;
            copy_tree(&source, &target)?;
        } else {
            fs::copy(&source, &target).with_context(|| format!("copying {}", source.display()))?;
        }
    }
    Ok(())
}

/// Runs `script` with the image's `/bin/sh` as the container's first process.
pub fn run(image: &Image, script: &str) -> anyhow::Result<Run> {
    run_in(&Root::Overlay(image), &[], script)
}

/// [`run`], with `volumes` bind-mounted into the container.
pub fn run_with(image: &Image, volumes: &[Volume], script: &str) -> anyhow::Result<Run> {
    run_in(&Root::Overlay(image), volumes, script)
}

/// Runs `script` as the first process of a container with `root`.
pub fn run_in(root: &Root<'_>, volumes: &[Volume], script: &str) -> anyhow::Result<Run> {
    run_in_group(root, Cgroup::create()?.as_ref(), volumes, script)
}

/// [`run_in`], in `cgroup` (made beforehand, so that the agent can find the
/// container before its first process runs).
pub fn run_in_group(
    root: &Root<'_>,
    cgroup: Option<&Cgroup>,
    volumes: &[Volume],
    script: &str,
) -> anyhow::Result<Run> {
    let state = Scratch::new("container")?;
    let setup = Setup::new(state.path(), root, cgroup, volumes)?;
    start(setup, cgroup, script)
}

/// [`run_with`] in a privileged container: every capability, as
/// `--privileged` gives (`CAP_SYS_ADMIN` on the host among them).
pub fn run_privileged(image: &Image, volumes: &[Volume], script: &str) -> anyhow::Result<Run> {
    let state = Scratch::new("container")?;
    let cgroup = Cgroup::create()?;
    let mut setup = Setup::new(
        state.path(),
        &Root::Overlay(image),
        cgroup.as_ref(),
        volumes,
    )?;
    setup.privileged = true;
    start(setup, cgroup.as_ref(), script)
}

/// Runs `script` in the container `setup` makes, in `cgroup`.
fn start(setup: Setup, cgroup: Option<&Cgroup>, script: &str) -> anyhow::Result<Run> {
    let cgroup_id = cgroup.map(Cgroup::id).transpose()?;
    let container_id = cgroup.map(|cgroup| cgroup.container_id.clone());
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(script)
        .env_clear()
        .env("PATH", "/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: `enter` only makes system calls on memory prepared before the
    // fork; it neither allocates nor takes locks.
    unsafe {
        command.pre_exec(move || setup.enter());
    }
    let child = command.spawn().context("starting the container")?;
    let (status, stdout, stderr) = wait_with_output(child)?;
    Ok(Run {
        status,
        stdout,
        stderr,
        cgroup_id,
        container_id,
    })
}

/// Waits for `child` (at most [`RUN_TIMEOUT`]) and collects its output.
fn wait_with_output(
    mut child: std::process::Child,
) -> anyhow::Result<(ExitStatus, String, String)> {
    let read_all = |mut pipe: Box<dyn io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().context("stdout")?));
    let stderr = read_all(Box::new(child.stderr.take().context("stderr")?));
    let (started, limit) = (std::time::Instant::now(), patience(RUN_TIMEOUT));
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("container did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let join = |reader: std::thread::JoinHandle<String>| {
        reader
            .join()
            .map_err(|_| anyhow::anyhow!("output reader panicked"))
    };
    Ok((status, join(stdout)?, join(stderr)?))
}
