//! A tool for test container images: performs the operations an attacker
//! uses to run a dropped file, and reports the result on stdout.
//!
//! - `probe say TEXT`: print TEXT
//! - `probe noop`: exit 0
//! - `probe execveat PATH ARGS...`: `execveat(fd of PATH, "", AT_EMPTY_PATH)`;
//!   the descriptor is inherited, so that a script can be run this way (the
//!   interpreter opens `/dev/fd/N`)
//! - `probe exec-deleted PATH ARGS...`: open PATH, unlink it, then
//!   `execveat` the descriptor of the deleted file
//! - `probe exec-fd FD ARGS...`: `execveat(FD, "", AT_EMPTY_PATH)` of an
//!   inherited descriptor, with ARGS as its arguments (`argv[0]` first)
//! - `probe mmap-exec-fd FD`: map inherited descriptor FD with
//!   `PROT_READ | PROT_EXEC`
//! - `probe userns STEP... -- PROGRAM ARGS...`: what a container process
//!   can do with an unprivileged user namespace and no capabilities on the
//!   host: enter a new user and mount namespace (root in it, with every
//!   capability there until it execs), take each STEP, then exec PROGRAM.
//!   Steps: `bind:SRC:DST`, `ro:DST` (remount a bind mount read-only),
//!   `tmpfs:DST`, `mkdir:DIR`, `remount-ro:DST` (the filesystem itself), `copy:SRC:DST`
//!   (mode 0755), `overlay:LOWERS:DST` (read-only, `LOWERS` joined by `+`),
//!   `overlay-rw:LOWERS:UPPER:WORK:DST`, `detach:DST` (`umount -l`, keeping a
//!   descriptor of DST open as descriptor 3 and changing to it),
//!   `chroot:DIR`, `cgroup:DIR` (make the cgroup DIR and move this process
//!   into it), `mntns` (a new mount namespace in the same user namespace,
//!   as `unshare -m`). A failed step prints `STEP: ERROR` and exits 1.
//! - `probe steps STEP... -- PROGRAM ARGS...`: the same steps, in the
//!   process's own namespaces and with its own capabilities (a privileged
//!   container's)
//! - `probe setattr-ro PATH`: make the mount at PATH read-only in place
//!   with `mount_setattr` (5.12+), which needs `CAP_SYS_ADMIN`
//! - `probe compat-remount-ro PATH`: the same with `mount` through the
//!   32-bit system call gate
//! - `probe exec-with-fds N PATH ARGS...`: open N files (close-on-exec,
//!   each its own open file), then `execv` PATH with ARGS (`argv[0]` is
//!   PATH)
//! - `probe pkey-mprotect-exec PATH`: map PATH read-only, then
//!   `pkey_mprotect` it executable (no key)
//! - `probe compat-available`: whether the 32-bit system call gate
//!   (`int $0x80`) answers (`getpid` through it); dies of `SIGSEGV` where
//!   the kernel has no 32-bit emulation
//! - `probe compat-mprotect-exec PATH`, `compat-mmap2-exec PATH`,
//!   `compat-old-mmap-exec PATH`: the same through the 32-bit gate, on a
//!   mapping below 4 GiB
//! - `probe memfd-exec PATH ARGS...`: copy PATH into a memfd and `fexecve` it
//! - `probe mmap-exec PATH`: map PATH with `PROT_READ | PROT_EXEC`
//! - `probe mprotect-exec PATH`: map PATH read-only, then `mprotect` to exec
//! - `probe dlopen PATH`: `dlopen(PATH, RTLD_NOW)`
//! - `probe exec-loop N PATH ARGS...`: fork and exec PATH N times, waiting
//!   for each; prints `ops_per_sec=R`
//! - `probe exec-flood N PATH ARGS...`: as exec-loop, but a run that is
//!   refused or killed counts as done (a flood of decisions)
//! - `probe mmap-loop N PATH`: map PATH executable and unmap it N times;
//!   prints `ops_per_sec=R` (with an audited drift file: N decisions at the
//!   rate of a system call)
//! - `probe open-loop N PATH`: open and close PATH N times; prints
//!   `ops_per_sec=R`
//!
//! Failures print `OPERATION: ERROR` and exit 126 (exec routes) or 1.

