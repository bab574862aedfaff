// The crate root shared by the two objects (`main.rs`, `bounded.rs`):
// included, not a module, so that each object's root defines
// `WITH_LOOP` and the modules below see it as `crate::WITH_LOOP`.

mod drift;
mod events;
mod exec;
mod kernel;
mod maps;
mod mmap;
mod mount_changes;
mod mounts;
mod path;
mod script;
mod tracking;
mod vshield;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects any program that could reach this loop, so a
    // panic path left in the code fails loading instead of hanging a CPU.
    loop {}
}

// BPF LSM, bpf_probe_read_kernel and bpf_send_signal are GPL-only helpers;
// "Dual MIT/GPL" is one of the licence strings the kernel accepts as
// GPL-compatible.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
