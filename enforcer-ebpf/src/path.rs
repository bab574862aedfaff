//! Allowed paths: the path of a drift file in its container, built in the
//! kernel, run through the automaton the agent compiled from the allowed
//! globs. Only files already found to be drift get here, so image files
//! never pay for it.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_probe_read_kernel;
use enforcer_common::{
    KernelOffsets, PATH_BUF_LEN, PATH_DFA_STATES_MAX, PATH_MAX_LEN, PATH_MAX_STEPS, PathDfaBank,
    counter, path_dfa,
};

use crate::{
    kernel::{self, ReadError},
    maps::{PATH_BUF, PATH_DFA, count},
};

const _: () = assert!(PATH_MAX_LEN.is_power_of_two() && PATH_BUF_LEN >= PATH_MAX_LEN + 256);

const STATE_MASK: usize = PATH_DFA_STATES_MAX as usize - 1;
const _: () = assert!(PATH_DFA_STATES_MAX.is_power_of_two());

/// Longest name a dentry can have (`NAME_MAX`).
const NAME_MAX: u32 = 255;

/// The policy bits of [`PathDfaState::accept`](enforcer_common::PathDfaState)
/// for the path of the file at `mnt` (`struct vfsmount *`) and `dentry` in
/// the mount namespace `mnt_ns` (`struct mnt_namespace *`), run through the
/// automaton in `bank`: which `DriftPolicy`s allow it. A path that cannot
/// be built is allowed by none.
///
/// The caller compares the bits with its policy's mask: a mask passed in
/// here would be one more live value through the byte loop, which made the
/// exec program too complex for the verifier.
#[inline(always)]
pub(crate) fn accepted(
    mnt: u64,
    dentry: u64,
    mnt_ns: u64,
    bank: u32,
    offsets: &KernelOffsets,
) -> Result<u32, ReadError> {
    let Some(buf) = PATH_BUF.get_ptr_mut(0) else {
        return Err(ReadError);
    };
    let buf = buf.cast::<u8>();
    let Some(start) = build(mnt, dentry, mnt_ns, offsets, buf)? else {
        count(counter::PATH_UNRESOLVED);
        return Ok(0);
    };
    let Some(dfa) = PATH_DFA.get(bank) else {
        return Err(ReadError);
    };
    Ok(accepts(dfa, buf, start))
}

/// Builds the path right to left so that it ends at `PATH_MAX_LEN` in `buf`;
/// returns where it starts, or `None` when it is too long, too deep, or not
/// in `mnt_ns` (a detached mount, a layer's private mount).
///
/// The walk goes up to the root of the mount namespace, not to the task's
/// root directory: runtimes `pivot_root` into the container's root, which
/// makes the two the same, while a `chroot` inside the container (into a
/// directory it wrote) must not change which path a file has.
#[inline(always)]
fn build(
    mut mnt: u64,
    mut dentry: u64,
    mnt_ns: u64,
    offsets: &KernelOffsets,
    buf: *mut u8,
) -> Result<Option<u32>, ReadError> {
    let mut start = PATH_MAX_LEN as u32;
    for _ in 0..PATH_MAX_STEPS {
        // Without this, each mix of mount crossings and names of each
        // length so far is another state for the verifier: too many.
        start = launder(buf, start);
        let mnt_root = kernel::read_ptr(mnt, offsets.vfsmount_mnt_root)?;
        if dentry == mnt_root {
            let mount = mnt - u64::from(offsets.mount_mnt);
            let parent = kernel::read_ptr(mount, offsets.mount_parent)?;
            if parent == mount {
                // The namespace's root mount (or a detached one).
                let ns: u64 = kernel::read(mnt, offsets.vfsmount_mnt_ns)?;
                return Ok((ns == mnt_ns).then_some(start));
            }
            dentry = kernel::read_ptr(mount, offsets.mount_mountpoint)?;
            mnt = parent + u64::from(offsets.mount_mnt);
            continue;
        }
        let parent = kernel::read_ptr(dentry, offsets.dentry_parent)?;
        if parent == dentry {
            // The root of a tree that is not mounted here.
            return Ok(None);
        }
        let len: u32 = kernel::read(dentry, offsets.dentry_name_len)?;
        let name = kernel::read_ptr(dentry, offsets.dentry_name)?;
        if len == 0 || len > NAME_MAX || len + 1 > start {
            return Ok(None);
        }
        start -= len + 1;
        // The masks restate for the verifier what the checks above ensure:
        // `start + 1 + len <= PATH_MAX_LEN`, inside the buffer.
        let at = (start as usize) & (PATH_MAX_LEN - 1);
        // SAFETY: `at < PATH_MAX_LEN <= PATH_BUF_LEN`.
        unsafe { *buf.add(at) = b'/' };
        let at = (at + 1) & (PATH_MAX_LEN - 1);
        // SAFETY: `at + 255 < PATH_BUF_LEN`; the helper checks `name`.
        let copied = unsafe {
            bpf_probe_read_kernel(
                buf.add(at).cast::<c_void>(),
                len & NAME_MAX,
                name as *const c_void,
            )
        };
        if copied < 0 {
            return Err(ReadError);
        }
        dentry = parent;
    }
    Ok(None)
}

