//! The enforcer's kernel programs.
//!
//! One object holds every program; the agent loads only the ones its backend
//! needs. This object is for kernels with `bpf_loop` (5.17+); `bounded.rs`
//! builds the same programs for those without, where a program may not even
//! name a callback function (5.10 counts it as no function at all). Decisions read kernel structures through offsets that the agent
//! resolved from the running kernel's BTF ([`maps::OFFSETS`]).
#![no_std]
#![no_main]
#![expect(
    clippy::inline_always,
    reason = "every helper is inlined into its program: the verifier then sees one \
              straight-line function and constant offsets, and kernels before 5.10 cannot \
              mix BPF-to-BPF calls with some helpers"
)]

/// Whether the programs may call `bpf_loop`.
const WITH_LOOP: bool = true;

include!("programs.rs");
