//! The real release binaries under a minimal Lambda Runtime API (`harness = false`).
//!
//! `scripts/bench.sh` runs it in four modes, `cargo bench -p shared --bench runtime -- MODE`:
//!
//! - `runtime`: one database round trip (`query_typed("SELECT 1")`); the round trips each route
//!   makes (counted by a proxy in front of Postgres); the init time of each function (process
//!   spawn → its first `GET /next`) with a reachable database and with a closed port; warm
//!   invocation latency per route (event handed out → response received), with argon2id
//!   (through `Passwords`) and one round trip timed by the harness between invocations; peak
//!   RSS (`VmHWM`) of each function after its run.
//! - `e2e`: sequential HTTP requests through the local API (`scripts/gateway.py` in front of
//!   `cargo lambda watch`, started by bench.sh) at `BENCH_E2E_URL`.
//! - `concurrency`: 50 simulated users, each with its own register, login and protected process
//!   (pool size 1) against PgBouncer in transaction mode (`BENCH_POOLER_URL`), all flows at once;
//!   fails unless every step answers as it should. The server connections are sampled from
//!   `pg_stat_activity` on the direct port (`BENCH_DATABASE_URL`).
//! - `report`: `target/bench/results.md` from the JSON the modes wrote, criterion's medians and
//!   the sizes bench.sh measured.
//!
//! The Runtime API server is plain HTTP/1.1 over `std::net::TcpListener`, one port per function
//! process, one thread per connection; each process sees only the API a real Lambda sandbox
//! offers: `GET /2018-06-01/runtime/invocation/next` (an API Gateway HTTP API v2 event with the
//! `Lambda-Runtime-*` headers), `POST …/invocation/{id}/response` and `…/error`, and
//! `POST /2018-06-01/runtime/init/error`.

use base64::Engine as _;
use serde_json::{Value, json};
use shared::{
    config::Argon2Settings,
    email::Email,
    password::{NewPassword, Passwords},
};
use std::{
    collections::HashMap,
    fs::{self, OpenOptions},
    io::{self, BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::{
        Arc, Barrier, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use uuid::Uuid;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

/// The password of every benchmark account (strong enough for zxcvbn).
const STRONG: &str = "correct horse battery staple 93!";
/// The three functions: binary name, method and path of their route.
const FUNCTIONS: [(&str, &str, &str); 3] = [
    ("register", "POST", "/auth/register"),
    ("login", "POST", "/auth/login"),
    ("protected", "GET", "/auth/me"),
];
const RUNTIME_PREFIX: &str = "/2018-06-01/runtime/";
/// `IP_RATE_LIMIT_PER_MINUTE` for the benchmark (the maximum the service accepts).
const IP_RATE_LIMIT: &str = "1000000";
/// glibc's mmap threshold pinned at its default (128 KiB), which turns off its dynamic raise.
const MMAP_TUNABLE: &str = "glibc.malloc.mmap_threshold=131072";

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; the mode is the first plain argument.
    let mode = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "runtime".into());
    let result = Settings::from_env().and_then(|s| match mode.as_str() {
        "runtime" => runtime_mode(&s),
        "e2e" => e2e_mode(&s),
        "concurrency" => concurrency_mode(&s),
        "report" => report_mode(&s),
        other => Err(format!("unknown mode `{other}` (runtime, e2e, concurrency, report)").into()),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench runtime {mode}: {error}");
            ExitCode::FAILURE
        }
    }
}

// --- settings -------------------------------------------------------------------------------

struct Settings {
    root: PathBuf,
    bin_dir: PathBuf,
    out_dir: PathBuf,
}

impl Settings {
    fn from_env() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or("the shared crate has no parent directory")?
            .to_path_buf();
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

    fn write_json(&self, name: &str, value: &Value) -> Result<()> {
        let path = self.out_dir.join(name);
        fs::write(&path, serde_json::to_string_pretty(value)?)?;
        println!("wrote {}", path.display());
        Ok(())
    }

    fn read_json(&self, name: &str) -> Option<Value> {
        let text = fs::read_to_string(self.out_dir.join(name)).ok()?;
        serde_json::from_str(&text).ok()
    }
}

fn required_env(name: &str) -> Result<String> {
    std::env::var(name).map_err(|_| format!("{name} must be set (scripts/bench.sh sets it)").into())
}

fn count_env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn epoch_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

fn random_secret() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// --- statistics -----------------------------------------------------------------------------

/// Latency samples in milliseconds.
#[derive(Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1e3);
    }

    /// Nearest-rank percentile.
    fn percentile(&self, p: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }

    fn json(&self) -> Value {
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

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

// --- a minimal HTTP/1.1 reader --------------------------------------------------------------

struct Message {
    /// The request line or the status line.
    start: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// When the whole message had been read.
    at: Instant,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one message (request or response); `None` at a clean end of stream.
fn read_message(reader: &mut impl BufRead) -> io::Result<Option<Message>> {
    let mut start = String::new();
    loop {
        if reader.read_line(&mut start)? == 0 {
            return Ok(None);
        }
        if !start.trim().is_empty() {
            break;
        }
        start.clear();
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let mut message = Message {
        start: start.trim_end().to_owned(),
        headers,
        body: Vec::new(),
        at: Instant::now(),
    };
    let chunked = message
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; size];
            reader.read_exact(&mut chunk)?;
            message.body.extend_from_slice(&chunk);
            let mut crlf = String::new();
            reader.read_line(&mut crlf)?;
        }
    } else if let Some(len) = message.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
        message.body = vec![0; len];
        reader.read_exact(&mut message.body)?;
    }
    message.at = Instant::now();
    Ok(Some(message))
}

// --- the Runtime API ------------------------------------------------------------------------

struct Invocation {
    id: String,
    event: String,
}

enum ApiEvent {
    /// The first `GET /next`: init is over.
    Ready(Instant),
    InitError(String),
    Done(Completed),
}

struct Completed {
    id: String,
    /// `/error` rather than `/response`.
    error: bool,
    body: Vec<u8>,
    /// Event handed out → response received.
    latency: Duration,
}

struct ApiShared {
    function: &'static str,
    inbox: Mutex<mpsc::Receiver<Invocation>>,
    events: mpsc::Sender<ApiEvent>,
    handed_out: Mutex<HashMap<String, Instant>>,
    ready_sent: AtomicBool,
}

/// One function process's Runtime API, on its own port.
struct RuntimeApi {
    port: u16,
    inbox: Option<mpsc::Sender<Invocation>>,
    events: mpsc::Receiver<ApiEvent>,
    stop: Arc<AtomicBool>,
}

impl RuntimeApi {
    fn start(function: &'static str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let (inbox_tx, inbox_rx) = mpsc::channel();
        let (events_tx, events_rx) = mpsc::channel();
        let shared = Arc::new(ApiShared {
            function,
            inbox: Mutex::new(inbox_rx),
            events: events_tx,
            handed_out: Mutex::new(HashMap::new()),
            ready_sent: AtomicBool::new(false),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        thread::Builder::new()
            .name(format!("runtime-api-{port}"))
            .spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let shared = shared.clone();
                    let spawned = thread::Builder::new()
                        .name(format!("runtime-api-{port}-conn"))
                        .spawn(move || {
                            if let Err(error) = serve_runtime_api(stream, &shared) {
                                // A killed function resets its connections: not worth a word.
                                if error.kind() != io::ErrorKind::ConnectionReset {
                                    eprintln!("runtime API {}: {error}", shared.function);
                                }
                            }
                        });
                    if let Err(error) = spawned {
                        eprintln!("runtime API {function}: cannot start a thread: {error}");
                    }
                }
            })?;
        Ok(Self {
            port,
            inbox: Some(inbox_tx),
            events: events_rx,
            stop,
        })
    }

    fn send(&self, invocation: Invocation) -> Result<()> {
        self.inbox
            .as_ref()
            .ok_or("the runtime API is stopped")?
            .send(invocation)
            .map_err(|_| "the runtime API is gone".into())
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes a `GET /next` waiting for an invocation, then the accept loop.
        self.inbox.take();
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn write_response(out: &mut impl Write, status: &str, extra: &str, body: &[u8]) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()
}