use std::{
    ffi::{CStr, CString},
    io,
    os::unix::ffi::OsStrExt as _,
    process::ExitCode,
};

fn fail(operation: &str, error: &dyn std::fmt::Display, code: u8) -> ExitCode {
    println!("{operation}: {error}");
    ExitCode::from(code)
}

fn cstring(text: &str) -> CString {
    CString::new(text).expect("argument without NUL bytes")
}

/// `execveat(fd, "", args, {}, AT_EMPTY_PATH)`; returns only on failure.
fn exec_fd(fd: libc::c_int, args: &[String]) -> io::Error {
    let owned: Vec<CString> = args.iter().map(|arg| cstring(arg)).collect();
    let mut pointers: Vec<*const libc::c_char> = owned.iter().map(|arg| arg.as_ptr()).collect();
    pointers.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: argv and envp are NULL-terminated arrays of valid C strings.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            c"".as_ptr(),
            pointers.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    io::Error::last_os_error()
}

fn open(path: &str) -> io::Result<libc::c_int> {
    open_with(path, libc::O_CLOEXEC)
}

fn open_with(path: &str, flags: libc::c_int) -> io::Result<libc::c_int> {
    let path = cstring(path);
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | flags) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fd)
    }
}

fn map(fd: libc::c_int, prot: libc::c_int) -> io::Result<*mut libc::c_void> {
    // SAFETY: a fresh private mapping of one page of an open file.
    let address = unsafe { libc::mmap(std::ptr::null_mut(), 4096, prot, libc::MAP_PRIVATE, fd, 0) };
    if address == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(address)
    }
}

