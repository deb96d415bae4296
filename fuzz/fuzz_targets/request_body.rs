//! Fuzz target `request_body`: hostile bytes into the parser `switchyard::fuzz::request_body` checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::request_body(data));