fn serve_runtime_api(stream: TcpStream, shared: &ApiShared) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    while let Some(request) = read_message(&mut reader)? {
        let mut parts = request.start.split_whitespace();
        let method = parts.next().unwrap_or_default();
        let path = parts.next().unwrap_or_default();
        let Some(route) = path.strip_prefix(RUNTIME_PREFIX) else {
            write_response(&mut out, "404 Not Found", "", b"{}")?;
            continue;
        };
        match (method, route) {
            ("GET", "invocation/next") => {
                if !shared.ready_sent.swap(true, Ordering::SeqCst) {
                    let _ = shared.events.send(ApiEvent::Ready(request.at));
                }
                let next = shared.inbox.lock().expect("the inbox lock").recv();
                // The harness is done with this function: hang up.
                let Ok(invocation) = next else { return Ok(()) };
                let extra = format!(
                    "Lambda-Runtime-Aws-Request-Id: {id}\r\n\
                     Lambda-Runtime-Deadline-Ms: {deadline}\r\n\
                     Lambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:123456789012:function:{function}\r\n\
                     Lambda-Runtime-Trace-Id: Root=1-{hex8}-{hex24};Parent={hex16};Sampled=0\r\n",
                    id = invocation.id,
                    deadline = epoch_ms() + 30_000,
                    function = shared.function,
                    hex8 = &Uuid::new_v4().simple().to_string()[..8],
                    hex24 = &Uuid::new_v4().simple().to_string()[..24],
                    hex16 = &Uuid::new_v4().simple().to_string()[..16],
                );
                shared
                    .handed_out
                    .lock()
                    .expect("the handed-out lock")
                    .insert(invocation.id.clone(), Instant::now());
                write_response(&mut out, "200 OK", &extra, invocation.event.as_bytes())?;
            }
            ("POST", "init/error") => {
                write_response(&mut out, "202 Accepted", "", br#"{"status":"OK"}"#)?;
                let body = String::from_utf8_lossy(&request.body).into_owned();
                let _ = shared.events.send(ApiEvent::InitError(body));
            }
            ("POST", route) if route.starts_with("invocation/") => {
                let rest = &route["invocation/".len()..];
                let Some((id, kind @ ("response" | "error"))) = rest.rsplit_once('/') else {
                    write_response(&mut out, "404 Not Found", "", b"{}")?;
                    continue;
                };
                let handed_out = shared
                    .handed_out
                    .lock()
                    .expect("the handed-out lock")
                    .remove(id);
                write_response(&mut out, "202 Accepted", "", br#"{"status":"OK"}"#)?;
                let latency = handed_out
                    .map(|t| request.at.saturating_duration_since(t))
                    .unwrap_or_default();
                let _ = shared.events.send(ApiEvent::Done(Completed {
                    id: id.to_owned(),
                    error: kind == "error",
                    body: request.body,
                    latency,
                }));
            }
            _ => write_response(&mut out, "404 Not Found", "", b"{}")?,
        }
    }
    Ok(())
}

// --- function processes ---------------------------------------------------------------------

/// What a function process gets in its environment (and nothing else).
#[derive(Clone)]
struct FunctionEnv {
    database_url: String,
    jwt_secret: String,
    extra: Vec<(String, String)>,
}

struct Instance {
    function: &'static str,
    child: Child,
    api: RuntimeApi,
    spawned_at: Instant,
    seq: u64,
}

/// A function's answer, unwrapped from the API Gateway v2 response.
struct Answer {
    status: u16,
    body: Value,
    latency: Duration,
}

impl Instance {
    fn spawn(s: &Settings, function: &'static str, env: &FunctionEnv, log: &str) -> Result<Self> {
        let api = RuntimeApi::start(function)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(s.out_dir.join("logs").join(log))?;
        let mut command = Command::new(s.bin_dir.join(function));
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
            .env("JWT_SECRET", &env.jwt_secret)
            // Any 32 bytes in base64: the refresh function derives its successor key from it.
            .env(
                "DATA_ENCRYPTION_KEY",
                "YmVuY2gtZGF0YS1lbmNyeXB0aW9uLWtleS0zMmJ5dGU=",
            )
            .envs(env.extra.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let spawned_at = Instant::now();
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", s.bin_dir.join(function).display()))?;
        Ok(Self {
            function,
            child,
            api,
            spawned_at,
            seq: 0,
        })
    }

    /// Process spawn → first `GET /next`.
    fn wait_ready(&mut self, limit: Duration) -> Result<Duration> {
        let give_up = Instant::now() + limit;
        loop {
            match self.api.events.recv_timeout(Duration::from_millis(50)) {
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

    fn invoke(&mut self, event: String) -> Result<Answer> {
        self.seq += 1;
        let id = format!("{}-{}-{}", self.function, self.child.id(), self.seq);
        self.api.send(Invocation {
            id: id.clone(),
            event,
        })?;
        let give_up = Instant::now() + Duration::from_secs(30);
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
                    let (status, body) = unwrap_apigw_response(&done.body)?;
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
                        return Err(format!("{} did not answer within 30 s", self.function).into());
                    }
                }
            }
        }
    }

    /// Invokes and insists on `expected`.
    fn call(&mut self, event: String, expected: u16) -> Result<Answer> {
        let answer = self.invoke(event)?;
        if answer.status != expected {
            return Err(format!(
                "{} answered {} (expected {expected}): {}",
                self.function, answer.status, answer.body
            )
            .into());
        }
        Ok(answer)
    }

    /// `VmHWM` (peak resident set) and `VmRSS`, in KiB.
    fn memory_kib(&self) -> Result<(u64, u64)> {
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

fn unwrap_apigw_response(raw: &[u8]) -> Result<(u16, Value)> {
    let response: Value = serde_json::from_slice(raw)?;
    let status = response["statusCode"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .ok_or("no statusCode in the function's response")?;
    let body = match response["body"].as_str() {
        None | Some("") => Value::Null,
        Some(text) if response["isBase64Encoded"].as_bool() == Some(true) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(text)?;
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        }
        Some(text) => serde_json::from_str(text).unwrap_or(Value::Null),
    };
    Ok((status, body))
}

/// An API Gateway HTTP API (payload 2.0) event, as API Gateway sends it.
fn apigw_event(method: &str, path: &str, bearer: Option<&str>, body: Option<&Value>) -> String {
    let now = chrono::Utc::now();
    let mut headers = serde_json::Map::new();
    headers.insert(
        "host".into(),
        "abc123.execute-api.us-east-1.amazonaws.com".into(),
    );
    headers.insert("user-agent".into(), "bench/1".into());
    headers.insert("accept".into(), "application/json".into());
    if let Some(token) = bearer {
        headers.insert("authorization".into(), format!("Bearer {token}").into());
    }
    let body = body.map(Value::to_string);
    if let Some(body) = &body {
        headers.insert("content-type".into(), "application/json".into());
        headers.insert("content-length".into(), body.len().to_string().into());
    }
    json!({
        "version": "2.0",
        "routeKey": format!("{method} {path}"),
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "bench/1"
            },
            "requestId": Uuid::new_v4().to_string(),
            "routeKey": format!("{method} {path}"),
            "stage": "$default",
            "time": now.format("%d/%b/%Y:%H:%M:%S +0000").to_string(),
            "timeEpoch": now.timestamp_millis()
        },
        "body": body,
        "isBase64Encoded": false
    })
    .to_string()
}

fn credentials(email: &str) -> Value {
    json!({ "email": email, "password": STRONG })
}

fn register_event(email: &str) -> String {
    apigw_event("POST", "/auth/register", None, Some(&credentials(email)))
}

fn login_event(email: &str) -> String {
    apigw_event("POST", "/auth/login", None, Some(&credentials(email)))
}

fn me_event(token: &str) -> String {
    apigw_event("GET", "/auth/me", Some(token), None)
}

fn access_token(answer: &Answer) -> Result<String> {
    Ok(answer.body["access_token"]
        .as_str()
        .ok_or("login answered without an access_token")?
        .to_owned())
}

/// Settings every benchmarked function gets beyond the Lambda and database ones: the per-IP
/// limit raised (every benchmark request comes from 127.0.0.1; the check itself still runs),
/// plus `BENCH_FUNCTION_ENV="K=V K=V"` for experiments (e.g. `GLIBC_TUNABLES=…`).
fn base_function_env() -> Vec<(String, String)> {
    let mut env = vec![(
        "IP_RATE_LIMIT_PER_MINUTE".to_owned(),
        IP_RATE_LIMIT.to_owned(),
    )];
    env.extend(
        std::env::var("BENCH_FUNCTION_ENV")
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    env
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

// --- mode: runtime --------------------------------------------------------------------------

fn runtime_mode(s: &Settings) -> Result<()> {
    let database_url = required_env("BENCH_DATABASE_URL")?;
    let nonce = &Uuid::new_v4().simple().to_string()[..8];
    let load_before = load_average();
    let rt = tokio_runtime()?;

    println!("== one database round trip, from this process");
    let db = rt.block_on(database_round_trips(&database_url))?;
    let reference = Reference::new(rt, &database_url)?;

    let env = FunctionEnv {
        database_url: database_url.clone(),
        jwt_secret: random_secret(),
        extra: base_function_env(),
    };

    println!("== database round trips per request (counted by a proxy in front of Postgres)");
    let round_trips = count_round_trips(s, &env, nonce)?;

    println!("== init: process spawn → first GET /next");
    let init_runs = count_env("BENCH_INIT_RUNS", 20);
    let closed = FunctionEnv {
        database_url: format!(
            "postgres://postgres:unused@127.0.0.1:{}/auth?sslmode=disable",
            closed_port()?
        ),
        jwt_secret: env.jwt_secret.clone(),
        extra: [
            base_function_env(),
            vec![("DATABASE_TIMEOUT_MS".into(), "100".into())],
        ]
        .concat(),
    };
    let mut init = serde_json::Map::new();
    for (function, _, _) in FUNCTIONS {
        // One unmeasured start first: the page cache, not the function, would dominate it.
        drop(start_ready(s, function, &env)?);
        let mut with_db = Samples::default();
        let mut without_db = Samples::default();
        for _ in 0..init_runs {
            with_db.push(start_ready(s, function, &env)?.1);
            without_db.push(start_ready(s, function, &closed)?.1);
        }
        println!(
            "{function:>10}: p50 {:.2} ms with the database connection, {:.2} ms without",
            with_db.percentile(50.0),
            without_db.percentile(50.0)
        );
        init.insert(
            function.into(),
            json!({ "with_db": with_db.json(), "without_db": without_db.json() }),
        );
    }

    // After each invocation the harness times its reference work itself (argon2 through
    // `Passwords`, one `SELECT 1`), so both see the same machine load; the overhead of each
    // invocation is its latency minus the reference measured right after it.
    println!("== warm invocations: event handed out → response received");
    let warmup = 5;
    let mut warm = serde_json::Map::new();
    let mut memory = serde_json::Map::new();
    let mut argon2 = serde_json::Map::new();
    let account = format!("login-{nonce}@bench.example");
    let register_runs = count_env("BENCH_REGISTER_RUNS", 100);
    let login_runs = count_env("BENCH_LOGIN_RUNS", 100);

    // register: a new address each time.
    let (mut register, _) = start_ready(s, "register", &env)?;
    let after_init = register.memory_kib()?;
    let run = warm_run(
        &mut register,
        warmup,
        register_runs,
        |i| register_event(&format!("reg-{nonce}-{i}@bench.example")),
        201,
        |_| Ok(()),
        || Ok((reference.hash(&reference.default)?, reference.round_trip()?)),
    )?;
    // The account the login runs use.
    register.call(register_event(&account), 201)?;
    run.report("register", &mut warm);
    argon2.insert("hash".into(), run.argon2.json());
    memory.insert(
        "register".into(),
        memory_json(&register, after_init, &run.rss)?,
    );
    drop(register);

    // login: the same existing account each time.
    let (mut login, _) = start_ready(s, "login", &env)?;
    let after_init = login.memory_kib()?;
    let mut token = String::new();
    let run = warm_run(
        &mut login,
        warmup,
        login_runs,
        |_| login_event(&account),
        200,
        |answer| {
            token = access_token(answer)?;
            Ok(())
        },
        || {
            Ok((
                reference.verify(&reference.default)?,
                reference.round_trip()?,
            ))
        },
    )?;
    run.report("login", &mut warm);
    argon2.insert("verify".into(), run.argon2.json());
    memory.insert("login".into(), memory_json(&login, after_init, &run.rss)?);
    drop(login);

    // me: a valid token from login.
    let (mut me, _) = start_ready(s, "protected", &env)?;
    let after_init = me.memory_kib()?;
    let run = warm_run(
        &mut me,
        warmup * 4,
        count_env("BENCH_ME_RUNS", 1000),
        |_| me_event(&token),
        200,
        |answer| {
            if answer.body["email"] == account.as_str() {
                Ok(())
            } else {
                Err(format!("me answered another user: {}", answer.body).into())
            }
        },
        || Ok((Duration::ZERO, reference.round_trip()?)),
    )?;
    run.report("protected", &mut warm);
    memory.insert("protected".into(), memory_json(&me, after_init, &run.rss)?);
    drop(me);

    // The same runs with glibc's mmap threshold pinned (no code change, one environment
    // variable): shows how much of the peak is the allocator keeping argon2's 19 MiB blocks.
    println!("== register and login again with GLIBC_TUNABLES={MMAP_TUNABLE}");
    let mut tuned_env = env.clone();
    tuned_env
        .extra
        .push(("GLIBC_TUNABLES".into(), MMAP_TUNABLE.into()));
    let mut tuned = serde_json::Map::new();
    for function in ["register", "login"] {
        let (mut instance, _) = start_ready(s, function, &tuned_env)?;
        let after_init = instance.memory_kib()?;
        let run = if function == "register" {
            warm_run(
                &mut instance,
                warmup,
                register_runs,
                |i| register_event(&format!("tuned-{nonce}-{i}@bench.example")),
                201,
                |_| Ok(()),
                || Ok((reference.hash(&reference.default)?, Duration::ZERO)),
            )?
        } else {
            warm_run(
                &mut instance,
                warmup,
                login_runs,
                |_| login_event(&account),
                200,
                |_| Ok(()),
                || Ok((reference.verify(&reference.default)?, Duration::ZERO)),
            )?
        };
        let mut entry = memory_json(&instance, after_init, &run.rss)?;
        entry["latency"] = run.latency.json();
        entry["argon2_in_harness"] = run.argon2.json();
        println!(
            "{function:>10}: p50 {:.3} ms with the tunable (argon2 in the harness meanwhile: p50 {:.3} ms)",
            run.latency.percentile(50.0),
            run.argon2.percentile(50.0)
        );
        tuned.insert(function.into(), entry);
    }

    let binaries: serde_json::Map<String, Value> = FUNCTIONS
        .iter()
        .map(|(f, _, _)| {
            let size = fs::metadata(s.bin_dir.join(f))
                .map(|m| m.len())
                .unwrap_or(0);
            ((*f).to_owned(), json!(size))
        })
        .collect();

    s.write_json(
        "runtime.json",
        &json!({
            "load_before": load_before,
            "load_after": load_average(),
            "db": db,
            "round_trips": round_trips,
            "argon2": argon2,
            "init": init,
            "warm": warm,
            "memory_kib": memory,
            "memory_kib_mmap_threshold_tuned": tuned,
            "binary_bytes": binaries,
        }),
    )
}

/// The harness's own reference measurements: argon2id through `Passwords` at the default cost
/// (a current-thread runtime and `spawn_blocking`, as in a function), and one `SELECT 1`.
struct Reference {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    password: NewPassword,
    default: Hasher,
}

/// A `Passwords` and a PHC string it made.
struct Hasher {
    passwords: Passwords,
    phc: String,
}

impl Reference {
    fn new(rt: tokio::runtime::Runtime, database_url: &str) -> Result<Self> {
        let (client, connection) =
            rt.block_on(tokio_postgres::connect(database_url, tokio_postgres::NoTls))?;
        rt.spawn(connection);
        let password = NewPassword::parse(STRONG, &Email::parse("argon2@bench.example")?, 12)?;
        let hasher = |settings| -> Result<Hasher> {
            let passwords = Passwords::new(settings)?;
            let phc = rt.block_on(passwords.hash(&password))?;
            Ok(Hasher { passwords, phc })
        };
        let default = hasher(Argon2Settings::default())?;
        Ok(Self {
            rt,
            client,
            password,
            default,
        })
    }

    fn hash(&self, hasher: &Hasher) -> Result<Duration> {
        let start = Instant::now();
        self.rt.block_on(hasher.passwords.hash(&self.password))?;
        Ok(start.elapsed())
    }

    fn verify(&self, hasher: &Hasher) -> Result<Duration> {
        let start = Instant::now();
        if !self
            .rt
            .block_on(hasher.passwords.verify(STRONG, Some(&hasher.phc)))?
        {
            return Err("argon2 verify refused the right password".into());
        }
        Ok(start.elapsed())
    }

    fn round_trip(&self) -> Result<Duration> {
        let start = Instant::now();
        self.rt.block_on(self.client.query_typed("SELECT 1", &[]))?;
        Ok(start.elapsed())
    }
}

/// One warm run: latencies, the paired reference measurements, VmRSS after each invocation.
struct WarmRun {
    latency: Samples,
    argon2: Samples,
    round_trip: Samples,
    /// Latency minus the argon2 and round trip measured right after it.
    overhead: Samples,
    rss: Vec<u64>,
}

impl WarmRun {
    fn report(&self, function: &str, into: &mut serde_json::Map<String, Value>) {
        println!(
            "{function:>10}: p50 {:.3} ms, p99 {:.3} ms over {} invocations; paired overhead p50 {:.3} ms",
            self.latency.percentile(50.0),
            self.latency.percentile(99.0),
            self.latency.0.len(),
            self.overhead.percentile(50.0)
        );
        let mut entry = self.latency.json();
        entry["argon2"] = self.argon2.json();
        entry["round_trip"] = self.round_trip.json();
        entry["paired_overhead"] = self.overhead.json();
        entry["series_ms"] = json!(
            self.latency
                .0
                .iter()
                .map(|x| round3(*x))
                .collect::<Vec<_>>()
        );
        into.insert(function.into(), entry);
    }
}

/// Spawns a function and waits for its first `GET /next`.
fn start_ready(
    s: &Settings,
    function: &'static str,
    env: &FunctionEnv,
) -> Result<(Instance, Duration)> {
    let mut instance = Instance::spawn(s, function, env, &format!("{function}.log"))?;
    let init = instance.wait_ready(Duration::from_secs(15))?;
    Ok((instance, init))
}

/// Invokes `warmup + runs` times; after each invocation, `reference` times the harness's
/// own argon2 and round trip (either may be zero).
fn warm_run(
    instance: &mut Instance,
    warmup: usize,
    runs: usize,
    mut event: impl FnMut(usize) -> String,
    expected: u16,
    mut check: impl FnMut(&Answer) -> Result<()>,
    mut reference: impl FnMut() -> Result<(Duration, Duration)>,
) -> Result<WarmRun> {
    let mut run = WarmRun {
        latency: Samples::default(),
        argon2: Samples::default(),
        round_trip: Samples::default(),
        overhead: Samples::default(),
        rss: Vec::with_capacity(warmup + runs),
    };
    for i in 0..warmup + runs {
        let answer = instance.call(event(i), expected)?;
        check(&answer)?;
        run.rss.push(instance.memory_kib()?.1);
        let (argon2, round_trip) = reference()?;
        if i >= warmup {
            run.latency.push(answer.latency);
            if !argon2.is_zero() {
                run.argon2.push(argon2);
            }
            if !round_trip.is_zero() {
                run.round_trip.push(round_trip);
            }
            let overhead =
                answer.latency.as_secs_f64() - argon2.as_secs_f64() - round_trip.as_secs_f64();
            run.overhead.0.push(overhead * 1e3);
        }
    }
    Ok(run)
}

fn memory_json(instance: &Instance, after_init: (u64, u64), rss_curve: &[u64]) -> Result<Value> {
    let (hwm, rss) = instance.memory_kib()?;
    println!(
        "{:>10}: peak RSS {:.1} MiB after its run ({:.1} MiB after init)",
        instance.function,
        hwm as f64 / 1024.0,
        after_init.0 as f64 / 1024.0
    );
    Ok(json!({
        "peak_after_run": hwm,
        "rss_after_run": rss,
        "peak_after_init": after_init.0,
        "rss_curve": rss_curve,
    }))
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

async fn database_round_trips(url: &str) -> Result<Value> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let runs = count_env("BENCH_DB_RUNS", 2000);
    let mut select1 = Samples::default();
    for i in 0..runs + 100 {
        let start = Instant::now();
        client.query_typed("SELECT 1", &[]).await?;
        if i >= 100 {
            select1.push(start.elapsed());
        }
    }
    drop(client);
    let _ = driver.await;
    println!(
        "  SELECT 1: p50 {:.3} ms, p99 {:.3} ms",
        select1.percentile(50.0),
        select1.percentile(99.0)
    );
    Ok(json!({ "select1": select1.json() }))
}

// --- counting round trips -------------------------------------------------------------------

/// A TCP proxy in front of Postgres (plain TCP: `sslmode=disable`) that counts the round trips
/// clients make — every `Sync` (extended protocol, as `query_typed` sends it) and every simple
/// `Query` — and adds up how long each waited for its `ReadyForQuery`: the database's share of
/// a request, as the function sees it.
struct CountingProxy {
    port: u16,
    stats: Arc<ProxyStats>,
}

#[derive(Default)]
struct ProxyStats {
    round_trips: AtomicUsize,
    waited_ns: AtomicU64,
}

impl CountingProxy {
    fn start(upstream: String) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stats = Arc::new(ProxyStats::default());
        let shared = stats.clone();
        thread::Builder::new()
            .name("pg-proxy".into())
            .spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        continue;
                    };
                    let stats = shared.clone();
                    let _ = thread::Builder::new()
                        .name("pg-proxy-conn".into())
                        .spawn(move || {
                            let _ = proxy_connection(client, server, &stats);
                        });
                }
            })?;
        Ok(Self { port, stats })
    }

    /// Round trips so far, and the time they waited in all.
    fn totals(&self) -> (usize, Duration) {
        (
            self.stats.round_trips.load(Ordering::SeqCst),
            Duration::from_nanos(self.stats.waited_ns.load(Ordering::SeqCst)),
        )
    }
}

