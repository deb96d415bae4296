//! Fuzz target `client_auth`: hostile bytes into the parser `switchyard::fuzz::client_auth` checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::client_auth(data));
