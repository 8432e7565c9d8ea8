//! The breached-password check against a local stand-in of the Have I Been Pwned range API,
//! started by each test on 127.0.0.1 and speaking its protocol: `GET /range/{5 uppercase hex}`,
//! answered with `SUFFIX:COUNT` lines joined by CRLF, padded with count-0 lines to 800–1,000
//! entries when `Add-Padding: true` is sent, in chunked transfer encoding as a CDN sends it.

mod common;

use common::{Captured, STRONG_PASSWORD, fresh_state, unique_email};
use lambda_http::{Body, http};
use rand::Rng;
use shared::{
    breach::{self, LookupError, PREFIX_LEN},
    config::BreachSettings,
    email::Email,
    http::handlers,
    password::NewPassword,
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A password that passes the strength rules and that the stand-in lists as breached.
const BREACHED: &str = "Ventilated Marmalade Kayak 417";
/// One it never lists.
const CLEAN: &str = "Quartz Lantern Oboe Pilgrim 853";

/// How the stand-in answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// As the real API does.
    Serve,
    /// Reads the request, never answers, keeps the connection open.
    Hang,
    /// Sends the status line, headers and one chunk, then stalls.
    StallBody,
    /// `500 Internal Server Error`.
    Fail,
    /// `200 OK` with an HTML page.
    Garbage,
    /// `200 OK` with an endless stream of lines.
    Endless,
}

struct StandIn {
    url: String,
    /// Every request head received, verbatim.
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandIn {
    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests").clone()
    }
}

/// Starts a stand-in that lists each of `breached` (normalized passwords) with a count.
async fn stand_in(behaviour: Behaviour, breached: &[(&str, u64)]) -> StandIn {
    let mut corpus: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    for (password, count) in breached {
        let hash = breach::sha1_hex(password);
        let (prefix, suffix) = hash.split_at(PREFIX_LEN);
        corpus
            .entry(prefix.to_owned())
            .or_default()
            .push((suffix.to_owned(), *count));
    }
    let corpus = Arc::new(corpus);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(answer(stream, behaviour, corpus.clone(), seen.clone()));
        }
    });
    StandIn {
        url,
        requests,
        task,
    }
}

fn random_suffix(rng: &mut impl Rng) -> String {
    (0..40 - PREFIX_LEN)
        .map(|_| char::from(b"0123456789ABCDEF"[rng.random_range(0..16)]))
        .collect()
}

/// One connection, one request, as the real API answers it.
async fn answer(
    mut stream: TcpStream,
    behaviour: Behaviour,
    corpus: Arc<HashMap<String, Vec<(String, u64)>>>,
    requests: Arc<Mutex<Vec<String>>>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    requests.lock().expect("requests").push(head.clone());

    let respond = |status: &str, extra: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        )
    };
    let chunked_head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\
                        Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let chunk = |data: &str| format!("{:X}\r\n{data}\r\n", data.len());
    match behaviour {
        Behaviour::Hang => return std::future::pending().await,
        Behaviour::StallBody => {
            let start = format!(
                "{chunked_head}{}",
                chunk("0018A45C4D1DEF81644B54AB7F969B88D65:0\r\n")
            );
            let _ = stream.write_all(start.as_bytes()).await;
            return std::future::pending().await;
        }
        Behaviour::Fail => {
            let _ = stream
                .write_all(respond("500 Internal Server Error", "", "").as_bytes())
                .await;
            return;
        }
        Behaviour::Garbage => {
            let page = "<html><body>Service temporarily unavailable</body></html>";
            let _ = stream
                .write_all(respond("200 OK", "", page).as_bytes())
                .await;
            return;
        }
        Behaviour::Endless => {
            if stream.write_all(chunked_head.as_bytes()).await.is_err() {
                return;
            }
            let line = "0018A45C4D1DEF81644B54AB7F969B88D65:1\r\n".repeat(100);
            while stream.write_all(chunk(&line).as_bytes()).await.is_ok() {}
            return;
        }
        Behaviour::Serve => {}
    }

    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let padded = lines.any(|h| {
        h.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("add-padding") && value.trim() == "true"
        })
    });
    let prefix = match request_line.split(' ').collect::<Vec<_>>()[..] {
        ["GET", target, "HTTP/1.1"] => target.strip_prefix("/range/").filter(|p| {
            p.len() == PREFIX_LEN && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
        }),
        _ => None,
    };
    let Some(prefix) = prefix else {
        let _ = stream
            .write_all(
                respond(
                    "400 Bad Request",
                    "",
                    "The hash prefix was not in a valid format",
                )
                .as_bytes(),
            )
            .await;
        return;
    };
    let body = range_body(corpus.get(prefix).cloned().unwrap_or_default(), padded);
    let mut out = chunked_head.to_owned();
    for piece in body.as_bytes().chunks(4096) {
        out.push_str(&chunk(std::str::from_utf8(piece).expect("ASCII")));
    }
    out.push_str("0\r\n\r\n");
    let _ = stream.write_all(out.as_bytes()).await;
}

