//! The fuzz targets' property checks, one function per target taking the raw fuzz input. The
//! regression test shared/tests/fuzz_regressions.rs includes the same file (`#[path]`), so a
//! crash input replayed there is checked exactly as the fuzzer checked it.

pub mod properties;