fn memfd_with(path: &str) -> io::Result<libc::c_int> {
    let content = std::fs::read(path)?;
    // SAFETY: valid C string; flags are plain bits.
    let fd = unsafe { libc::memfd_create(c"probe".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut written = 0;
    while written < content.len() {
        // SAFETY: writes from a live buffer to an open fd.
        let n = unsafe {
            libc::write(
                fd,
                content[written..].as_ptr().cast(),
                content.len() - written,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        written += n.cast_unsigned();
    }
    Ok(fd)
}

/// fork + execv + waitpid, `count` times.
/// Forks and execs `args` `count` times; with `any_end`, a child that was
/// refused or killed is not an error.
fn exec_loop(count: u32, args: &[String], any_end: bool) -> io::Result<()> {
    let owned: Vec<CString> = args.iter().map(|arg| cstring(arg)).collect();
    let mut pointers: Vec<*const libc::c_char> = owned.iter().map(|arg| arg.as_ptr()).collect();
    pointers.push(std::ptr::null());
    for _ in 0..count {
        // SAFETY: the child only calls execv and _exit.
        match unsafe { libc::fork() } {
            -1 => return Err(io::Error::last_os_error()),
            0 => {
                // SAFETY: NULL-terminated argv of valid C strings.
                unsafe {
                    libc::execv(pointers[0], pointers.as_ptr());
                    libc::_exit(127);
                }
            }
            child => {
                let mut status = 0;
                // SAFETY: waits for the child just forked.
                if unsafe { libc::waitpid(child, &raw mut status, 0) } < 0 {
                    return Err(io::Error::last_os_error());
                }
                if !any_end && (!libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0) {
                    return Err(io::Error::other(format!(
                        "{} exited with status {status}",
                        args[0]
                    )));
                }
            }
        }
    }
    Ok(())
}

fn open_loop(count: u32, path: &str) -> io::Result<()> {
    let path = cstring(path);
    for _ in 0..count {
        // SAFETY: valid C string; the descriptor is closed right away.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: closes the descriptor opened above.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

fn mmap_loop(count: u32, path: &str) -> io::Result<()> {
    let fd = open(path)?;
    for _ in 0..count {
        let address = map(fd, libc::PROT_READ | libc::PROT_EXEC)?;
        // SAFETY: unmaps the page mapped just above.
        unsafe { libc::munmap(address, 4096) };
    }
    Ok(())
}

/// Runs `work` (`count` operations) and prints its rate.
fn timed(name: &str, count: u32, work: impl FnOnce() -> io::Result<()>) -> ExitCode {
    let started = std::time::Instant::now();
    match work() {
        Ok(()) => {
            let rate = f64::from(count) / started.elapsed().as_secs_f64();
            println!("ops_per_sec={rate:.1}");
            ExitCode::SUCCESS
        }
        Err(error) => fail(name, &error, 1),
    }
}

/// Opens `/proc/self/exe` `count` times, close-on-exec, after raising the
/// descriptor limit to its hard limit.
fn open_many(count: u32) -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit to fill, then to set.
    unsafe {
        check(libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit))?;
        limit.rlim_cur = limit.rlim_max;
        check(libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit))?;
    }
    for _ in 0..count {
        // SAFETY: a valid C string; the descriptor is left open on purpose.
        if unsafe { libc::open(c"/proc/self/exe".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `probe userns`: the steps, then the exec.
fn userns(args: &[String], enter: bool) -> ExitCode {
    let Some(split) = args.iter().position(|arg| arg == "--") else {
        return fail("userns", &"usage: STEP... -- PROGRAM ARGS...", 2);
    };
    let (steps, program) = (&args[..split], &args[split + 1..]);
    if program.is_empty() {
        return fail("userns", &"usage: STEP... -- PROGRAM ARGS...", 2);
    }
    if enter && let Err(error) = enter_userns() {
        return fail("unshare", &error, 1);
    }
    for step in steps {
        if let Err(error) = take_step(step) {
            return fail(step, &error, 1);
        }
    }
    let owned: Vec<CString> = program.iter().map(|arg| cstring(arg)).collect();
    let mut pointers: Vec<*const libc::c_char> = owned.iter().map(|arg| arg.as_ptr()).collect();
    pointers.push(std::ptr::null());
    // SAFETY: a NULL-terminated array of valid C strings.
    unsafe { libc::execv(owned[0].as_ptr(), pointers.as_ptr()) };
    fail("exec", &io::Error::last_os_error(), 126)
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A new user namespace in which this process is root, and a new mount
/// namespace owned by it.
fn enter_userns() -> io::Result<()> {
    // SAFETY: plain system calls.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    // SAFETY: plain system call.
    check(unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) })?;
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))?;
    std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"))?;
    Ok(())
}

fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let (source, target, fstype, data) = (
        cstring(source),
        cstring(target),
        cstring(fstype),
        cstring(data),
    );
    // SAFETY: valid C strings.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })
}

fn take_step(step: &str) -> io::Result<()> {
    let parts: Vec<&str> = step.split(':').collect();
    match parts.as_slice() {
        ["bind", source, target] => mount(source, target, "", libc::MS_BIND, ""),
        ["ro", target] => mount(
            "",
            target,
            "",
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            "",
        ),
        ["tmpfs", target] => mount("tmpfs", target, "tmpfs", 0, ""),
        ["mkdir", dir] => std::fs::create_dir_all(dir),
        // A mount namespace of its own, copied from the current one, in
        // the same user namespace (`unshare -m`).
        // SAFETY: plain system call.
        ["mntns"] => check(unsafe { libc::unshare(libc::CLONE_NEWNS) }),
        ["remount-ro", target] => mount("", target, "", libc::MS_REMOUNT | libc::MS_RDONLY, ""),
        ["copy", source, target] => {
            std::fs::copy(source, target)?;
            std::fs::set_permissions(target, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        }
        ["overlay", lowers, target] => mount(
            "overlay",
            target,
            "overlay",
            0,
            &format!("lowerdir={}", lowers.replace('+', ":")),
        ),
        ["overlay-rw", lowers, upper, work, target] => mount(
            "overlay",
            target,
            "overlay",
            0,
            &format!(
                "lowerdir={},upperdir={upper},workdir={work}",
                lowers.replace('+', ":")
            ),
        ),
        ["detach", target] => {
            let dir = cstring(target);
            // SAFETY: valid C string; the descriptor is kept for the exec.
            let fd = unsafe { libc::open(dir.as_ptr(), libc::O_PATH | libc::O_DIRECTORY) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: plain system calls on valid descriptors and strings.
            unsafe {
                check(libc::dup2(fd, 3).min(0))?;
                check(libc::fchdir(3))?;
                check(libc::umount2(dir.as_ptr(), libc::MNT_DETACH))
            }
        }
        ["cgroup", dir] => {
            std::fs::create_dir_all(dir)?;
            std::fs::write(
                std::path::Path::new(dir).join("cgroup.procs"),
                std::process::id().to_string(),
            )
        }
        ["chroot", dir] => {
            let dir = cstring(dir);
            // SAFETY: valid C strings.
            unsafe {
                check(libc::chroot(dir.as_ptr()))?;
                check(libc::chdir(c"/".as_ptr()))
            }
        }
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "unknown step")),
    }
}

/// A system call through the 32-bit gate (`int $0x80`): `eax` the number,
/// `ebx`, `ecx`, `edx`, `esi`, `edi`, `ebp` the arguments.
fn int80(number: u32, args: [u32; 6]) -> i32 {
    let result: i32;
    // SAFETY: a system call with plain integer arguments; rbx and rbp are
    // saved and restored around it, since Rust may not name them.
    unsafe {
        core::arch::asm!(
            "push rbx",
            "push rbp",
            "mov ebx, {first:e}",
            "mov ebp, {sixth:e}",
            "int 0x80",
            "pop rbp",
            "pop rbx",
            first = in(reg) args[0],
            sixth = in(reg) args[5],
            inlateout("eax") number => result,
            in("ecx") args[1],
            in("edx") args[2],
            in("esi") args[3],
            in("edi") args[4],
        );
    }
    result
}

/// A page of `fd` mapped read-only below 4 GiB, where 32-bit calls reach it.
fn map_low(fd: libc::c_int) -> io::Result<u32> {
    // SAFETY: a fresh private mapping of one page of an open file.
    let address = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_32BIT,
            fd,
            0,
        )
    };
    if address == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(address as usize).map_err(|_| io::Error::other("mapping above 4 GiB"))
}

/// A fresh writable anonymous page below 4 GiB, where the 32-bit gate's
/// pointer arguments can point.
fn low_page() -> io::Result<*mut libc::c_void> {
    // SAFETY: a fresh private anonymous page.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(page)
    }
}

