//! The enforcer's kernel programs for kernels without `bpf_loop` (before
//! 5.17), which refuse a program that names a callback function even where
//! it is never called: the walks that use it elsewhere are unrolled here.
#![no_std]
#![no_main]
#![expect(
    clippy::inline_always,
    reason = "every helper is inlined into its program: the verifier then sees one \
              straight-line function and constant offsets, and kernels before 5.10 cannot \
              mix BPF-to-BPF calls with some helpers"
)]

/// Whether the programs may call `bpf_loop`.
const WITH_LOOP: bool = false;

include!("programs.rs");
