//! The `e2e` mode: sequential HTTP requests through the local API (`scripts/gateway.py` in
//! front of `cargo lambda watch --release`, started by scripts/bench.sh) at `BENCH_E2E_URL`.

use crate::{
    Result, Samples, Settings, count_env, http::HttpClient, load_average, required_env,
    routes::PASSWORD,
};
use serde_json::{Value, json};
use std::{
    thread,
    time::{Duration, Instant},
};

fn credentials(email: &str) -> Value {
    json!({ "email": email, "password": PASSWORD })
}

fn report_warm(function: &str, samples: &Samples, into: &mut serde_json::Map<String, Value>) {
    println!(
        "{function:>10}: p50 {:.3} ms, p99 {:.3} ms over {} invocations",
        samples.percentile(50.0),
        samples.percentile(99.0),
        samples.0.len()
    );
    into.insert(function.into(), samples.json());
}

/// The `e2e` mode.
pub fn e2e_mode(s: &Settings) -> Result<()> {
    let url = required_env("BENCH_E2E_URL")?;
    let watch_url = std::env::var("BENCH_E2E_WATCH_URL").ok();
    let addr = |url: &str| {
        url.trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned()
    };
    let nonce = crate::nonce();
    let mut client = HttpClient::new(&addr(&url), true);

    // The first request to each function starts it (cargo lambda watch may build it first).
    println!("== waiting for the local API on {url}");
    let give_up = Instant::now() + Duration::from_secs(300);
    loop {
        match client.request("GET", "/auth/me", None, None) {
            Ok((401, _, _)) => break,
            Ok((status, body, _)) if Instant::now() > give_up => {
                return Err(format!("GET /auth/me answered {status}: {body}").into());
            }
            Err(error) if Instant::now() > give_up => return Err(error),
            _ => thread::sleep(Duration::from_millis(500)),
        }
    }
    let account = format!("e2e-{nonce}@bench.example");
    let body = credentials(&account);
    client.expect("POST", "/auth/register", None, Some(&body), 201)?;
    let (login, _) = client.expect("POST", "/auth/login", None, Some(&body), 200)?;
    let token = login["access_token"]
        .as_str()
        .ok_or("login answered without an access_token")?
        .to_owned();

    let slow_runs = count_env("BENCH_E2E_RUNS", 50);
    let mut paths = vec![
        (
            "gateway.py → cargo lambda watch, keep-alive connection",
            url.clone(),
            true,
        ),
        (
            "gateway.py → cargo lambda watch, a new connection per request",
            url.clone(),
            false,
        ),
    ];
    if let Some(watch_url) = &watch_url {
        paths.push((
            "cargo lambda watch directly, keep-alive connection",
            watch_url.clone(),
            true,
        ));
    }
    let mut measured = Vec::new();
    for (i, (what, url, keep_alive)) in paths.into_iter().enumerate() {
        println!("== end-to-end HTTP, sequential requests: {what} ({url})");
        let mut client = HttpClient::new(&addr(&url), keep_alive);
        let mut results = serde_json::Map::new();
        let warmup = 3;
        let mut samples = Samples::default();
        for n in 0..warmup + slow_runs {
            let body = credentials(&format!("e2e-{nonce}-{i}-{n}@bench.example"));
            let (_, t) = client.expect("POST", "/auth/register", None, Some(&body), 201)?;
            if n >= warmup {
                samples.push(t);
            }
        }
        report_warm("register", &samples, &mut results);
        let mut samples = Samples::default();
        for n in 0..warmup + slow_runs {
            let (_, t) = client.expect("POST", "/auth/login", None, Some(&body), 200)?;
            if n >= warmup {
                samples.push(t);
            }
        }
        report_warm("login", &samples, &mut results);
        let mut samples = Samples::default();
        for n in 0..warmup + slow_runs * 4 {
            let (_, t) = client.expect("GET", "/auth/me", Some(&token), None, 200)?;
            if n >= warmup {
                samples.push(t);
            }
        }
        report_warm("protected", &samples, &mut results);
        measured
            .push(json!({ "path": what, "url": url, "keep_alive": keep_alive, "routes": results }));
    }
    s.write_json(
        "e2e.json",
        &json!({ "paths": measured, "load_after": load_average() }),
    )
}
