//! Fuzz target `backup_file`: hostile bytes into the parser `switchyard::fuzz::backup_file` checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::backup_file(data));
