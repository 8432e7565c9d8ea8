//! A stand-in of the Lambda Runtime API, one port per function process: it records when the
//! process first asks for work (`GET /next`: init is over), hands out the events it is given
//! (API Gateway HTTP API v2 events, or EventBridge scheduled events), and collects each
//! response with the time from handing out to receiving it.
//!
//! Plain HTTP/1.1 over `std::net::TcpListener`, one thread per connection; each process sees
//! only what a Lambda sandbox offers: `GET /2018-06-01/runtime/invocation/next` (with the
//! `Lambda-Runtime-*` headers), `POST …/invocation/{id}/response` and `…/error`, and
//! `POST /2018-06-01/runtime/init/error`.

use crate::{
    Result, epoch_ms,
    http::{read_message, write_response},
};
use base64::Engine as _;
use serde_json::{Value, json};
use std::{
    collections::HashMap,
    io::{self, BufReader},
    net::{TcpListener, TcpStream},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};
use uuid::Uuid;

const RUNTIME_PREFIX: &str = "/2018-06-01/runtime/";

/// An event to hand out.
pub struct Invocation {
    /// The request id (`Lambda-Runtime-Aws-Request-Id`).
    pub id: String,
    /// The event, as JSON text.
    pub event: String,
}

/// What the process did.
pub enum ApiEvent {
    /// The first `GET /next`: init is over.
    Ready(Instant),
    /// `POST /init/error`, with its body.
    InitError(String),
    /// A response or an error for an invocation.
    Done(Completed),
}

/// A finished invocation.
pub struct Completed {
    /// The request id.
    pub id: String,
    /// `/error` rather than `/response`.
    pub error: bool,
    /// What the function sent.
    pub body: Vec<u8>,
    /// Event handed out → response received.
    pub latency: Duration,
}

struct ApiShared {
    function: String,
    inbox: Mutex<mpsc::Receiver<Invocation>>,
    events: mpsc::Sender<ApiEvent>,
    handed_out: Mutex<HashMap<String, Instant>>,
    ready_sent: AtomicBool,
}

/// One function process's Runtime API, on its own port; stopped when dropped.
pub struct RuntimeApi {
    /// The port (`AWS_LAMBDA_RUNTIME_API=127.0.0.1:PORT`).
    pub port: u16,
    inbox: Option<mpsc::Sender<Invocation>>,
    /// What the process did, in order.
    pub events: mpsc::Receiver<ApiEvent>,
    stop: Arc<AtomicBool>,
}

/// A lock whose holder panicked still guards plain data: take it anyway.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RuntimeApi {
    /// Listens on a free loopback port for `function`'s process.
    pub fn start(function: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let (inbox_tx, inbox_rx) = mpsc::channel();
        let (events_tx, events_rx) = mpsc::channel();
        let shared = Arc::new(ApiShared {
            function: function.to_owned(),
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
                            if let Err(error) = serve(stream, &shared) {
                                // A killed function resets its connections: not worth a word.
                                if error.kind() != io::ErrorKind::ConnectionReset {
                                    eprintln!("runtime API {}: {error}", shared.function);
                                }
                            }
                        });
                    if let Err(error) = spawned {
                        eprintln!("runtime API: cannot start a thread: {error}");
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

    /// Queues an event for the next `GET /next`.
    pub fn send(&self, invocation: Invocation) -> Result<()> {
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

fn serve(stream: TcpStream, shared: &ApiShared) -> io::Result<()> {
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
                let next = lock(&shared.inbox).recv();
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
                lock(&shared.handed_out).insert(invocation.id.clone(), Instant::now());
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
                let handed_out = lock(&shared.handed_out).remove(id);
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

/// An API Gateway HTTP API (payload 2.0) event, as API Gateway sends it.
pub fn apigw_event(method: &str, path: &str, bearer: Option<&str>, body: Option<&Value>) -> String {
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
    // The route key is the template's (`/auth/sessions/{id}`), the path the request's.
    let route = if path.starts_with("/auth/sessions/") {
        "/auth/sessions/{id}"
    } else if path.starts_with("/assets/") {
        "/assets/{file}"
    } else {
        path
    };
    json!({
        "version": "2.0",
        "routeKey": format!("{method} {route}"),
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
            "routeKey": format!("{method} {route}"),
            "stage": "$default",
            "time": now.format("%d/%b/%Y:%H:%M:%S +0000").to_string(),
            "timeEpoch": now.timestamp_millis()
        },
        "body": body,
        "isBase64Encoded": false
    })
    .to_string()
}

/// An EventBridge scheduled event, as the template's schedules send it to `prune` and `mailer`
/// (which accept any event).
pub fn scheduled_event(function: &str) -> String {
    json!({
        "version": "0",
        "id": Uuid::new_v4().to_string(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "region": "us-east-1",
        "resources": [format!("arn:aws:events:us-east-1:123456789012:rule/{function}-schedule")],
        "detail": {}
    })
    .to_string()
}

/// A function's answer: the API Gateway v2 response unwrapped (status and JSON body), or a
/// scheduled function's JSON as is (status 200).
pub fn unwrap_response(raw: &[u8]) -> Result<(u16, Value)> {
    let response: Value = serde_json::from_slice(raw)?;
    let Some(status) = response.get("statusCode") else {
        return Ok((200, response));
    };
    let status = status
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .ok_or("a statusCode that is no status")?;
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