/// A range answer: the listed suffixes among others, sorted, CRLF between lines.
fn range_body(mut entries: Vec<(String, u64)>, padded: bool) -> String {
    let mut rng = rand::rng();
    // Hashes of other breached passwords share every prefix in the real corpus.
    for _ in 0..rng.random_range(300..500) {
        entries.push((random_suffix(&mut rng), rng.random_range(1..10_000)));
    }
    if padded {
        let total = rng.random_range(800..=1000usize);
        while entries.len() < total {
            entries.push((random_suffix(&mut rng), 0));
        }
    }
    entries.sort();
    entries
        .iter()
        .map(|(suffix, count)| format!("{suffix}:{count}"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn settings(url: &str, timeout_ms: &str) -> BreachSettings {
    common::config(
        "postgres://unused@127.0.0.1/unused",
        &[
            ("PASSWORD_BREACH_CHECK", "hibp"),
            ("PASSWORD_BREACH_API_URL", url),
            ("PASSWORD_BREACH_TIMEOUT_MS", timeout_ms),
        ],
    )
    .password_breach
}

fn new_password(raw: &str) -> NewPassword {
    let email = Email::parse("someone@example.com").expect("email");
    NewPassword::parse(raw, &email, 12).expect("a password the strength rules accept")
}

/// A hang of the stand-in must end at the check's own timeout; this only bounds the test.
const TEST_DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_breached_password_is_found_and_a_clean_one_passes() {
    let api = stand_in(Behaviour::Serve, &[(BREACHED, 23_597)]).await;
    let settings = settings(&api.url, "10000");

    assert_eq!(
        breach::lookup(&settings, &new_password(BREACHED)).await,
        Ok(Some(23_597))
    );
    assert!(breach::is_breached(&settings, &new_password(BREACHED)).await);
    assert_eq!(
        breach::lookup(&settings, &new_password(CLEAN)).await,
        Ok(None)
    );
    assert!(!breach::is_breached(&settings, &new_password(CLEAN)).await);
}

#[tokio::test]
async fn the_suffix_matches_whatever_its_case_and_padding_lines_never_match() {
    // Listed in lower case; the clean password appears only as a padding line (count 0).
    let lower = breach::sha1_hex(BREACHED).to_lowercase();
    let clean = breach::sha1_hex(CLEAN);
    let body = format!(
        "{}:3\r\n{}:0\r\n",
        &lower[PREFIX_LEN..],
        &clean[PREFIX_LEN..]
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let _ = stream.read(&mut buf).await.expect("read");
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(reply.as_bytes()).await.expect("write");
        }
    });
    let settings = settings(&url, "10000");
    assert_eq!(
        breach::lookup(&settings, &new_password(BREACHED)).await,
        Ok(Some(3))
    );
    assert_eq!(
        breach::lookup(&settings, &new_password(CLEAN)).await,
        Ok(None)
    );
    server.await.expect("stand-in");
}

#[tokio::test]
async fn only_the_five_character_prefix_leaves_with_padding_asked_for() {
    let api = stand_in(Behaviour::Serve, &[]).await;
    assert_eq!(
        breach::lookup(&settings(&api.url, "10000"), &new_password(BREACHED)).await,
        Ok(None)
    );
    let hash = breach::sha1_hex(BREACHED);
    let (prefix, suffix) = hash.split_at(PREFIX_LEN);
    let requests = api.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = &requests[0];
    let mut lines = request.split("\r\n");
    assert_eq!(
        lines.next(),
        Some(format!("GET /range/{prefix} HTTP/1.1").as_str())
    );
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    assert_eq!(headers.get("add-padding").map(String::as_str), Some("true"));
    assert_eq!(
        headers.get("user-agent").map(String::as_str),
        Some(breach::USER_AGENT)
    );
    assert_eq!(
        headers.get("host").map(String::as_str),
        Some(api.url.trim_start_matches("http://"))
    );
    for secret in [suffix, &suffix[..10], BREACHED] {
        assert!(
            !request
                .to_ascii_uppercase()
                .contains(&secret.to_ascii_uppercase()),
            "the request holds more than the prefix:\n{request}"
        );
    }
}

/// The failure modes all let the password through, each with one warning that names neither
/// the password nor its hash or prefix.
async fn fails_open(behaviour: Behaviour, expected: LookupError, timeout_ms: u64) {
    let api = stand_in(behaviour, &[(BREACHED, 1)]).await;
    let settings = settings(&api.url, &timeout_ms.to_string());
    let password = new_password(BREACHED);
    let log = Captured::default();
    let guard = log.install(None, None);

    let started = Instant::now();
    let (lookup, breached) = tokio::time::timeout(TEST_DEADLINE, async {
        (
            breach::lookup(&settings, &password).await,
            breach::is_breached(&settings, &password).await,
        )
    })
    .await
    .expect("the check must end at its own timeout");
    let elapsed = started.elapsed();
    drop(guard);

    assert_eq!(lookup, Err(expected.clone()));
    assert!(!breached, "a failed lookup must let the password through");
    if expected == LookupError::Timeout {
        assert!(
            elapsed >= Duration::from_millis(2 * timeout_ms),
            "two lookups ended after {elapsed:?}, before their timeouts"
        );
    }
    let log = log.text();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("password_breach.check_failed"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("\"level\":\"WARN\""), "{log}");
    let hash = breach::sha1_hex(BREACHED);
    assert!(hash[..PREFIX_LEN].bytes().any(|b| b.is_ascii_alphabetic()));
    for secret in [BREACHED, &hash, &hash[..PREFIX_LEN], &hash[PREFIX_LEN..]] {
        assert!(!log.contains(secret), "the log holds {secret}:\n{log}");
    }
    assert_eq!(api.requests().len(), 2);
}

#[tokio::test]
async fn a_stand_in_that_never_answers_lets_the_password_through_after_the_timeout() {
    fails_open(Behaviour::Hang, LookupError::Timeout, 300).await;
}

#[tokio::test]
async fn the_timeout_covers_a_body_that_stalls_half_way() {
    fails_open(Behaviour::StallBody, LookupError::Timeout, 300).await;
}

#[tokio::test]
async fn a_server_error_lets_the_password_through() {
    fails_open(Behaviour::Fail, LookupError::Status(500), 10_000).await;
}

#[tokio::test]
async fn an_answer_that_is_not_a_range_list_lets_the_password_through() {
    fails_open(Behaviour::Garbage, LookupError::Malformed, 10_000).await;
}

#[tokio::test]
async fn an_endless_answer_is_cut_at_the_size_cap() {
    fails_open(Behaviour::Endless, LookupError::TooLarge, 10_000).await;
}

#[tokio::test]
async fn nothing_listening_lets_the_password_through() {
    // Bound but not listening: connecting is refused, and no other test can take the port.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let port = socket.local_addr().expect("address").port();
    let settings = settings(&format!("http://127.0.0.1:{port}"), "10000");
    let result = breach::lookup(&settings, &new_password(BREACHED)).await;
    assert!(matches!(result, Err(LookupError::Connect(_))), "{result:?}");
    assert!(!breach::is_breached(&settings, &new_password(BREACHED)).await);
}

fn register_request(email: &str, password: &str) -> lambda_http::Request {
    http::Request::builder()
        .method("POST")
        .uri("https://api.example.com/auth/register")
        .header("content-type", "application/json")
        .body(Body::from(
            serde_json::json!({"email": email, "password": password}).to_string(),
        ))
        .expect("request")
}

async fn users_with(state: &shared::AppState, email: &str) -> i64 {
    common::psql(state)
        .await
        .query_one(
            "SELECT count(*) FROM users WHERE email = $1",
            &[&email.to_ascii_lowercase()],
        )
        .await
        .expect("count")
        .get(0)
}

#[tokio::test]
async fn registering_a_breached_password_is_a_weak_password_and_creates_no_user() {
    let api = stand_in(Behaviour::Serve, &[(STRONG_PASSWORD, 5)]).await;
    let state = fresh_state(&[
        ("PASSWORD_BREACH_CHECK", "hibp"),
        ("PASSWORD_BREACH_API_URL", &api.url),
        ("PASSWORD_BREACH_TIMEOUT_MS", "10000"),
    ])
    .await;

    let email = unique_email();
    let response = handlers::register(&state, register_request(&email, STRONG_PASSWORD))
        .await
        .expect("infallible");
    assert_eq!(response.status().as_u16(), 422);
    let problem: serde_json::Value =
        serde_json::from_slice(response.body().as_ref()).expect("JSON");
    assert_eq!(problem["code"], "weak_password");
    assert_eq!(users_with(&state, &email).await, 0);
    let audited: i64 = common::psql(&state)
        .await
        .query_one(
            "SELECT count(*) FROM auth_events \
             WHERE event = 'register.rejected' AND reason = 'breached_password'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(audited, 1);

    // The same check lets a password it does not list through.
    let other = unique_email();
    let response = handlers::register(&state, register_request(&other, CLEAN))
        .await
        .expect("infallible");
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(users_with(&state, &other).await, 1);
    assert_eq!(api.requests().len(), 2);
}

#[tokio::test]
async fn with_the_check_off_no_request_is_made() {
    let api = stand_in(Behaviour::Serve, &[(STRONG_PASSWORD, 5)]).await;
    let state = fresh_state(&[("PASSWORD_BREACH_API_URL", &api.url)]).await;
    let email = unique_email();
    let response = handlers::register(&state, register_request(&email, STRONG_PASSWORD))
        .await
        .expect("infallible");
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(users_with(&state, &email).await, 1);
    assert!(api.requests().is_empty(), "{:?}", api.requests());
}

#[tokio::test]
async fn a_host_name_is_resolved() {
    let api = stand_in(Behaviour::Serve, &[(BREACHED, 7)]).await;
    let url = api.url.replace("127.0.0.1", "localhost");
    assert_eq!(
        breach::lookup(&settings(&url, "10000"), &new_password(BREACHED)).await,
        Ok(Some(7))
    );
}

#[tokio::test]
async fn a_server_that_does_not_speak_tls_fails_the_handshake_and_lets_the_password_through() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("address"));
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let _ = stream
            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await;
    });
    let result = breach::lookup(&settings(&url, "10000"), &new_password(BREACHED)).await;
    assert!(matches!(result, Err(LookupError::Tls(_))), "{result:?}");
    server.await.expect("server");
}
