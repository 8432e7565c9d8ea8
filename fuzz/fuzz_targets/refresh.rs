#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shared_fuzz::properties::refresh(data));
