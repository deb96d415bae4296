//! Fuzz target `config_file`: hostile bytes into the parser `switchyard::fuzz::config_file` checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::config_file(data));
