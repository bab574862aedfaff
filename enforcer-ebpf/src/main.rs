//! The enforcer's kernel programs.
//!
//! One object holds every program; the agent loads only the ones its backend
//! needs. Decisions read kernel structures through offsets that the agent
//! resolved from the running kernel's BTF ([`maps::OFFSETS`]).
#![no_std]
#![no_main]
#![expect(
    clippy::inline_always,
    reason = "every helper is inlined into its program: the verifier then sees one \
              straight-line function and constant offsets, and kernels before 5.10 cannot \
              mix BPF-to-BPF calls with some helpers"
)]

mod drift;
mod events;
mod exec;
mod kernel;
mod maps;
mod mmap;
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
