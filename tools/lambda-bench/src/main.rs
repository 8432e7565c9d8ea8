//! `lambda-bench MODE`: `runtime`, `e2e`, `concurrency`, `round-trips` or `report` (see the
//! library's documentation); scripts/bench.sh runs them in that order, round-trips aside.

use lambda_bench::{Settings, bench, concurrency, e2e, report};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "runtime".into());
    let result = Settings::from_env().and_then(|s| match mode.as_str() {
        "runtime" => bench::runtime_mode(&s),
        "e2e" => e2e::e2e_mode(&s),
        "concurrency" => concurrency::concurrency_mode(&s),
        "round-trips" => bench::round_trips_mode(&s),
        "report" => report::report_mode(&s),
        other => Err(format!(
            "unknown mode `{other}` (runtime, e2e, concurrency, round-trips, report)"
        )
        .into()),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lambda-bench {mode}: {error}");
            ExitCode::FAILURE
        }
    }
}