/// The 32-bit and `pkey_mprotect` commands.
fn gate(command: &str, path: &str) -> ExitCode {
    const READ_EXEC: u32 = (libc::PROT_READ | libc::PROT_EXEC) as u32;
    let answer = |result: i32| {
        if (-4095..0).contains(&result) {
            fail(command, &io::Error::from_raw_os_error(-result), 1)
        } else {
            fail(command, &"ok", 0)
        }
    };
    if command == "compat-available" {
        // SAFETY: getpid cannot fail.
        let native = unsafe { libc::getpid() };
        return if int80(20, [0; 6]) == native {
            fail(command, &"yes", 0)
        } else {
            fail(command, &"no", 1)
        };
    }
    let fd = match open(path) {
        Ok(fd) => fd,
        Err(error) => return fail("open", &error, 1),
    };
    let fd_arg = u32::try_from(fd).unwrap_or(0);
    let private = libc::MAP_PRIVATE as u32;
    match command {
        "pkey-mprotect-exec" => match map(fd, libc::PROT_READ) {
            // SAFETY: changes the protection of the page just mapped.
            Ok(address) => answer(unsafe {
                libc::syscall(libc::SYS_pkey_mprotect, address, 4096, READ_EXEC, -1) as i32
            }),
            Err(error) => fail("mmap", &error, 1),
        },
        "compat-mprotect-exec" => match map_low(fd) {
            Ok(address) => answer(int80(125, [address, 4096, READ_EXEC, 0, 0, 0])),
            Err(error) => fail("mmap", &error, 1),
        },
        "compat-mmap2-exec" => answer(int80(192, [0, 4096, READ_EXEC, private, fd_arg, 0])),
        "compat-old-mmap-exec" => {
            let block = match low_page() {
                Ok(block) => block,
                Err(error) => return fail("mmap", &error, 1),
            };
            let values: [u32; 6] = [0, 4096, READ_EXEC, private, fd_arg, 0];
            // SAFETY: the page is writable and holds six u32 values.
            unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), block.cast::<u32>(), 6) };
            answer(int80(90, [block as usize as u32, 0, 0, 0, 0, 0]))
        }
        _ => fail("unknown command", &command, 2),
    }
}

