//! Function processes: spawned with a cleared environment (only what a Lambda sandbox and the
//! function's settings give), started under their own [`RuntimeApi`], invoked one event at a
//! time; warm runs at concurrency 1 (one instance) and 4 (four instances driven at once), and
//! their peak RSS.

use crate::{
    Result, Samples, Settings,
    routes::{Lane, Request},
    runtime_api::{ApiEvent, Invocation, RuntimeApi, unwrap_response},
};
use serde_json::{Value, json};
use std::{
    fs::{self, OpenOptions},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Barrier, mpsc},
    thread,
    time::{Duration, Instant},
};

/// What a function process gets in its environment beyond the Lambda variables (and nothing
/// else: the harness's own environment is cleared).
#[derive(Clone, Debug)]
pub struct FunctionEnv {
    /// `DATABASE_URL`.
    pub database_url: String,
    /// Every other setting.
    pub vars: Vec<(String, String)>,
}

impl FunctionEnv {
    /// The same settings with another `DATABASE_URL`.
    pub fn with_database(&self, url: &str) -> Self {
        Self {
            database_url: url.to_owned(),
            vars: self.vars.clone(),
        }
    }

    /// The same settings with `name` set to `value` (replacing an earlier value).
    pub fn with(&self, name: &str, value: &str) -> Self {
        let mut vars: Vec<_> = self
            .vars
            .iter()
            .filter(|(k, _)| k != name)
            .cloned()
            .collect();
        vars.push((name.to_owned(), value.to_owned()));
        Self {
            database_url: self.database_url.clone(),
            vars,
        }
    }
}

/// One running function process and its Runtime API.
pub struct Instance {
    /// The function (binary) name.
    pub function: String,
    child: Child,
    api: RuntimeApi,
    spawned_at: Instant,
    seq: u64,
}

/// A function's answer.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status (200 for a scheduled function that succeeded).
    pub status: u16,
    /// The JSON body (null when there is none).
    pub body: Value,
    /// Event handed out → response received.
    pub latency: Duration,
}

impl Instance {
    /// Starts `bin_dir/function` with `env`, its output appended to `out_dir/logs/log`.
    pub fn spawn(s: &Settings, function: &str, env: &FunctionEnv, log: &str) -> Result<Self> {
        spawn_in(&s.bin_dir, &s.out_dir.join("logs").join(log), function, env)
    }

    /// Process spawn → first `GET /next`.
    pub fn wait_ready(&mut self, limit: Duration) -> Result<Duration> {
        let give_up = Instant::now() + limit;
        loop {
            match self.api.events.recv_timeout(Duration::from_millis(20)) {
                Ok(ApiEvent::Ready(at)) => return Ok(at.saturating_duration_since(self.spawned_at)),
                Ok(ApiEvent::InitError(body)) => {
                    return Err(format!("{} reported an init error: {body}", self.function).into());
                }
                Ok(ApiEvent::Done(_)) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("the runtime API stopped".into());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = self.child.try_wait()? {
                        return Err(
                            format!("{} exited during init: {status}", self.function).into()
                        );
                    }
                    if Instant::now() > give_up {
                        return Err(format!("{} not ready within {limit:?}", self.function).into());
                    }
                }
            }
        }
    }

    /// Hands out `event` and waits for its answer.
    pub fn invoke(&mut self, event: String) -> Result<Answer> {
        self.seq += 1;
        let id = format!("{}-{}-{}", self.function, self.child.id(), self.seq);
        self.api.send(Invocation {
            id: id.clone(),
            event,
        })?;
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            match self.api.events.recv_timeout(Duration::from_millis(100)) {
                Ok(ApiEvent::Done(done)) if done.id == id => {
                    if done.error {
                        return Err(format!(
                            "{} answered /error: {}",
                            self.function,
                            String::from_utf8_lossy(&done.body)
                        )
                        .into());
                    }
                    let (status, body) = unwrap_response(&done.body)?;
                    return Ok(Answer {
                        status,
                        body,
                        latency: done.latency,
                    });
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("the runtime API stopped".into());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = self.child.try_wait()? {
                        return Err(format!("{} exited: {status}", self.function).into());
                    }
                    if Instant::now() > give_up {
                        return Err(format!("{} did not answer within 60 s", self.function).into());
                    }
                }
            }
        }
    }

    /// Invokes and insists on the request's status and check.
    pub fn call(&mut self, request: &Request) -> Result<Answer> {
        let answer = self.invoke(request.event.clone())?;
        if answer.status != request.expected {
            return Err(format!(
                "{} ({}) answered {} (expected {}): {}",
                self.function, request.route, answer.status, request.expected, answer.body
            )
            .into());
        }
        Ok(answer)
    }

    /// `VmHWM` (peak resident set) and `VmRSS`, in KiB.
    pub fn memory_kib(&self) -> Result<(u64, u64)> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("no {name} in /proc/{}/status", self.child.id()))
        };
        Ok((field("VmHWM:")?, field("VmRSS:")?))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `bin_dir/function` under a new Runtime API with only `env` and the Lambda variables.