/// Reads one typed protocol message (type byte, length, body) into `buf`.
fn read_typed(reader: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<u8> {
    let mut head = [0u8; 5];
    reader.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    buf.clear();
    buf.extend_from_slice(&head);
    buf.resize(1 + len.max(4), 0);
    reader.read_exact(&mut buf[5..])?;
    Ok(head[0])
}

fn proxy_connection(
    client: TcpStream,
    server: TcpStream,
    stats: &Arc<ProxyStats>,
) -> io::Result<()> {
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    // When each round trip still waiting for its ReadyForQuery was sent.
    let pending = Arc::new(Mutex::new(std::collections::VecDeque::<Instant>::new()));
    let (from_server, to_client) = (server.try_clone()?, client.try_clone()?);
    let (down_pending, down_stats) = (pending.clone(), stats.clone());
    thread::Builder::new()
        .name("pg-proxy-down".into())
        .spawn(move || -> io::Result<()> {
            let mut reader = BufReader::new(from_server);
            let mut writer = io::BufWriter::new(to_client);
            let mut message = Vec::new();
            loop {
                if read_typed(&mut reader, &mut message)? == b'Z' {
                    let sent = down_pending.lock().expect("the pending lock").pop_front();
                    if let Some(sent) = sent {
                        let waited = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        down_stats.waited_ns.fetch_add(waited, Ordering::SeqCst);
                    }
                }
                writer.write_all(&message)?;
                if reader.buffer().is_empty() {
                    writer.flush()?;
                }
            }
        })?;
    let mut reader = BufReader::new(client);
    let mut writer = io::BufWriter::new(server);
    // The startup packet has no type byte: length, then the body.
    let mut len = [0u8; 4];
    reader.read_exact(&mut len)?;
    let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
    reader.read_exact(&mut body)?;
    writer.write_all(&len)?;
    writer.write_all(&body)?;
    writer.flush()?;
    let mut message = Vec::new();
    loop {
        let kind = read_typed(&mut reader, &mut message)?;
        writer.write_all(&message)?;
        if matches!(kind, b'S' | b'Q') {
            stats.round_trips.fetch_add(1, Ordering::SeqCst);
            pending
                .lock()
                .expect("the pending lock")
                .push_back(Instant::now());
            writer.flush()?;
        } else if reader.buffer().is_empty() {
            writer.flush()?;
        }
    }
}

/// The round trips per invocation of each route, counted through a [`CountingProxy`].
fn count_round_trips(s: &Settings, env: &FunctionEnv, nonce: &str) -> Result<Value> {
    let mut url = url::Url::parse(&env.database_url)?;
    let upstream = format!(
        "{}:{}",
        url.host_str().ok_or("DATABASE_URL has no host")?,
        url.port().unwrap_or(5432)
    );
    let proxy = CountingProxy::start(upstream)?;
    url.set_port(Some(proxy.port))
        .map_err(|()| "cannot set the proxy port")?;
    let counted = FunctionEnv {
        database_url: url.to_string(),
        ..env.clone()
    };
    let runs = 10;
    let account = format!("count-{nonce}@bench.example");
    let mut counts = serde_json::Map::new();
    let mut waits = serde_json::Map::new();
    let mut per_route = |function: &'static str,
                         event: &mut dyn FnMut(usize) -> String,
                         expected: u16|
     -> Result<f64> {
        let (mut instance, _) = start_ready(s, function, &counted)?;
        // The connection made at init is not a round trip of a request.
        instance.call(event(usize::MAX), expected)?;
        let mut waited = Samples::default();
        let (first, _) = proxy.totals();
        for i in 0..runs {
            let (_, before) = proxy.totals();
            instance.call(event(i), expected)?;
            waited.push(proxy.totals().1.saturating_sub(before));
        }
        let per_call = (proxy.totals().0 - first) as f64 / runs as f64;
        println!(
            "{function:>10}: {per_call} database round trips per request, waiting {:.3} ms for them (p50)",
            waited.percentile(50.0)
        );
        counts.insert(function.into(), json!(per_call));
        waits.insert(function.into(), waited.json());
        Ok(per_call)
    };
    per_route(
        "register",
        &mut |i| {
            if i == usize::MAX {
                register_event(&account)
            } else {
                register_event(&format!("count-{nonce}-{i}@bench.example"))
            }
        },
        201,
    )?;
    let mut token = None;
    let (mut login, _) = start_ready(s, "login", env)?;
    let answer = login.call(login_event(&account), 200)?;
    token.replace(access_token(&answer)?);
    drop(login);
    per_route("login", &mut |_| login_event(&account), 200)?;
    let token = token.ok_or("no token")?;
    per_route("protected", &mut |_| me_event(&token), 200)?;
    Ok(json!({ "per_request": counts, "db_wait": waits }))
}

// --- mode: e2e ------------------------------------------------------------------------------

/// A keep-alive HTTP/1.1 client for one host.
struct HttpClient {
    addr: String,
    /// Reuse the connection; otherwise `Connection: close` and a new connection each time
    /// (whose set-up then counts in the time).
    keep_alive: bool,
    conn: Option<(BufReader<TcpStream>, TcpStream)>,
}

impl HttpClient {
    fn new(addr: &str, keep_alive: bool) -> Self {
        Self {
            addr: addr.to_owned(),
            keep_alive,
            conn: None,
        }
    }

    fn request(
        &mut self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, Value, Duration)> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: bench/1\r\nAccept: application/json\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if let Some(token) = bearer {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if !self.keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        // One retry on a fresh connection if the kept-alive one was closed.
        let mut last = None;
        for _ in 0..2 {
            let start = Instant::now();
            if self.conn.is_none() {
                let stream = TcpStream::connect(&self.addr)?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(Duration::from_secs(120)))?;
                self.conn = Some((BufReader::new(stream.try_clone()?), stream));
            }
            let (reader, writer) = self.conn.as_mut().ok_or("no connection")?;
            let sent = writer
                .write_all(head.as_bytes())
                .and_then(|()| writer.write_all(body.as_bytes()))
                .and_then(|()| writer.flush());
            let received = sent.and_then(|()| read_message(reader));
            match received {
                Ok(Some(response)) => {
                    let elapsed = response.at.saturating_duration_since(start);
                    let status = response
                        .start
                        .split_whitespace()
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .ok_or("a response without a status")?;
                    if !self.keep_alive
                        || response
                            .header("connection")
                            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                    {
                        self.conn = None;
                    }
                    let json = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
                    return Ok((status, json, elapsed));
                }
                Ok(None) => {
                    self.conn = None;
                    last = Some(io::Error::from(io::ErrorKind::UnexpectedEof));
                }
                Err(error) => {
                    self.conn = None;
                    last = Some(error);
                }
            }
        }
        Err(format!(
            "{method} {path}: {}",
            last.map(|e| e.to_string()).unwrap_or_default()
        )
        .into())
    }

    fn expect(
        &mut self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
        expected: u16,
    ) -> Result<(Value, Duration)> {
        let (status, json, elapsed) = self.request(method, path, bearer, body)?;
        if status != expected {
            return Err(
                format!("{method} {path} answered {status} (expected {expected}): {json}").into(),
            );
        }
        Ok((json, elapsed))
    }
}