/// `probe exec-with-fds N PATH ARGS...`.
fn exec_with_fds(rest: &[String]) -> ExitCode {
    let command = "exec-with-fds";
    let (Some(count), Some(target)) = (
        rest.first().and_then(|n| n.parse::<u32>().ok()),
        rest.get(1),
    ) else {
        return fail(command, &"usage: N PATH ARGS...", 2);
    };
    if let Err(error) = open_many(count) {
        return fail("open", &error, 1);
    }
    let owned: Vec<CString> = rest[1..].iter().map(|arg| cstring(arg)).collect();
    let mut pointers: Vec<*const libc::c_char> = owned.iter().map(|arg| arg.as_ptr()).collect();
    pointers.push(std::ptr::null());
    // SAFETY: a NULL-terminated array of valid C strings.
    unsafe { libc::execv(cstring(target).as_ptr(), pointers.as_ptr()) };
    fail("exec", &io::Error::last_os_error(), 126)
}

/// `probe exec-fd FD ARGS...` and `probe mmap-exec-fd FD`.
fn on_fd(command: &str, rest: &[String]) -> ExitCode {
    let path = rest.first().map_or("", String::as_str);
    let Ok(fd) = path.parse::<libc::c_int>() else {
        return fail(command, &"usage: FD ARGS...", 2);
    };
    if command == "exec-fd" {
        fail("exec-fd", &exec_fd(fd, &rest[1..]), 126)
    } else {
        match map(fd, libc::PROT_READ | libc::PROT_EXEC) {
            Ok(_) => fail("mmap-exec-fd", &"ok", 0),
            Err(error) => fail("mmap-exec-fd", &error, 1),
        }
    }
}

