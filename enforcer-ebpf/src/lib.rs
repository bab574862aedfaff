//! Nothing to link against: the programs live in the `enforcer` binary target.
#![no_std]
