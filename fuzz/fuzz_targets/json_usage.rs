//! Fuzz target `json_usage`: hostile bytes into the parser `switchyard::fuzz::json_usage` checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::json_usage(data));
