//! Fuzz target `usage_answer`: hostile bytes into the parser `switchyard::fuzz::usage_answer` checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::usage_answer(data));