/// Runs the path `buf[start..PATH_MAX_LEN]` through the automaton `dfa`;
/// returns the accept bits of its last state (0 when it dies on the way).
#[inline(always)]
fn accepts(dfa: &PathDfaBank, buf: *const u8, start: u32) -> u32 {
    // Every way through `build` reaches here with another range for
    // `start`; laundered (and re-bounded), they all look alike to the
    // verifier, which then checks this loop once instead of once per way.
    let start = launder(buf.cast_mut(), start).min(PATH_MAX_LEN as u32);
    let mut state = usize::from(path_dfa::START);
    for pos in start..PATH_MAX_LEN as u32 {
        // LLVM knows `pos < PATH_MAX_LEN`, drops the mask and walks a
        // pointer from `buf + start` instead, whose bounds the verifier
        // cannot follow; the opaque index keeps the mask and the indexing.
        let at = core::hint::black_box(pos) as usize & (PATH_MAX_LEN - 1);
        // SAFETY: masked below `PATH_MAX_LEN`, inside the buffer.
        let byte = unsafe { *buf.add(at) };
        // The agent writes only indices below the bank's size; the mask
        // says so to the verifier (and to LLVM, which drops its bounds check).
        state = usize::from(dfa[state & STATE_MASK].next[usize::from(byte)]);
        if state == usize::from(path_dfa::DEAD) {
            return 0;
        }
    }
    dfa[state & STATE_MASK].accept
}

/// `value`, made opaque to the verifier (see [`launder`]). A caller whose
/// state differs only in such a value reaches [`allowed`] in one state, and
/// its loops are checked once.
#[inline(always)]
pub(crate) fn opaque<T: Copy>(value: T) -> T {
    match PATH_BUF.get_ptr_mut(0) {
        Some(buf) => launder(buf.cast::<u8>(), value),
        None => value,
    }
}

/// Where [`launder`] puts its value: past anything [`build`] writes.
const SCRATCH: usize = PATH_BUF_LEN - 8;
const _: () = assert!(SCRATCH >= PATH_MAX_LEN + 256 && SCRATCH.is_multiple_of(8));

/// `value`, written to and read back from the map value at `buf`. The
/// verifier knows nothing of a value loaded from a map (unlike one spilled
/// to the stack), so all states that differ only in it become one, and the
/// masks at each use still bound it. Volatile, so that LLVM cannot forward
/// the store to the load.
#[inline(always)]
fn launder<T: Copy>(buf: *mut u8, value: T) -> T {
    const { assert!(size_of::<T>() <= 8 && align_of::<T>() <= 8) };
    // SAFETY: `SCRATCH + 8 <= PATH_BUF_LEN`; the buffer is this CPU's.
    // Map values are 8-byte aligned and SCRATCH is a multiple of 8.
    unsafe {
        let slot = buf.add(SCRATCH).cast::<T>();
        core::ptr::write_volatile(slot, value);
        core::ptr::read_volatile(slot)
    }
}
