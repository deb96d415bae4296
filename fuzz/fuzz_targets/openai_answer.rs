//! Fuzz target `openai_answer`: hostile bytes into the parser `switchyard::fuzz::openai_answer` checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz::openai_answer(data));
