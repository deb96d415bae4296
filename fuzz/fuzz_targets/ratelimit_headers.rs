//! Fuzz target `ratelimit_headers`: hostile bytes into the parser `switchyard::fuzz::ratelimit_headers` checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::ratelimit_headers(data));
