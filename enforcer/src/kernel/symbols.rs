//! Kernel symbol addresses, from `/proc/kallsyms`.

use std::{fs, io};

const KALLSYMS: &str = "/proc/kallsyms";

/// The address of `name` in the text of a kallsyms file; `None` when it is
/// absent or hidden (`kptr_restrict` shows zeros to whoever may not see it).
/// Pure.
#[must_use]
pub fn find(kallsyms: &str, name: &str) -> Option<u64> {
    kallsyms.lines().find_map(|line| {
        let mut words = line.split_ascii_whitespace();
        let address = words.next()?;
        let _kind = words.next()?;
        // Module symbols carry `[module]` after the name.
        (words.next()? == name)
            .then(|| u64::from_str_radix(address, 16).ok())
            .flatten()
            .filter(|&address| address != 0)
    })
}

/// The address of kernel symbol `name` on this machine.
///
/// # Errors
///
/// Reading `/proc/kallsyms` failed.
pub fn address(name: &str) -> io::Result<Option<u64>> {
    Ok(find(&fs::read_to_string(KALLSYMS)?, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff816d84f0 t ____fput
ffffffff816d8500 T __fput_sync
ffffffffc0a01000 t ovl_open\t[overlay]
";

    #[test]
    fn finds_a_symbol_by_its_whole_name() {
        assert_eq!(find(SAMPLE, "____fput"), Some(0xffff_ffff_816d_84f0));
        assert_eq!(find(SAMPLE, "ovl_open"), Some(0xffff_ffff_c0a0_1000));
        assert_eq!(find(SAMPLE, "__fput"), None);
    }

    #[test]
    fn hidden_addresses_are_absent() {
        assert_eq!(find("0000000000000000 t ____fput\n", "____fput"), None);
    }

    #[test]
    fn finds_fput_on_this_machine_as_root() {
        // Readable by anyone; addresses are shown to root unless
        // kptr_restrict is 2.
        if !is_root() {
            return;
        }
        let address = address("____fput").expect("/proc/kallsyms is readable");
        if fs::read_to_string("/proc/sys/kernel/kptr_restrict").is_ok_and(|v| v.trim() != "2") {
            assert!(address.is_some(), "____fput in /proc/kallsyms");
        }
    }

    fn is_root() -> bool {
        // SAFETY: no arguments, cannot fail.
        unsafe { libc::geteuid() == 0 }
    }
}