pub fn spawn_in(bin_dir: &Path, log: &Path, function: &str, env: &FunctionEnv) -> Result<Instance> {
    let api = RuntimeApi::start(function)?;
    let log = OpenOptions::new().create(true).append(true).open(log)?;
    let binary = bin_dir.join(function);
    let mut command = Command::new(&binary);
    command
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{}", api.port))
        .env("AWS_LAMBDA_FUNCTION_NAME", function)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env(
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{function}"),
        )
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        .env("AWS_LAMBDA_LOG_LEVEL", "WARN")
        .env("AWS_REGION", "us-east-1")
        .env("DATABASE_URL", &env.database_url)
        .envs(env.vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let spawned_at = Instant::now();
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    Ok(Instance {
        function: function.to_owned(),
        child,
        api,
        spawned_at,
        seq: 0,
    })
}

/// Spawns a function and waits for its first `GET /next`; the init time with it.
pub fn start_ready(
    s: &Settings,
    function: &str,
    env: &FunctionEnv,
) -> Result<(Instance, Duration)> {
    let mut instance = Instance::spawn(s, function, env, &format!("{function}.log"))?;
    let init = instance.wait_ready(Duration::from_secs(20))?;
    Ok((instance, init))
}

/// A warm run on one instance: the latency of each request and VmRSS after it.
pub struct WarmRun {
    /// Event handed out → response received.
    pub latency: Samples,
    /// The harness's reference measurements, one per request (see [`drive`]).
    pub reference: Vec<Duration>,
    /// VmRSS after each request (warm-up included), KiB.
    pub rss: Vec<u64>,
}

/// Sends `warmup + runs` requests of `lane` to `instance`, one at a time; after each, calls
/// `reference` (the harness's own timing of the floor, with the machine as loaded as it was).
pub fn drive(
    instance: &mut Instance,
    lane: &mut dyn Lane,
    warmup: usize,
    runs: usize,
    mut reference: impl FnMut() -> Result<Duration>,
) -> Result<WarmRun> {
    let mut run = WarmRun {
        latency: Samples::default(),
        reference: Vec::with_capacity(runs),
        rss: Vec::with_capacity(warmup + runs),
    };
    for i in 0..warmup + runs {
        let request = lane.next()?;
        let answer = instance.call(&request)?;
        lane.check(&request, &answer)?;
        run.rss.push(instance.memory_kib()?.1);
        let floor = reference()?;
        if i >= warmup {
            run.latency.push(answer.latency);
            run.reference.push(floor);
        }
    }
    Ok(run)
}

/// What [`drive_concurrently`] measured.
pub struct ConcurrentRun {
    /// Every request's latency, all instances together.
    pub latency: Samples,
    /// Requests answered per second, all instances together (first send → last answer).
    pub throughput: f64,
    /// The largest VmHWM of the instances, KiB.
    pub peak_kib: u64,
}

/// `instances.len()` instances driven at once, each by its own lane and thread, `runs`
/// requests each after `warmup`.
pub fn drive_concurrently(
    instances: Vec<Instance>,
    lanes: Vec<Box<dyn Lane>>,
    warmup: usize,
    runs: usize,
) -> Result<ConcurrentRun> {
    let n = instances.len();
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut handles = Vec::with_capacity(n);
    for (mut instance, mut lane) in instances.into_iter().zip(lanes) {
        let barrier = barrier.clone();
        handles.push(thread::Builder::new().name("lane".into()).spawn(
            move || -> Result<(Samples, u64)> {
                let warmed = (0..warmup).try_for_each(|_| -> Result<()> {
                    let request = lane.next()?;
                    let answer = instance.call(&request)?;
                    lane.check(&request, &answer)
                });
                // The warm-ups are done on every instance before any timed request; a lane that
                // failed still reaches the barrier, or the others would wait for it for ever.
                barrier.wait();
                warmed?;
                let mut latency = Samples::default();
                for _ in 0..runs {
                    let request = lane.next()?;
                    let answer = instance.call(&request)?;
                    lane.check(&request, &answer)?;
                    latency.push(answer.latency);
                }
                Ok((latency, instance.memory_kib()?.0))
            },
        )?);
    }
    barrier.wait();
    let started = Instant::now();
    let mut all = ConcurrentRun {
        latency: Samples::default(),
        throughput: 0.0,
        peak_kib: 0,
    };
    let mut errors = Vec::new();
    for handle in handles {
        match handle.join() {
            Ok(Ok((latency, peak))) => {
                all.latency.0.extend(latency.0);
                all.peak_kib = all.peak_kib.max(peak);
            }
            Ok(Err(error)) => errors.push(error.to_string()),
            Err(_) => errors.push("a lane's thread panicked".into()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(first) = errors.first() {
        return Err(format!("{} of {n} lanes failed: {first}", errors.len()).into());
    }
    all.throughput = all.latency.0.len() as f64 / elapsed.max(1e-9);
    Ok(all)
}

/// VmHWM after init and after the run, VmRSS after the run, and the RSS curve.
pub fn memory_json(instance: &Instance, after_init_kib: u64, rss_curve: &[u64]) -> Result<Value> {
    let (hwm, rss) = instance.memory_kib()?;
    Ok(json!({
        "peak_after_run": hwm,
        "rss_after_run": rss,
        "peak_after_init": after_init_kib,
        "rss_curve": rss_curve,
    }))
}
