//! The `concurrency` mode: 50 simulated users, each with its own register, login and
//! protected process (pool size 1) against PgBouncer in transaction mode (`BENCH_POOLER_URL`),
//! all flows at once; fails unless every step answers as it should. The server connections are
//! sampled from `pg_stat_activity` on the direct port (`BENCH_DATABASE_URL`).

use crate::{
    Result, Samples, Settings, count_env,
    driver::{Answer, FunctionEnv, Instance},
    required_env, round3,
    routes::{PASSWORD, Request},
    runtime_api::apigw_event,
    tokio_runtime,
};
use serde_json::json;
use std::{
    io::{self, Write},
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

/// The functions of one simulated user's flow.
const FLOW: [&str; 3] = ["register", "login", "protected"];

fn call(
    instance: &mut Instance,
    route: &'static str,
    event: String,
    expected: u16,
) -> Result<Answer> {
    instance.call(&Request {
        route,
        event,
        expected,
        email: None,
    })
}

/// The `concurrency` mode.
pub fn concurrency_mode(s: &Settings) -> Result<()> {
    let pooler_url = required_env("BENCH_POOLER_URL")?;
    let direct_url = required_env("BENCH_DATABASE_URL")?;
    let admin_url = std::env::var("BENCH_POOLER_ADMIN_URL").ok();
    let max_server = count_env("BENCH_POOLER_MAX_SERVER_CONNS", 10);
    let users = count_env("BENCH_CONCURRENCY", 50);
    let nonce = crate::nonce();
    // Mail off (no SMTP_URL): the flow is register → login → me, as before the mail routes.
    let mut env: FunctionEnv =
        crate::bench::function_env(&pooler_url, "").with("DATABASE_POOL_MAX_SIZE", "1");
    env.vars.retain(|(k, _)| k != "SMTP_URL");

    println!(
        "== {users} users × 3 function processes against PgBouncer (transaction mode, {max_server} server connections)"
    );
    // Sample the server side from the start: init opens a client connection per process.
    let sampler = Sampler::start(&direct_url, admin_url.as_deref())?;

    let started = Instant::now();
    let mut instances = Vec::with_capacity(users);
    for user in 0..users {
        let mut trio = Vec::with_capacity(3);
        for function in FLOW {
            trio.push(Instance::spawn(
                s,
                function,
                &env,
                &format!("concurrency-{function}.log"),
            )?);
        }
        instances.push(trio);
        if user % 10 == 9 {
            print!(".");
            io::stdout().flush()?;
        }
    }
    let mut init = Samples::default();
    for trio in &mut instances {
        for instance in trio.iter_mut() {
            init.push(instance.wait_ready(Duration::from_secs(60))?);
        }
    }
    let all_ready = started.elapsed();
    println!(
        "\n  {} processes ready in {:.0} ms (init p50 {:.1} ms, max {:.1} ms while starting together)",
        users * 3,
        all_ready.as_secs_f64() * 1e3,
        init.percentile(50.0),
        init.percentile(100.0)
    );

    let barrier = Arc::new(Barrier::new(users + 1));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::with_capacity(users);
    for (user, trio) in instances.into_iter().enumerate() {
        let barrier = barrier.clone();
        let failures = failures.clone();
        let email = format!("sim-{nonce}-{user}@bench.example");
        handles.push(
            thread::Builder::new()
                .name(format!("user-{user}"))
                .spawn(move || {
                    let mut trio = trio;
                    barrier.wait();
                    let start = Instant::now();
                    let outcome = run_flow(&mut trio, &email);
                    if outcome.is_err() {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                    (outcome, start.elapsed())
                })?,
        );
    }
    barrier.wait();
    let flows_started = Instant::now();
    let mut errors = Vec::new();
    let mut flow = Samples::default();
    let mut steps = [Samples::default(), Samples::default(), Samples::default()];
    for handle in handles {
        match handle.join() {
            Ok((Ok(latencies), elapsed)) => {
                flow.push(elapsed);
                for (samples, latency) in steps.iter_mut().zip(latencies) {
                    samples.push(latency);
                }
            }
            Ok((Err(error), _)) => errors.push(error.to_string()),
            Err(_) => errors.push("a user thread panicked".into()),
        }
    }
    let total = flows_started.elapsed();
    let sampled = sampler.stop();
    println!(
        "  {users} flows (register → login → me) in {:.0} ms: {} errors; flow p50 {:.0} ms, max {:.0} ms",
        total.as_secs_f64() * 1e3,
        errors.len(),
        flow.percentile(50.0),
        flow.percentile(100.0)
    );
    println!(
        "  server connections seen in pg_stat_activity: at most {} (limit {max_server}); {} samples",
        sampled.max_server, sampled.samples
    );
    for error in errors.iter().take(10) {
        eprintln!("  error: {error}");
    }
    s.write_json(
        "concurrency.json",
        &json!({
            "users": users,
            "processes": users * 3,
            "max_server_conns_configured": max_server,
            "all_ready_ms": round3(all_ready.as_secs_f64() * 1e3),
            "init_while_starting_together": init.json(),
            "total_ms": round3(total.as_secs_f64() * 1e3),
            "flow": flow.json(),
            "register": steps[0].json(),
            "login": steps[1].json(),
            "me": steps[2].json(),
            "errors": errors,
            "failed_flows": failures.load(Ordering::SeqCst),
            "max_server_conns_seen": sampled.max_server,
            "max_clients_waiting": sampled.max_waiting,
            "samples": sampled.samples,
            "sampler_error": sampled.error,
        }),
    )?;
    if !errors.is_empty() {
        return Err(format!("{} of {users} flows failed", errors.len()).into());
    }
    if sampled.max_server > max_server {
        return Err(format!(
            "{} server connections were open, more than the bouncer's {max_server}",
            sampled.max_server
        )
        .into());
    }
    Ok(())
}

/// register → login → me on one user's three processes; the three latencies.
fn run_flow(trio: &mut [Instance], email: &str) -> Result<[Duration; 3]> {
    let [register, login, me] = trio else {
        return Err("a user needs three instances".into());
    };
    let body = json!({ "email": email, "password": PASSWORD });
    let registered = call(
        register,
        "POST /auth/register",
        apigw_event("POST", "/auth/register", None, Some(&body)),
        201,
    )?;
    let logged_in = call(
        login,
        "POST /auth/login",
        apigw_event("POST", "/auth/login", None, Some(&body)),
        200,
    )?;
    let token = logged_in.body["access_token"]
        .as_str()
        .ok_or("login answered without an access_token")?;
    let who = call(
        me,
        "GET /auth/me",
        apigw_event("GET", "/auth/me", Some(token), None),
        200,
    )?;
    if who.body["email"] != email {
        return Err(format!("me answered another user: {}", who.body).into());
    }
    Ok([registered.latency, logged_in.latency, who.latency])
}

struct Sampled {
    max_server: usize,
    max_waiting: usize,
    samples: usize,
    error: Option<String>,
}

/// Polls `pg_stat_activity` on the server (and `SHOW POOLS` on the bouncer) until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<Sampled>,
}

impl Sampler {
    fn start(direct_url: &str, admin_url: Option<&str>) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let direct_url = direct_url.to_owned();
        let admin_url = admin_url.map(str::to_owned);
        let (ready_tx, ready_rx) = mpsc::channel();
        let handle = thread::Builder::new()
            .name("sampler".into())
            .spawn(move || {
                let mut sampled = Sampled {
                    max_server: 0,
                    max_waiting: 0,
                    samples: 0,
                    error: None,
                };
                let result = tokio_runtime().and_then(|rt| {
                    rt.block_on(sample(
                        &direct_url,
                        admin_url.as_deref(),
                        &stopping,
                        &mut sampled,
                        ready_tx,
                    ))
                });
                if let Err(error) = result {
                    sampled.error = Some(error.to_string());
                }
                sampled
            })?;
        // The sampler's own connection is up before any function starts.
        let _ = ready_rx.recv_timeout(Duration::from_secs(10));
        Ok(Self { stop, handle })
    }

    fn stop(self) -> Sampled {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap_or(Sampled {
            max_server: usize::MAX,
            max_waiting: 0,
            samples: 0,
            error: Some("the sampler panicked".into()),
        })
    }
}

