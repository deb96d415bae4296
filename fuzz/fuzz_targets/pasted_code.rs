//! Fuzz target `pasted_code`: hostile bytes into the parser `switchyard::fuzz::pasted_code` checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::pasted_code(data));
