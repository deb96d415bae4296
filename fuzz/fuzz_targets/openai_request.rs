//! Fuzz target `openai_request`: hostile bytes into the parser `switchyard::fuzz::openai_request` checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::openai_request(data));
