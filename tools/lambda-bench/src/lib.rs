//! The benchmark harness of `make bench` and the round-trip test of `make test`: the functions'
//! binaries run under a stand-in of the Lambda Runtime API ([`runtime_api`]), their database
//! traffic through a round-trip-counting proxy ([`proxy`]), driven one or four instances at a
//! time ([`driver`]) through one scenario per route ([`routes`]); [`report`] turns the JSON the
//! modes wrote into `target/bench/results.md`.
//!
//! Modes (`lambda-bench MODE`, see `main.rs`): `runtime` ([`bench`]), `e2e` ([`e2e`]),
//! `concurrency` ([`concurrency`]), `round-trips` ([`bench::round_trips_mode`]) and `report`.

pub mod bench;
pub mod concurrency;
pub mod driver;
pub mod e2e;
pub mod http;
pub mod maildev;
pub mod proxy;
pub mod report;
pub mod routes;
pub mod runtime_api;

use serde_json::{Value, json};
use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Every error of the harness: it reports and exits, it never recovers.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// The harness's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where things are: the repository, the function binaries, the output.
pub struct Settings {
    /// The repository root (the workspace whose `functions/*` members are the functions).
    pub root: PathBuf,
    /// The directory holding one binary per function (`BENCH_BIN_DIR`, default target/release).
    pub bin_dir: PathBuf,
    /// JSON, logs and results.md (`BENCH_OUT_DIR`, default target/bench).
    pub out_dir: PathBuf,
}

impl Settings {
    /// From `BENCH_ROOT`, `BENCH_BIN_DIR` and `BENCH_OUT_DIR`, else the repository this crate
    /// sits in.
    pub fn from_env() -> Result<Self> {
        let root = match std::env::var_os("BENCH_ROOT") {
            Some(root) => PathBuf::from(root),
            None => Path::new(env!("CARGO_MANIFEST_DIR"))
                .ancestors()
                .nth(2)
                .ok_or("tools/lambda-bench has no repository above it")?
                .to_path_buf(),
        };
        let bin_dir = std::env::var_os("BENCH_BIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/release"));
        let out_dir = std::env::var_os("BENCH_OUT_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/bench"));
        fs::create_dir_all(out_dir.join("logs"))?;
        Ok(Self {
            root,
            bin_dir,
            out_dir,
        })
    }

    /// Writes `value` to `out_dir/name`.
    pub fn write_json(&self, name: &str, value: &Value) -> Result<()> {
        let path = self.out_dir.join(name);
        fs::write(&path, serde_json::to_string_pretty(value)?)?;
        println!("wrote {}", path.display());
        Ok(())
    }

    /// `out_dir/name`, when it is there and parses.
    pub fn read_json(&self, name: &str) -> Option<Value> {
        let text = fs::read_to_string(self.out_dir.join(name)).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// An environment variable the scripts set; its absence is an error that says so.
pub fn required_env(name: &str) -> Result<String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            format!("{name} must be set (scripts/bench.sh and scripts/round-trips.sh set it)")
                .into()
        })
}

/// A positive count from the environment, else `default`.
pub fn count_env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// A current-thread runtime, as a function has.
pub fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Milliseconds since the epoch (the Runtime API's deadline header).
pub fn epoch_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// 64 random hex characters: a JWT secret for one run.
pub fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Eight random hex characters that keep one run's addresses apart from another's.
pub fn nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// `/proc/loadavg`'s three averages.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Latency samples in milliseconds.
#[derive(Default, Clone)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    /// Adds one.
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1e3);
    }

    /// Nearest-rank percentile; NaN when empty.
    pub fn percentile(&self, p: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }

    /// n, p50, p99, min, max and mean.
    pub fn json(&self) -> Value {
        let n = self.0.len();
        let mean = self.0.iter().sum::<f64>() / n.max(1) as f64;
        json!({
            "n": n,
            "p50_ms": round3(self.percentile(50.0)),
            "p99_ms": round3(self.percentile(99.0)),
            "min_ms": round3(self.percentile(0.0)),
            "max_ms": round3(self.percentile(100.0)),
            "mean_ms": round3(mean),
        })
    }
}

/// Rounded to three decimals (microseconds, for milliseconds).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