fn e2e_mode(s: &Settings) -> Result<()> {
    let url = required_env("BENCH_E2E_URL")?;
    let watch_url = std::env::var("BENCH_E2E_WATCH_URL").ok();
    let addr = |url: &str| {
        url.trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned()
    };
    let nonce = &Uuid::new_v4().simple().to_string()[..8];
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

// --- mode: concurrency ----------------------------------------------------------------------

fn concurrency_mode(s: &Settings) -> Result<()> {
    let pooler_url = required_env("BENCH_POOLER_URL")?;
    let direct_url = required_env("BENCH_DATABASE_URL")?;
    let admin_url = std::env::var("BENCH_POOLER_ADMIN_URL").ok();
    let max_server = count_env("BENCH_POOLER_MAX_SERVER_CONNS", 10);
    let users = count_env("BENCH_CONCURRENCY", 50);
    let nonce = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let env = FunctionEnv {
        database_url: pooler_url,
        jwt_secret: random_secret(),
        extra: [
            base_function_env(),
            vec![("DATABASE_POOL_MAX_SIZE".into(), "1".into())],
        ]
        .concat(),
    };

    println!(
        "== {users} users × 3 function processes against PgBouncer (transaction mode, {max_server} server connections)"
    );
    // Sample the server side from the start: init opens a client connection per process.
    let sampler = Sampler::start(&direct_url, admin_url.as_deref())?;

    let started = Instant::now();
    let mut instances = Vec::with_capacity(users);
    for user in 0..users {
        let mut trio = Vec::with_capacity(3);
        for (function, _, _) in FUNCTIONS {
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
    let registered = register.call(register_event(email), 201)?;
    let logged_in = login.call(login_event(email), 200)?;
    let token = access_token(&logged_in)?;
    let who = me.call(me_event(&token), 200)?;
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

// --- mode: report ---------------------------------------------------------------------------

/// Criterion's median for `id` (`group/function`), in nanoseconds.
fn criterion_median_ns(s: &Settings, id: &str) -> Option<f64> {
    let path = s
        .root
        .join("target/criterion")
        .join(id)
        .join("new/estimates.json");
    let text = fs::read_to_string(path).ok()?;
    let value: Value = serde_json::from_str(&text).ok()?;
    value["median"]["point_estimate"].as_f64()
}

fn human_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn ms(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn mib(bytes: f64) -> String {
    format!("{:.2} MiB", bytes / 1048576.0)
}

fn verdict(ok: bool, margin: String) -> String {
    if ok {
        format!("**met** ({margin})")
    } else {
        format!("**missed** ({margin})")
    }
}

fn first_line_of(path: &str, key: &str) -> String {
    fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once([':', '=']))
                .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The latencies of the invocations made after VmRSS reached its final level (the series and
/// the RSS curve both come from `warm_run`; the curve also covers the warm-up invocations).
fn steady_samples(warm: &Value, rss_curve: &Value) -> Samples {
    let series: Vec<f64> = warm["series_ms"]
        .as_array()
        .map(|a| a.iter().map(ms).collect())
        .unwrap_or_default();
    let curve: Vec<f64> = rss_curve
        .as_array()
        .map(|a| a.iter().map(ms).collect())
        .unwrap_or_default();
    let last = curve.last().copied().unwrap_or(0.0);
    let warmup = curve.len().saturating_sub(series.len());
    // The first invocation after which RSS stays within 1 % of where it ends.
    let settled = curve
        .iter()
        .rposition(|&kib| kib < last * 0.99)
        .map_or(0, |i| i + 1);
    Samples(
        series
            .into_iter()
            .skip((settled + 1).saturating_sub(warmup))
            .collect(),
    )
}

/// One route's overhead arithmetic (milliseconds).
struct Overhead {
    function: &'static str,
    p50: f64,
    argon2: f64,
    argon2_name: &'static str,
    round_trip: f64,
    /// Database round trips per request, counted by the proxy.
    round_trips: f64,
    /// The time a request waited for all its round trips (p50, measured at the proxy).
    db_wait: f64,
    paired: f64,
    target: f64,
}

impl Overhead {
    /// p50 − argon2 p50 − round-trip p50.
    fn value(&self) -> f64 {
        self.p50 - self.argon2 - self.round_trip
    }
}

fn report_mode(s: &Settings) -> Result<()> {
    let runtime = s
        .read_json("runtime.json")
        .ok_or("target/bench/runtime.json is missing: run the runtime mode first")?;
    let e2e = s.read_json("e2e.json");
    let concurrency = s.read_json("concurrency.json");
    let sizes = s.read_json("sizes.json");
    let mut md = String::new();
    let mut line = |text: String| {
        md.push_str(&text);
        md.push('\n');
    };

    let mem_kib: f64 = first_line_of("/proc/meminfo", "MemTotal")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    line("# Benchmark results".into());
    line(String::new());
    line(format!(
        "Measured by `make bench` (scripts/bench.sh) on {} UTC.",
        chrono::Utc::now().format("%Y-%m-%d %H:%M")
    ));
    line(String::new());
    line("| machine | |".into());
    line("| --- | --- |".into());
    line(format!(
        "| CPUs (`nproc`) | {} |",
        thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    ));
    line(format!(
        "| CPU model | {} |",
        first_line_of("/proc/cpuinfo", "model name")
    ));
    line(format!("| memory | {:.1} GiB |", mem_kib / 1048576.0));
    line(format!(
        "| OS | {} |",
        first_line_of("/etc/os-release", "PRETTY_NAME")
    ));
    line(format!(
        "| kernel | {} |",
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    ));
    line(format!(
        "| rustc | {} |",
        std::env::var("BENCH_RUSTC").unwrap_or_default()
    ));
    line(format!(
        "| load average (1, 5, 15 min) before / after the runtime measurements | {} / {} |",
        runtime["load_before"].as_str().unwrap_or(""),
        runtime["load_after"].as_str().unwrap_or("")
    ));
    line(String::new());

    // Inputs of the overhead arithmetic: per route, the argon2 and round trip the harness
    // measured between that route's invocations.
    let warm = &runtime["warm"];
    let zero_if_nan = |x: f64| if x.is_nan() { 0.0 } else { x };
    let overheads: Vec<Overhead> = [
        ("register", "argon2 hash", 1.0),
        ("login", "argon2 verify", 1.0),
        ("protected", "", 0.3),
    ]
    .into_iter()
    .map(|(f, argon2_name, target)| {
        let w = &warm[f];
        Overhead {
            function: f,
            p50: ms(&w["p50_ms"]),
            argon2: zero_if_nan(ms(&w["argon2"]["p50_ms"])),
            argon2_name,
            round_trip: ms(&w["round_trip"]["p50_ms"]),
            round_trips: ms(&runtime["round_trips"]["per_request"][f]),
            db_wait: ms(&runtime["round_trips"]["db_wait"][f]["p50_ms"]),
            paired: ms(&w["paired_overhead"]["p50_ms"]),
            target,
        }
    })
    .collect();

    // Summary of the targets.
    let mut summary = Vec::new();
    let mut worst_init: (f64, &str) = (0.0, "");
    for (f, _, _) in FUNCTIONS {
        let p50 = ms(&runtime["init"][f]["without_db"]["p50_ms"]);
        if p50 > worst_init.0 {
            worst_init = (p50, f);
        }
    }
    summary.push(format!(
        "| init without the DB connection (p50, slowest function: {}) | {:.2} ms | ≤ 15 ms | {} |",
        worst_init.1,
        worst_init.0,
        verdict(
            worst_init.0 <= 15.0,
            format!("{:+.2} ms", worst_init.0 - 15.0)
        )
    ));
    for o in &overheads {
        let overhead = o.value();
        summary.push(format!(
            "| {}: overhead = p50 − {}one round trip | {overhead:.3} ms (paired: {:.3} ms) | ≤ {} ms | {} |",
            o.function,
            if o.argon2 > 0.0 { "argon2 − " } else { "" },
            o.paired,
            o.target,
            verdict(
                overhead <= o.target,
                format!("{:+.3} ms", overhead - o.target)
            )
        ));
    }
    let mut worst_rss: (f64, &str) = (0.0, "");
    for (f, _, _) in FUNCTIONS {
        let kib = ms(&runtime["memory_kib"][f]["peak_after_run"]);
        if kib > worst_rss.0 {
            worst_rss = (kib, f);
        }
    }
    summary.push(format!(
        "| peak RSS (VmHWM, largest: {}) | {} | ≤ 40 MiB | {} |",
        worst_rss.1,
        mib(worst_rss.0 * 1024.0),
        verdict(
            worst_rss.0 <= 40.0 * 1024.0,
            format!("{:+.2} MiB", worst_rss.0 / 1024.0 - 40.0)
        )
    ));
    if let Some(sizes) = &sizes {
        for arch in ["arm64", "x86_64"] {
            let mut worst: (f64, &str) = (0.0, "");
            for (f, _, _) in FUNCTIONS {
                let zip = ms(&sizes[arch][f]["zip"]);
                if zip > worst.0 {
                    worst = (zip, f);
                }
            }
            if worst.0 > 0.0 {
                summary.push(format!(
                    "| zipped binary, {arch} (largest: {}) | {} | ≤ 4 MiB | {} |",
                    worst.1,
                    mib(worst.0),
                    verdict(
                        worst.0 <= 4.0 * 1048576.0,
                        format!("{:+.2} MiB", (worst.0 - 4.0 * 1048576.0) / 1048576.0)
                    )
                ));
            }
        }
    }
    if let Some(c) = &concurrency {
        let errors = c["errors"].as_array().map(Vec::len).unwrap_or(usize::MAX);
        summary.push(format!(
            "| {} concurrent register → login → me flows via PgBouncer ({} server connections) | {} errors, ≤ {} server connections seen | 0 errors | {} |",
            c["users"],
            c["max_server_conns_configured"],
            errors,
            c["max_server_conns_seen"],
            verdict(errors == 0, format!("{:.0} ms in all", ms(&c["total_ms"])))
        ));
    }
    line("## Targets".into());
    line(String::new());
    line("| target | measured | goal | verdict |".into());
    line("| --- | --- | --- | --- |".into());
    for row in summary {
        line(row);
    }
    line(String::new());

    line("## Micro benchmarks (criterion, median)".into());
    line(String::new());
    line("| benchmark | median |".into());
    line("| --- | --- |".into());
    for (id, what) in [
        (
            "argon2id/hash",
            "argon2id hash, m=19456 KiB t=2 p=1 (`Passwords::hash`)",
        ),
        (
            "argon2id/verify",
            "argon2id verify, same cost (`Passwords::verify`)",
        ),
        (
            "jwt/hs256_issue",
            "JWT issue, HS256 with JWT_SECRET (`TokenKeys::issue`)",
        ),
        (
            "jwt/hs256_verify",
            "JWT verify, HS256 (`TokenKeys::verify`)",
        ),
        (
            "jwt/rs256_issue",
            "JWT issue, RS256 2048-bit with JWT_PRIVATE_KEY",
        ),
        ("jwt/rs256_verify", "JWT verify, RS256 2048-bit"),
        ("email_parse/ascii", "`Email::parse`, ASCII"),
        (
            "email_parse/idn",
            "`Email::parse`, internationalized domain",
        ),
        (
            "password_parse/16_chars",
            "`NewPassword::parse` (NFKC + zxcvbn), 16 chars",
        ),
        (
            "password_parse/32_chars",
            "`NewPassword::parse` (NFKC + zxcvbn), 32 chars (the harness's registrations)",
        ),
        (
            "password_parse/64_chars",
            "`NewPassword::parse` (NFKC + zxcvbn), 64 chars",
        ),
        (
            "password_parse/128_chars",
            "`NewPassword::parse` (NFKC + zxcvbn), 128 chars (the longest allowed)",
        ),
    ] {
        let value = criterion_median_ns(s, id)
            .map(human_ns)
            .unwrap_or_else(|| "not run".into());
        line(format!("| {what} | {value} |"));
    }
    line(String::new());

    line("## Database and argon2, measured from the harness process".into());
    line(String::new());
    line("| what | p50 | p99 | n |".into());
    line("| --- | --- | --- | --- |".into());
    let v = &runtime["db"]["select1"];
    line(format!(
        "| one round trip: `query_typed(\"SELECT 1\")`, tokio-postgres, loopback, alone | {:.3} ms | {:.3} ms | {} |",
        ms(&v["p50_ms"]),
        ms(&v["p99_ms"]),
        v["n"]
    ));
    for (f, method, path) in FUNCTIONS {
        let v = &runtime["warm"][f]["round_trip"];
        line(format!(
            "| one round trip, measured between the {method} {path} invocations | {:.3} ms | {:.3} ms | {} |",
            ms(&v["p50_ms"]),
            ms(&v["p99_ms"]),
            v["n"]
        ));
    }
    for key in ["hash", "verify"] {
        let v = &runtime["argon2"][key];
        line(format!(
            "| argon2id {key} (`Passwords`, current-thread runtime + spawn_blocking) | {:.3} ms | {:.3} ms | {} |",
            ms(&v["p50_ms"]),
            ms(&v["p99_ms"]),
            v["n"]
        ));
    }
    line(String::new());

    line("## Init (process spawn → first `GET /next`)".into());
    line(String::new());
    line("| function | with the DB connection: p50 | max | without (closed port): p50 | max | n each |".into());
    line("| --- | --- | --- | --- | --- | --- |".into());
    for (f, _, _) in FUNCTIONS {
        let i = &runtime["init"][f];
        line(format!(
            "| {f} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            ms(&i["with_db"]["p50_ms"]),
            ms(&i["with_db"]["max_ms"]),
            ms(&i["without_db"]["p50_ms"]),
            ms(&i["without_db"]["max_ms"]),
            i["with_db"]["n"]
        ));
    }
    line(String::new());

    line("## Warm invocations (event handed out → response received)".into());
    line(String::new());
    line(
        "| route | p50 | p99 | n | overhead: p50 − argon2 p50 − one round trip p50 | median of paired overheads | round trips per request (counted) | time waiting for them (p50, at the proxy) | p50 − argon2 − that wait |"
            .into(),
    );
    line("| --- | --- | --- | --- | --- | --- | --- | --- | --- |".into());
    for ((_, method, path), o) in FUNCTIONS.iter().zip(&overheads) {
        let w = &warm[o.function];
        let minus = if o.argon2 > 0.0 {
            format!(" − {} {:.3}", o.argon2_name, o.argon2)
        } else {
            String::new()
        };
        line(format!(
            "| {method} {path} | {:.3} ms | {:.3} ms | {} | {:.3}{minus} − {:.3} = **{:.3} ms** (goal ≤ {}) | {:.3} ms | {} | {:.3} ms | {:.3} ms |",
            o.p50,
            ms(&w["p99_ms"]),
            w["n"],
            o.p50,
            o.round_trip,
            o.value(),
            o.target,
            o.paired,
            o.round_trips,
            o.db_wait,
            o.p50 - o.argon2 - o.db_wait
        ));
    }
    line(String::new());
    line("While a fresh function process's heap grows (each argon2 run takes new 19 MiB; see the memory section), its requests also pay the page faults. The same figures over the invocations after VmRSS stopped growing:".into());
    line(String::new());
    line("| route | invocations after the heap stopped growing | their p50 | p50 − argon2 − one round trip |".into());
    line("| --- | --- | --- | --- |".into());
    for o in overheads.iter().filter(|o| o.argon2 > 0.0) {
        let steady = steady_samples(
            &warm[o.function],
            &runtime["memory_kib"][o.function]["rss_curve"],
        );
        let p50 = steady.percentile(50.0);
        line(format!(
            "| {} | {} | {p50:.3} ms | {:.3} ms |",
            o.function,
            steady.0.len(),
            p50 - o.argon2 - o.round_trip
        ));
    }
    line(String::new());

    line("## Peak memory (`VmHWM` from /proc/PID/status)".into());
    line(String::new());
    line(format!(
        "| function | VmHWM after init | VmRSS after invocation 1 / 2 / 5 / 10 / 20 / last | VmHWM after its warm run | same run with `GLIBC_TUNABLES={MMAP_TUNABLE}` |"
    ));
    line("| --- | --- | --- | --- | --- |".into());
    for (f, _, _) in FUNCTIONS {
        let m = &runtime["memory_kib"][f];
        let curve: Vec<f64> = m["rss_curve"]
            .as_array()
            .map(|a| a.iter().map(ms).collect())
            .unwrap_or_default();
        let points: Vec<String> = [1, 2, 5, 10, 20, curve.len()]
            .iter()
            .filter_map(|&i| curve.get(i.max(1) - 1))
            .map(|kib| format!("{:.0}", kib / 1024.0))
            .collect();
        let tuned = &runtime["memory_kib_mmap_threshold_tuned"][f];
        line(format!(
            "| {f} | {} | {} MiB (n = {}) | {} | {} |",
            mib(ms(&m["peak_after_init"]) * 1024.0),
            points.join(" / "),
            curve.len(),
            mib(ms(&m["peak_after_run"]) * 1024.0),
            if tuned.is_null() {
                "—".to_owned()
            } else {
                format!(
                    "{} (p50 {:.3} ms)",
                    mib(ms(&tuned["peak_after_run"]) * 1024.0),
                    ms(&tuned["latency"]["p50_ms"])
                )
            }
        ));
    }
    line(String::new());

    line("## Binary size".into());
    line(String::new());
    match &sizes {
        Some(sizes) => {
            line("| function | x86_64 stripped | x86_64 zip | arm64 (Lambda) binary | arm64 zip (`cargo lambda build --arm64`) |".into());
            line("| --- | --- | --- | --- | --- |".into());
            let cell = |v: &Value| {
                v.as_f64()
                    .map(|b| format!("{} ({b:.0} B)", mib(b)))
                    .unwrap_or_else(|| "—".into())
            };
            for (f, _, _) in FUNCTIONS {
                line(format!(
                    "| {f} | {} | {} | {} | {} |",
                    cell(&sizes["x86_64"][f]["binary"]),
                    cell(&sizes["x86_64"][f]["zip"]),
                    cell(&sizes["arm64"][f]["binary"]),
                    cell(&sizes["arm64"][f]["zip"])
                ));
            }
            line(String::new());
            if let Some(note) = sizes["arm64"]["status"].as_str() {
                line(format!("arm64 build: {note}"));
                line(String::new());
            }
            if let Some(note) = sizes["x86_64"]["linkage"].as_str() {
                line(format!("x86_64 binaries: {note}"));
                line(String::new());
            }
        }
        None => {
            line("not measured (target/bench/sizes.json is missing)".into());
            line(String::new());
        }
    }

    line("## End-to-end HTTP (gateway.py → cargo lambda watch → the release binaries)".into());
    line(String::new());
    match e2e.as_ref().and_then(|e| e["paths"].as_array()) {
        Some(paths) => {
            line("Sequential requests from the harness; the functions are the release binaries, started by `cargo lambda watch --release --ignore-changes` as `make dev` starts them.".into());
            line(String::new());
            line("| path | route | p50 | p99 | n |".into());
            line("| --- | --- | --- | --- | --- |".into());
            for path in paths {
                for (f, method, route) in FUNCTIONS {
                    let r = &path["routes"][f];
                    line(format!(
                        "| {} | {method} {route} | {:.3} ms | {:.3} ms | {} |",
                        path["path"].as_str().unwrap_or(""),
                        ms(&r["p50_ms"]),
                        ms(&r["p99_ms"]),
                        r["n"]
                    ));
                }
            }
        }
        None => line("not measured".into()),
    }
    line(String::new());

    line("## Concurrency: instances × pool size 1 behind PgBouncer (transaction mode)".into());
    line(String::new());
    match &concurrency {
        Some(c) => {
            line("| | |".into());
            line("| --- | --- |".into());
            line(format!(
                "| simulated users (one register, login and protected process each) | {} |",
                c["users"]
            ));
            line(format!(
                "| function processes (each DATABASE_POOL_MAX_SIZE=1) | {} |",
                c["processes"]
            ));
            line(format!(
                "| PgBouncer server connections allowed | {} |",
                c["max_server_conns_configured"]
            ));
            line(format!(
                "| all processes started together, ready after | {:.0} ms |",
                ms(&c["all_ready_ms"])
            ));
            line(format!(
                "| init while starting together: p50 / max | {:.1} ms / {:.1} ms |",
                ms(&c["init_while_starting_together"]["p50_ms"]),
                ms(&c["init_while_starting_together"]["max_ms"])
            ));
            line(format!(
                "| all flows done after | {:.0} ms |",
                ms(&c["total_ms"])
            ));
            line(format!(
                "| one flow: p50 / max | {:.0} ms / {:.0} ms |",
                ms(&c["flow"]["p50_ms"]),
                ms(&c["flow"]["max_ms"])
            ));
            for (key, what) in [("register", "register"), ("login", "login"), ("me", "me")] {
                line(format!(
                    "| {what} under this load: p50 / p99 | {:.1} ms / {:.1} ms |",
                    ms(&c[key]["p50_ms"]),
                    ms(&c[key]["p99_ms"])
                ));
            }
            line(format!(
                "| errors (non-2xx or /error) | {} |",
                c["errors"].as_array().map(Vec::len).unwrap_or(usize::MAX)
            ));
            line(format!(
                "| most server connections seen (pg_stat_activity, {} samples) | {} |",
                c["samples"], c["max_server_conns_seen"]
            ));
            line(format!(
                "| most clients waiting in PgBouncer (SHOW POOLS) | {} |",
                c["max_clients_waiting"]
            ));
        }
        None => line("not measured".into()),
    }
    line(String::new());

    let path = s.out_dir.join("results.md");
    fs::write(&path, &md)?;
    println!("{md}");
    println!("wrote {}", path.display());
    Ok(())
}