/// `mount_setattr(AT_FDCWD, path, 0, {attr_set: MOUNT_ATTR_RDONLY})`.
fn setattr_read_only(path: &str) -> ExitCode {
    /// `struct mount_attr`: `attr_set`, `attr_clr`, `propagation`,
    /// `userns_fd`.
    #[repr(C)]
    struct MountAttr {
        set: u64,
        clear: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 1;
    let target = CString::new(path).expect("path without NUL");
    let attr = MountAttr {
        set: MOUNT_ATTR_RDONLY,
        clear: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: valid C string and a struct of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            0,
            &raw const attr,
            size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        fail("setattr-ro", &"ok", 0)
    } else {
        fail("setattr-ro", &io::Error::last_os_error(), 1)
    }
}

/// `probe compat-remount-ro PATH`: `mount -o remount,bind,ro PATH` through
/// the 32-bit system call gate (`int $0x80`), with the path copied below
/// 4 GiB where that gate can point at it.
fn compat_remount_read_only(path: &str) -> ExitCode {
    const MOUNT: u32 = 21;
    let flags = (libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY) as u32;
    let page = match low_page() {
        Ok(page) => page,
        Err(error) => return fail("mmap", &error, 1),
    };
    let bytes = path.as_bytes();
    if bytes.len() >= 4096 {
        return fail("compat-remount-ro", &"path too long", 2);
    }
    // SAFETY: the page is 4096 writable bytes; the rest of it is zero.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), page.cast::<u8>(), bytes.len()) };
    let Ok(address) = u32::try_from(page as usize) else {
        return fail("compat-remount-ro", &"mapping above 4 GiB", 1);
    };
    let result = int80(MOUNT, [0, address, 0, flags, 0, 0]);
    if (-4095..0).contains(&result) {
        fail(
            "compat-remount-ro",
            &io::Error::from_raw_os_error(-result),
            1,
        )
    } else {
        fail("compat-remount-ro", &"ok", 0)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        return fail("usage", &"probe COMMAND ARGS...", 2);
    };
    let path = rest.first().map_or("", String::as_str);
    match command.as_str() {
        "say" => {
            println!("{}", rest.join(" "));
            ExitCode::SUCCESS
        }
        "noop" => ExitCode::SUCCESS,
        "execveat" => match open_with(path, 0) {
            Ok(fd) => fail("execveat", &exec_fd(fd, rest), 126),
            Err(error) => fail("open", &error, 1),
        },
        "userns" => userns(rest, true),
        "steps" => userns(rest, false),
        "pkey-mprotect-exec"
        | "compat-available"
        | "compat-mprotect-exec"
        | "compat-mmap2-exec"
        | "compat-old-mmap-exec" => gate(command, path),
        "exec-with-fds" => exec_with_fds(rest),
        "setattr-ro" => setattr_read_only(path),
        "compat-remount-ro" => compat_remount_read_only(path),
        "exec-fd" | "mmap-exec-fd" => on_fd(command, rest),
        "exec-deleted" => match open(path).and_then(|fd| std::fs::remove_file(path).map(|()| fd)) {
            Ok(fd) => fail("exec-deleted", &exec_fd(fd, rest), 126),
            Err(error) => fail("open/unlink", &error, 1),
        },
        "memfd-exec" => match memfd_with(path) {
            Ok(fd) => fail("memfd-exec", &exec_fd(fd, rest), 126),
            Err(error) => fail("memfd", &error, 1),
        },
        "mmap-exec" => match open(path).and_then(|fd| map(fd, libc::PROT_READ | libc::PROT_EXEC)) {
            Ok(_) => fail("mmap-exec", &"ok", 0),
            Err(error) => fail("mmap-exec", &error, 1),
        },
        "mprotect-exec" => match open(path).and_then(|fd| map(fd, libc::PROT_READ)) {
            Ok(address) => {
                // SAFETY: changes the protection of the page mapped just above.
                let rc =
                    unsafe { libc::mprotect(address, 4096, libc::PROT_READ | libc::PROT_EXEC) };
                if rc == 0 {
                    fail("mprotect-exec", &"ok", 0)
                } else {
                    fail("mprotect-exec", &io::Error::last_os_error(), 1)
                }
            }
            Err(error) => fail("mmap", &error, 1),
        },
        "dlopen" => {
            let library =
                CString::new(std::ffi::OsStr::new(path).as_bytes()).expect("path without NUL");
            // SAFETY: valid C string; the handle is deliberately leaked.
            let handle = unsafe { libc::dlopen(library.as_ptr(), libc::RTLD_NOW) };
            if handle.is_null() {
                // SAFETY: dlerror returns a valid C string after a failure.
                let error = unsafe { CStr::from_ptr(libc::dlerror()) };
                fail("dlopen", &error.to_string_lossy(), 1)
            } else {
                fail("dlopen", &"ok", 0)
            }
        }
        "exec-loop" | "exec-flood" | "open-loop" | "mmap-loop" => {
            let Some(count) = rest.first().and_then(|n| n.parse::<u32>().ok()) else {
                return fail(command, &"usage: COUNT PATH ARGS...", 2);
            };
            let target = &rest[1..];
            if target.is_empty() {
                return fail(command, &"usage: COUNT PATH ARGS...", 2);
            }
            if command == "exec-loop" || command == "exec-flood" {
                timed(command, count, || {
                    exec_loop(count, target, command == "exec-flood")
                })
            } else if command == "mmap-loop" {
                timed(command, count, || mmap_loop(count, &target[0]))
            } else {
                timed(command, count, || open_loop(count, &target[0]))
            }
        }
        other => fail("unknown command", &other, 2),
    }
}
