//! Fuzz target `sse_tap`: hostile bytes into the parser `switchyard::fuzz::sse_tap` checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::sse_tap(data));
