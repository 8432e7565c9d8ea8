#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shared_fuzz::properties::mfa_codes(data));
