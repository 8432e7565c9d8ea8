//! The `runtime` mode (every route of every function: init with TLS, the first request after
//! init and warm runs over TLS, round trips counted through the proxy, peak RSS, and the
//! harness's own floor: argon2id and one round trip) and the `round-trips` mode.

use crate::{
    Result, Samples, Settings, count_env,
    driver::{FunctionEnv, Instance, drive, drive_concurrently, memory_json, start_ready},
    load_average,
    proxy::{CountingProxy, Totals, WaitProxy, upstream_of},
    required_env,
    routes::{self, Floor, PASSWORD, Route, Setup},
    tokio_runtime,
};
use serde_json::{Value, json};
use shared::{
    config::Argon2Settings,
    email::Email,
    password::{NewPassword, Passwords},
};
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

/// `IP_RATE_LIMIT_PER_MINUTE` for the benchmark (the maximum the service accepts): every
/// request comes from 127.0.0.1; the check itself still runs.
const IP_RATE_LIMIT: &str = "1000000";
/// Any 32 bytes in base64: the functions derive their keys from it.
const DATA_KEY: &str = "YmVuY2gtZGF0YS1lbmNyeXB0aW9uLWtleS0zMmJ5dGU=";
/// forgot and resend answer this long after they began: the service's default, which leaves
/// MailDev's ~45 ms exchange time to finish inside it (at 100 ms every delivery was cut off
/// and left to the mailer), as a real mail server has in production.
pub const MAIL_ANSWER_MS: u64 = 500;

