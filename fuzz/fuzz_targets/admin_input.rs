//! Fuzz target `admin_input`: hostile bytes into the parser `switchyard::fuzz::admin_input` checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::admin_input(data));