async fn sample(
    direct_url: &str,
    admin_url: Option<&str>,
    stop: &AtomicBool,
    sampled: &mut Sampled,
    ready: mpsc::Sender<()>,
) -> Result<()> {
    let (client, connection) = tokio_postgres::connect(direct_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    // The bouncer's admin console is optional: it only adds the queue length.
    let admin = match admin_url {
        Some(url) => match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
            Ok((admin, connection)) => {
                tokio::spawn(connection);
                Some(admin)
            }
            Err(error) => {
                eprintln!("  (no PgBouncer admin console: {error})");
                None
            }
        },
        None => None,
    };
    let _ = ready.send(());
    // Every backend but our own that serves a client: the bouncer's server connections.
    let count = "SELECT count(*) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()";
    while !stop.load(Ordering::SeqCst) {
        let row = client.query_typed(count, &[]).await?;
        let n: i64 = row.first().map(|r| r.get(0)).unwrap_or(0);
        sampled.max_server = sampled.max_server.max(usize::try_from(n).unwrap_or(0));
        sampled.samples += 1;
        if let Some(admin) = &admin
            && let Ok(messages) = admin.simple_query("SHOW POOLS").await
        {
            for message in messages {
                if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                    let waiting = row
                        .get("cl_waiting")
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    sampled.max_waiting = sampled.max_waiting.max(waiting);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}