/// The settings every function gets: the database, a JWT secret, the data key, mail to
/// `smtp_url`, the limits raised for one source address and many mails per address, plus
/// `BENCH_FUNCTION_ENV="K=V K=V"` for experiments (e.g. `GLIBC_TUNABLES=…`).
pub fn function_env(database_url: &str, smtp_url: &str) -> FunctionEnv {
    let mut vars: Vec<(String, String)> = [
        ("JWT_SECRET", crate::random_secret()),
        ("DATA_ENCRYPTION_KEY", DATA_KEY.to_owned()),
        ("IP_RATE_LIMIT_PER_MINUTE", IP_RATE_LIMIT.to_owned()),
        ("SMTP_URL", smtp_url.to_owned()),
        ("MAIL_ANSWER_MS", MAIL_ANSWER_MS.to_string()),
        ("MAIL_MAX_PER_HOUR", "1000".to_owned()),
        ("MAIL_RESEND_INTERVAL_SECONDS", "1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    vars.extend(
        std::env::var("BENCH_FUNCTION_ENV")
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    FunctionEnv {
        database_url: database_url.to_owned(),
        vars,
    }
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `env` with mail to a port nothing listens on: what it queues stays pending.
pub fn without_mail_server(env: &FunctionEnv) -> Result<FunctionEnv> {
    Ok(env.with("SMTP_URL", &format!("smtp://127.0.0.1:{}", closed_port()?)))
}

/// The round trips of one route, counted at the proxy.
#[derive(Debug)]
pub struct Trips {
    /// What init did (the connection opened there).
    pub init: Totals,
    /// The first request after init.
    pub first: Totals,
    /// Each later request.
    pub per_request: Vec<Totals>,
    /// Each later request, event handed out → response received.
    pub latency: Vec<Duration>,
    /// Each later request's waits for the SMTP server (zero without an SMTP proxy).
    pub smtp: Vec<Duration>,
}

impl Trips {
    /// The round trips of the later requests, when they all made the same number; else the
    /// list.
    pub fn exact(&self) -> std::result::Result<u64, Vec<u64>> {
        let counts: Vec<u64> = self.per_request.iter().map(|t| t.queries).collect();
        match counts.first() {
            Some(&n) if counts.iter().all(|&c| c == n) => Ok(n),
            _ => Err(counts),
        }
    }

    /// Connections opened by the later requests (none, once warm).
    pub fn connects(&self) -> u64 {
        self.per_request.iter().map(|t| t.connects).sum()
    }

    /// The later requests' time in their round trips, as the proxy timed them (query sent →
    /// ReadyForQuery): the server's work and the loopback hops.
    pub fn statements(&self) -> Samples {
        let mut samples = Samples::default();
        for t in &self.per_request {
            samples.push(t.waited);
        }
        samples
    }

    /// The later requests' time at the SMTP server.
    pub fn smtp(&self) -> Samples {
        let mut samples = Samples::default();
        for d in &self.smtp {
            samples.push(*d);
        }
        samples
    }

    /// The later requests' time neither in a round trip nor at the SMTP server: the function's
    /// own overhead (argon2 and any fixed answer time included).
    pub fn own_overhead(&self) -> Samples {
        let mut samples = Samples::default();
        for ((latency, t), smtp) in self.latency.iter().zip(&self.per_request).zip(&self.smtp) {
            samples.push(latency.saturating_sub(t.waited + *smtp));
        }
        samples
    }
}

/// Starts `route`'s function on `env` pointed at `proxy` (and its mail at `smtp`, when given)
/// and counts and times what init, the first request and `runs` more make.
#[allow(clippy::too_many_arguments)]
pub fn count_round_trips(
    bin_dir: &Path,
    log: &Path,
    setup: &mut Setup,
    route: &Route,
    proxy: &CountingProxy,
    smtp: Option<&WaitProxy>,
    proxied: &FunctionEnv,
    runs: usize,
) -> Result<Trips> {
    let mut lane = setup.lane(route, runs + 1)?;
    let before_init = proxy.totals();
    let mut instance = crate::driver::spawn_in(bin_dir, log, route.function, proxied)?;
    instance.wait_ready(Duration::from_secs(20))?;
    let init = proxy.totals() - before_init;
    let smtp_waited = || smtp.map(WaitProxy::waited).unwrap_or_default();
    let mut marks = Vec::with_capacity(runs + 2);
    let mut latency = Vec::with_capacity(runs + 1);
    for _ in 0..runs + 1 {
        let request = lane.next()?;
        marks.push((proxy.totals(), smtp_waited()));
        let answer = instance.call(&request)?;
        latency.push(answer.latency);
        lane.check(&request, &answer)?;
    }
    // Whatever a request does after it answered belongs to it: let it finish.
    thread::sleep(Duration::from_millis(50));
    marks.push((proxy.totals(), smtp_waited()));
    let diffs: Vec<Totals> = marks.windows(2).map(|w| w[1].0 - w[0].0).collect();
    let smtp = marks
        .windows(2)
        .skip(1)
        .map(|w| w[1].1.saturating_sub(w[0].1))
        .collect();
    Ok(Trips {
        init,
        first: diffs[0],
        per_request: diffs[1..].to_vec(),
        latency: latency[1..].to_vec(),
        smtp,
    })
}

/// The harness's own floor: argon2id through the service's `Passwords` at the default cost
/// (a current-thread runtime and `spawn_blocking`, as in a function), and one `SELECT 1` over
/// the same kind of connection the functions have.
pub struct Reference {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    password: NewPassword,
    passwords: Arc<Passwords>,
    phc: String,
}

impl Reference {
    /// Connected to `database_url` over TLS with `ca` as the only root (or in plain TCP when
    /// `ca` is `None`).
    pub fn new(database_url: &str, ca: Option<&Path>) -> Result<Self> {
        let rt = tokio_runtime()?;
        let client = rt.block_on(connect(database_url, ca))?;
        let password = NewPassword::parse(PASSWORD, &Email::parse("argon2@bench.example")?, 12)?;
        let passwords = Arc::new(Passwords::new(Argon2Settings::default())?);
        let phc = rt.block_on(passwords.hash(&password))?;
        Ok(Self {
            rt,
            client,
            password,
            passwords,
            phc,
        })
    }

    /// One argon2id hash.
    pub fn hash(&self) -> Result<Duration> {
        let start = Instant::now();
        self.rt.block_on(self.passwords.hash(&self.password))?;
        Ok(start.elapsed())
    }

    /// One argon2id verify of the right password.
    pub fn verify(&self) -> Result<Duration> {
        let start = Instant::now();
        if !self
            .rt
            .block_on(self.passwords.verify(PASSWORD, Some(&self.phc)))?
        {
            return Err("argon2 verify refused the right password".into());
        }
        Ok(start.elapsed())
    }

    /// One round trip.
    pub fn round_trip(&self) -> Result<Duration> {
        let start = Instant::now();
        self.rt.block_on(self.client.query_typed("SELECT 1", &[]))?;
        Ok(start.elapsed())
    }

    /// The argon2 a route's floor holds.
    pub fn argon2(&self, floor: Floor) -> Result<Duration> {
        Ok(match floor {
            Floor::Hash => self.hash()?,
            Floor::Verify => self.verify()?,
            Floor::VerifyAndHash => self.verify()? + self.hash()?,
            Floor::RoundTrips | Floor::AnswerTime => Duration::ZERO,
        })
    }

    /// Verifies per second with `threads` threads verifying at once, `runs` each: what argon2
    /// alone allows on this machine.
    pub fn verify_throughput(&self, threads: usize, runs: usize) -> Result<f64> {
        let started = Instant::now();
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let passwords = self.passwords.clone();
                let phc = self.phc.clone();
                thread::spawn(move || -> Result<()> {
                    let rt = tokio_runtime()?;
                    for _ in 0..runs {
                        rt.block_on(passwords.verify(PASSWORD, Some(&phc)))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle.join().map_err(|_| "an argon2 thread panicked")??;
        }
        Ok((threads * runs) as f64 / started.elapsed().as_secs_f64())
    }
}

async fn connect(url: &str, ca: Option<&Path>) -> Result<tokio_postgres::Client> {
    let client = match ca {
        Some(ca) => {
            // The functions' own connector (shared::tls), trusting `ca` alone and checking the
            // host name; tokio-postgres itself knows neither `verify-full` nor `sslrootcert`.
            let mut parsed = url::Url::parse(url)?;
            let kept: Vec<(String, String)> = parsed
                .query_pairs()
                .filter(|(k, _)| !k.starts_with("ssl"))
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            parsed
                .query_pairs_mut()
                .clear()
                .extend_pairs(kept)
                .append_pair("sslmode", "require");
            let tls = shared::tls::MakeConnector::new(&shared::tls::Settings {
                root_cert: Some(ca.to_path_buf()),
                verify_hostname: true,
                direct: false,
            })
            .map_err(|e| format!("the reference's TLS connector: {e:?}"))?;
            let (client, connection) = tokio_postgres::connect(parsed.as_str(), tls).await?;
            tokio::spawn(connection);
            client
        }
        None => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client
        }
    };
    Ok(client)
}

/// `round-trips`: the counts of every route, printed (`scripts/round-trips.sh` runs the test
/// instead; this is for a look without the test's table).
pub fn round_trips_mode(s: &Settings) -> Result<()> {
    let database_url = required_env("BENCH_DATABASE_URL")?;
    let env = function_env(&database_url, &required_env("BENCH_SMTP_URL")?);
    let functions = routes::functions(&s.root)?;
    routes::check_coverage(&functions)?;
    let proxy = CountingProxy::start(upstream_of(&database_url)?)?;
    let proxied = env.with_database(&proxy.url_for(&database_url)?);
    let log = s.out_dir.join("logs/round-trips.log");
    let mut setup = Setup::new(
        s.bin_dir.clone(),
        log.clone(),
        env.clone(),
        without_mail_server(&env)?,
        &required_env("BENCH_MAILDEV_URL")?,
    );
    for route in routes::routes_of(&functions) {
        let trips = count_round_trips(
            &s.bin_dir, &log, &mut setup, route, &proxy, None, &proxied, 5,
        )?;
        println!(
            "{:<42} {:?} per request (first after init: {}, init: {} connection(s))",
            route.name,
            trips.exact(),
            trips.first.queries,
            trips.init.connects
        );
    }
    Ok(())
}

fn totals_json(t: &Totals) -> Value {
    json!({
        "round_trips": t.queries,
        "waited_ms": crate::round3(t.waited.as_secs_f64() * 1e3),
        "connects": t.connects,
        "connect_messages": t.connect_trips,
    })
}

/// The init variants, as on Neon: TLS configured but no connection (system roots, a given
/// root), a verified TLS connection to the local TLS cluster, and plain TCP for comparison.
fn init_variants(
    tls_url: &str,
    plain_url: &str,
    ca: &Path,
) -> Result<Vec<(&'static str, String, &'static str)>> {
    let closed = closed_port()?;
    Ok(vec![
        (
            "tls_system_roots_refused",
            format!("postgres://postgres:unused@localhost:{closed}/auth?sslmode=verify-full"),
            "TLS configured (`sslmode=verify-full`, system roots), connection refused",
        ),
        (
            "tls_root_cert_refused",
            format!(
                "postgres://postgres:unused@localhost:{closed}/auth?sslmode=verify-full&sslrootcert={}",
                ca.display()
            ),
            "TLS configured (`sslrootcert=` one CA), connection refused",
        ),
        (
            "tls_connected",
            tls_url.to_owned(),
            "verified TLS connection to the local cluster (`verify-full`, `sslrootcert=`)",
        ),
        (
            "plain_connected",
            plain_url.to_owned(),
            "plain TCP connection (`sslmode=disable`), for comparison",
        ),
    ])
}

/// The `runtime` mode.
pub fn runtime_mode(s: &Settings) -> Result<()> {
    let plain_url = required_env("BENCH_DATABASE_URL")?;
    let tls_url = required_env("BENCH_TLS_DATABASE_URL")?;
    let ca = PathBuf::from(required_env("BENCH_TLS_CA")?);
    let smtp_url = required_env("BENCH_SMTP_URL")?;
    let maildev_url = required_env("BENCH_MAILDEV_URL")?;
    let functions = routes::functions(&s.root)?;
    routes::check_coverage(&functions)?;
    let routes = routes::routes_of(&functions);
    let load_before = load_average();
    let runs = count_env("BENCH_RUNS", 200);
    let costly_runs = count_env("BENCH_COSTLY_RUNS", 40);
    let init_runs = count_env("BENCH_INIT_RUNS", 10);
    let warmup = 5;

    let tls_env = function_env(&tls_url, &smtp_url);
    let plain_env = tls_env.with_database(&plain_url);
    let log = s.out_dir.join("logs/setup.log");
    let mut setup = Setup::new(
        s.bin_dir.clone(),
        log.clone(),
        plain_env.clone(),
        without_mail_server(&plain_env)?,
        &maildev_url,
    );

    println!("== the floor, from this process: one round trip (TLS and plain), argon2id");
    let reference = Reference::new(&tls_url, Some(&ca))?;
    let plain = Reference::new(&plain_url, None)?;
    let db_runs = count_env("BENCH_DB_RUNS", 1000);
    let (mut tls_rt, mut plain_rt) = (Samples::default(), Samples::default());
    for i in 0..db_runs + 50 {
        let (t, p) = (reference.round_trip()?, plain.round_trip()?);
        if i >= 50 {
            tls_rt.push(t);
            plain_rt.push(p);
        }
    }
    let (mut hash, mut verify) = (Samples::default(), Samples::default());
    for _ in 0..count_env("BENCH_ARGON2_RUNS", 20) {
        hash.push(reference.hash()?);
        verify.push(reference.verify()?);
    }
    let argon2_threads = 4;
    let argon2_throughput =
        reference.verify_throughput(argon2_threads, count_env("BENCH_ARGON2_RUNS", 20))?;
    println!(
        "  SELECT 1 over TLS p50 {:.3} ms, plain {:.3} ms; argon2 hash p50 {:.2} ms, verify {:.2} ms; {argon2_threads} threads: {argon2_throughput:.1} verifies/s",
        tls_rt.percentile(50.0),
        plain_rt.percentile(50.0),
        hash.percentile(50.0),
        verify.percentile(50.0)
    );

    println!(
        "== round trips per request (counted and timed by a proxy in front of Postgres, plain TCP; mail through a timing proxy)"
    );
    let proxy = CountingProxy::start(upstream_of(&plain_url)?)?;
    let smtp_proxy = WaitProxy::start(upstream_of(&smtp_url)?)?;
    let proxied = plain_env
        .with_database(&proxy.url_for(&plain_url)?)
        .with("SMTP_URL", &smtp_proxy.url_for(&smtp_url)?);
    let trip_runs = count_env("BENCH_TRIP_RUNS", 30);
    let mut trips = serde_json::Map::new();
    for route in &routes {
        let t = count_round_trips(
            &s.bin_dir,
            &log,
            &mut setup,
            route,
            &proxy,
            Some(&smtp_proxy),
            &proxied,
            trip_runs,
        )?;
        let per_request = match t.exact() {
            Ok(n) => json!(n),
            Err(list) => json!(list),
        };
        let (statements, smtp, own) = (t.statements(), t.smtp(), t.own_overhead());
        println!(
            "{:<42} {per_request} per request, first after init {}; statements p50 {:.3} ms, SMTP p50 {:.3} ms, own overhead p50 {:.3} ms",
            route.name,
            t.first.queries,
            statements.percentile(50.0),
            smtp.percentile(50.0),
            own.percentile(50.0)
        );
        let mut request = Samples::default();
        for d in &t.latency {
            request.push(*d);
        }
        let waited: Vec<f64> = t
            .per_request
            .iter()
            .map(|x| crate::round3(x.waited.as_secs_f64() * 1e3))
            .collect();
        trips.insert(
            route.name.into(),
            json!({
                "per_request": per_request,
                "connects_per_request": t.connects(),
                "waited_ms": waited,
                "request": request.json(),
                "statements": statements.json(),
                "smtp": smtp.json(),
                "own_overhead": own.json(),
                "first": totals_json(&t.first),
                "init": totals_json(&t.init),
            }),
        );
    }

    println!("== init: process spawn → first GET /next");
    let mut init = serde_json::Map::new();
    for function in &functions {
        let mut entry = serde_json::Map::new();
        // One unmeasured start first: the page cache, not the function, would dominate it.
        drop(start_ready(s, function, &tls_env)?);
        for (key, url, what) in init_variants(&tls_url, &plain_url, &ca)? {
            let env = tls_env
                .with_database(&url)
                .with("DATABASE_TIMEOUT_MS", "100");
            let mut samples = Samples::default();
            for _ in 0..init_runs {
                samples.push(start_ready(s, function, &env)?.1);
            }
            let mut value = samples.json();
            value["what"] = json!(what);
            entry.insert(key.into(), value);
        }
        println!(
            "{function:>10}: p50 {} ms",
            [
                "tls_system_roots_refused",
                "tls_root_cert_refused",
                "tls_connected",
                "plain_connected"
            ]
            .iter()
            .map(|k| format!(
                "{k} {:.2}",
                entry[*k]["p50_ms"].as_f64().unwrap_or(f64::NAN)
            ))
            .collect::<Vec<_>>()
            .join(", ")
        );
        init.insert(function.clone(), Value::Object(entry));
    }

    println!("== per route: first request after init and warm runs, over TLS to the database");
    let mut warm = serde_json::Map::new();
    for route in &routes {
        let n = if route.costly_setup {
            costly_runs
        } else {
            runs
        };
        let mut lane = setup.lane(route, 1 + warmup + n)?;
        let (mut instance, init_time) = start_ready(s, route.function, &tls_env)?;
        let after_init = instance.memory_kib()?.0;
        let request = lane.next()?;
        let first = instance.call(&request)?;
        lane.check(&request, &first)?;
        let mut argon2 = Samples::default();
        let mut round_trip = Samples::default();
        let run = drive(&mut instance, lane.as_mut(), warmup, n, || {
            let a = reference.argon2(route.floor)?;
            let r = reference.round_trip()?;
            if !a.is_zero() {
                argon2.push(a);
            }
            round_trip.push(r);
            Ok(a + r)
        })?;
        let memory = memory_json(&instance, after_init, &run.rss)?;
        drop(instance);

        let concurrent = if route.scheduled {
            Value::Null
        } else {
            let per_lane = n.div_ceil(4).max(5);
            let mut lanes = Vec::with_capacity(4);
            let mut instances: Vec<Instance> = Vec::with_capacity(4);
            for _ in 0..4 {
                lanes.push(setup.lane(route, warmup + per_lane)?);
                instances.push(start_ready(s, route.function, &tls_env)?.0);
            }
            let c = drive_concurrently(instances, lanes, warmup, per_lane)?;
            let mut value = c.latency.json();
            value["throughput_per_s"] = json!(crate::round3(c.throughput));
            value["peak_kib"] = json!(c.peak_kib);
            value
        };
        println!(
            "{:<42} init {:.2} ms, first {:.3} ms, c=1 p50 {:.3} / p99 {:.3} ms, c=4 p50 {:.3} ms",
            route.name,
            init_time.as_secs_f64() * 1e3,
            first.latency.as_secs_f64() * 1e3,
            run.latency.percentile(50.0),
            run.latency.percentile(99.0),
            concurrent["p50_ms"].as_f64().unwrap_or(f64::NAN)
        );
        let mut c1 = run.latency.json();
        c1["argon2"] = argon2.json();
        c1["round_trip"] = round_trip.json();
        c1["series_ms"] = json!(
            run.latency
                .0
                .iter()
                .map(|x| crate::round3(*x))
                .collect::<Vec<_>>()
        );
        warm.insert(
            route.name.into(),
            json!({
                "function": route.function,
                "floor": format!("{:?}", route.floor),
                "mails_inline": route.mails_inline,
                "init_ms": crate::round3(init_time.as_secs_f64() * 1e3),
                "first_ms": crate::round3(first.latency.as_secs_f64() * 1e3),
                "c1": c1,
                "c4": concurrent,
                "memory_kib": memory,
            }),
        );
    }

    s.write_json(
        "runtime.json",
        &json!({
            "load_before": load_before,
            "load_after": load_average(),
            "functions": functions,
            "mail_answer_ms": MAIL_ANSWER_MS,
            "floor": {
                "round_trip_tls": tls_rt.json(),
                "round_trip_plain": plain_rt.json(),
                "argon2_hash": hash.json(),
                "argon2_verify": verify.json(),
                "argon2_verify_threads": argon2_threads,
                "argon2_verify_per_s": crate::round3(argon2_throughput),
            },
            "round_trips": trips,
            "init": init,
            "routes": warm,
        }),
    )
}
