//! Fuzz target `redact`: hostile bytes into the parser `switchyard::fuzz::redact` checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::redact(data));
