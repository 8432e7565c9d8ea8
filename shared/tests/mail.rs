//! The mailer against a real MailDev (`TEST_SMTP_URL`, `TEST_MAILDEV_URL`; `make test` starts
//! one): every notice is delivered and read back through MailDev's REST API. And against SMTP
//! servers that misbehave: one that accepts and never answers, one whose connections die
//! between two messages (a restart).
//!
//! Without the two variables the tests fail, never skip: a mail test that passes without a
//! mail server proves nothing.

mod common;

use shared::{
    config::Config,
    mail::{Envelope, MailError, Mailer, Notice},
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const APP_URL: &str = "https://app.example.com";
const PRODUCT: &str = "Acme Auth";
/// Generous: a hang is what is tested, not speed.
const DELIVERY: Duration = Duration::from_secs(10);

fn mailer(smtp_url: &str, smtp_timeout_ms: u64) -> Mailer {
    let timeout = smtp_timeout_ms.to_string();
    let pairs = [
        ("DATABASE_URL", "postgres://u:p@127.0.0.1:1/unused"),
        (
            "JWT_SECRET",
            "mail-tests-need-no-tokens-but-a-valid-config-x",
        ),
        (
            "DATA_ENCRYPTION_KEY",
            "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=",
        ),
        ("SMTP_URL", smtp_url),
        ("SMTP_TIMEOUT_MS", &timeout),
        ("MAIL_FROM", "Acme <no-reply@acme.example>"),
        ("MAIL_PRODUCT_NAME", PRODUCT),
        ("APP_URL", APP_URL),
    ];
    let config = Config::from_lookup(|name| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    })
    .expect("valid settings");
    Mailer::from_config(&config)
        .expect("valid mail settings")
        .expect("mail is on")
}

fn recipient() -> String {
    format!("mail-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// The messages MailDev holds for `address`, waiting (bounded) for at least `count`.
async fn inbox(address: &str, count: usize) -> Vec<serde_json::Value> {
    let started = Instant::now();
    loop {
        let all: serde_json::Value =
            serde_json::from_str(&common::maildev_get("/api/email").await).expect("JSON");
        let mine: Vec<serde_json::Value> = all
            .as_array()
            .expect("a list of messages")
            .iter()
            .filter(|m| {
                m["to"]
                    .as_array()
                    .is_some_and(|to| to.iter().any(|t| t["address"] == address))
            })
            .cloned()
            .collect();
        if mine.len() >= count || started.elapsed() > DELIVERY {
            return mine;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn text(message: &serde_json::Value, field: &str) -> String {
    message[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {message}"))
        .to_owned()
}

#[tokio::test]
async fn every_notice_arrives_with_both_parts_and_the_token_in_the_fragment() {
    let mailer = mailer(&common::required_env("TEST_SMTP_URL"), 3_000);
    let token = format!("tok_{}", uuid::Uuid::new_v4().simple());
    let cases = [
        (
            Notice::VerifyEmail {
                token: token.clone(),
            },
            "confirm your email address",
            Some(format!("{APP_URL}/verify-email#token={token}")),
            "24 hours",
        ),
        (
            Notice::PasswordReset {
                token: token.clone(),
            },
            "reset your password",
            Some(format!("{APP_URL}/reset-password#token={token}")),
            "30 minutes",
        ),
        (
            Notice::PasswordChanged,
            "your password was changed",
            None,
            "If it was not you",
        ),
    ];
    for (notice, subject, link, says) in cases {
        let to = recipient();
        let kind = notice.kind();
        let envelope = Envelope {
            to: to.clone(),
            notice,
        };
        mailer
            .send(&envelope, DELIVERY)
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));

        let messages = inbox(&to, 1).await;
        assert_eq!(messages.len(), 1, "{kind}: exactly one message for {to}");
        let m = &messages[0];
        assert_eq!(
            text(m, "subject"),
            format!("{PRODUCT}: {subject}"),
            "{kind}"
        );
        assert_eq!(m["from"][0]["address"], "no-reply@acme.example", "{kind}");
        let plain = text(m, "text");
        let html = text(m, "html");
        assert!(
            plain.contains(&format!("Hello from {PRODUCT},")),
            "{kind}: {plain}"
        );
        assert!(
            plain.contains(says) && html.contains(says),
            "{kind}: {plain}"
        );
        assert!(
            !plain.contains('<'),
            "{kind}: the text part is no HTML: {plain}"
        );
        assert!(html.contains("<a href="), "{kind}: {html}");
        match link {
            Some(link) => {
                assert!(plain.contains(&link), "{kind}: {plain}");
                assert!(html.contains(&format!("href=\"{link}\"")), "{kind}: {html}");
            }
            None => {
                assert!(
                    !plain.contains("token") && !html.contains("token"),
                    "{kind}"
                );
                let reset = format!("{APP_URL}/reset-password");
                assert!(plain.contains(&reset), "{kind}: {plain}");
                assert!(
                    html.contains(&format!("href=\"{reset}\"")),
                    "{kind}: {html}"
                );
            }
        }
        // MailDev's JSON leaves the MIME structure out; the raw message has it.
        let source = common::maildev_get(&format!("/api/email/{}/source", text(m, "id"))).await;
        for part in [
            "Content-Type: multipart/alternative",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Type: text/html; charset=utf-8",
        ] {
            assert!(source.contains(part), "{kind}: no {part} in {source}");
        }
    }
}

#[tokio::test]
async fn a_sealed_envelope_from_the_outbox_is_delivered_as_sealed() {
    let mailer = mailer(&common::required_env("TEST_SMTP_URL"), 3_000);
    let id = uuid::Uuid::new_v4();
    let to = recipient();
    let sealed = mailer.seal(
        id,
        &Envelope {
            to: to.clone(),
            notice: Notice::PasswordReset {
                token: "sealed-token".into(),
            },
        },
    );
    let envelope = mailer.open(id, &sealed).expect("opens in its row");
    mailer.send(&envelope, DELIVERY).await.expect("delivered");
    let messages = inbox(&to, 1).await;
    assert_eq!(messages.len(), 1);
    assert!(text(&messages[0], "text").contains("/reset-password#token=sealed-token"));
}

/// A server that accepts connections and never says a word (not even the greeting).
async fn silent_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (format!("smtp://127.0.0.1:{port}"), accepted)
}

#[tokio::test]
async fn a_server_that_never_answers_costs_no_more_than_the_deadline() {
    let (url, accepted) = silent_server().await;
    // SMTP_TIMEOUT_MS at its maximum: the deadline given to `send` is what must hold.
    let mailer = mailer(&url, 20_000);
    let deadline = Duration::from_millis(300);
    for attempt in 0..2 {
        let envelope = Envelope {
            to: recipient(),
            notice: Notice::PasswordReset {
                token: "never-sent".into(),
            },
        };
        let started = Instant::now();
        // The outer bound turns a hang into a failure instead of a stuck test.
        let result = tokio::time::timeout(
            deadline + Duration::from_secs(2),
            mailer.send(&envelope, deadline),
        )
        .await
        .unwrap_or_else(|_| panic!("attempt {attempt}: send hung past its deadline"));
        let took = started.elapsed();
        assert_eq!(result, Err(MailError::Timeout), "attempt {attempt}");
        assert!(
            took < deadline + Duration::from_secs(2),
            "attempt {attempt} took {took:?}"
        );
        let shown = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            !shown.contains("127.0.0.1") && !shown.contains("never-sent"),
            "{shown}"
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "each attempt connected");
}

/// A TCP proxy to MailDev's SMTP port that can do to its connections what a network or a
/// restarting server does: cut them all at once, or hold back the server's reply to the next
/// message's final dot for a while.
struct Proxy {
    url: String,
    accepted: Arc<AtomicUsize>,
    cut: tokio::sync::watch::Sender<u64>,
    stall: Arc<std::sync::Mutex<Option<Duration>>>,
}

impl Proxy {
    async fn start(upstream: &str) -> Self {
        let upstream = url::Url::parse(upstream).expect("TEST_SMTP_URL is a URL");
        let target = format!(
            "{}:{}",
            upstream.host_str().expect("a host"),
            upstream.port().expect("a port")
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let stall = Arc::new(std::sync::Mutex::new(None));
        let (count, cuts, stalls) = (Arc::clone(&accepted), cut.clone(), Arc::clone(&stall));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let mut cut = cuts.subscribe();
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let stalls = Arc::clone(&stalls);
                tokio::spawn(async move {
                    tokio::select! {
                        () = pump(client, server, stalls) => {}
                        _ = cut.changed() => {}
                    }
                    // Both sockets drop here: the client sees the connection closed.
                });
            }
        });
        Self {
            url: format!("smtp://127.0.0.1:{port}"),
            accepted,
            cut,
            stall,
        }
    }

    fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// The server's reply to the next message's end of data reaches the client `by` late.
    fn stall_next_message(&self, by: Duration) {
        *self.stall.lock().expect("lock") = Some(by);
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn pump(
    client: TcpStream,
    server: TcpStream,
    stalls: Arc<std::sync::Mutex<Option<Duration>>>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let held_until = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let hold = Arc::clone(&held_until);
    let upstream = async move {
        let mut buf = vec![0u8; 16 * 1024];
        // The last bytes seen, so an end of data split across two reads is still found.
        let mut seen: Vec<u8> = Vec::new();
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            seen.extend_from_slice(&buf[..n]);
            // Set before the dot goes on, so the reply to it cannot slip through first.
            if seen.windows(5).any(|w| w == b"\r\n.\r\n")
                && let Some(by) = stalls.lock().expect("lock").take()
            {
                *hold.lock().expect("lock") = Some(Instant::now() + by);
            }
            seen.drain(..seen.len().saturating_sub(4));
            if server_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let downstream = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let until = held_until.lock().expect("lock").take();
            if let Some(until) = until {
                tokio::time::sleep_until(until.into()).await;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

#[tokio::test]
async fn a_pooled_connection_that_died_is_replaced_without_a_failed_delivery() {
    let proxy = Proxy::start(&common::required_env("TEST_SMTP_URL")).await;
    let mailer = mailer(&proxy.url, 3_000);
    let to = recipient();
    let envelope = |n: u32| Envelope {
        to: to.clone(),
        notice: Notice::VerifyEmail {
            token: format!("token-{n}"),
        },
    };

    mailer.send(&envelope(1), DELIVERY).await.expect("first");
    // Let lettre park the connection, then see it reused.
    tokio::time::sleep(Duration::from_millis(100)).await;
    mailer.send(&envelope(2), DELIVERY).await.expect("second");
    assert_eq!(proxy.accepted(), 1, "the pool reuses its connection");

    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.cut_all();
    tokio::time::sleep(Duration::from_millis(100)).await;
    mailer
        .send(&envelope(3), DELIVERY)
        .await
        .expect("the dead pooled connection is checked and replaced, not used");
    assert_eq!(proxy.accepted(), 2, "a fresh connection");

    let messages = inbox(&to, 3).await;
    assert_eq!(messages.len(), 3, "each message once");
}

#[tokio::test]
async fn a_send_cut_off_mid_reply_leaves_no_connection_owing_a_reply_in_the_pool() {
    let proxy = Proxy::start(&common::required_env("TEST_SMTP_URL")).await;
    let mailer = mailer(&proxy.url, 3_000);
    let to = recipient();
    let envelope = |n: u32| Envelope {
        to: to.clone(),
        notice: Notice::VerifyEmail {
            token: format!("token-{n}"),
        },
    };
    // lettre parks a connection in a task of its own after the send: give it that moment, then
    // see the connection reused.
    mailer.send(&envelope(1), DELIVERY).await.expect("first");
    tokio::time::sleep(Duration::from_millis(100)).await;
    mailer.send(&envelope(2), DELIVERY).await.expect("second");
    assert_eq!(proxy.accepted(), 1, "the pool reuses its connection");
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The server takes message 3 but its "250" comes after the deadline: the connection
    // then owes a reply, and a pool that kept it would read that stale reply as the answer
    // to its next command.
    let stall = Duration::from_millis(1_500);
    proxy.stall_next_message(stall);
    let deadline = Duration::from_millis(300);
    let started = Instant::now();
    let cut_off = tokio::time::timeout(
        deadline + Duration::from_secs(2),
        mailer.send(&envelope(3), deadline),
    )
    .await
    .expect("send returned within its deadline");
    assert_eq!(cut_off, Err(MailError::Timeout));
    assert!(started.elapsed() < deadline + Duration::from_secs(2));
    tokio::time::sleep(stall + Duration::from_millis(200)).await;

    mailer.send(&envelope(4), DELIVERY).await.expect("fourth");
    assert_eq!(
        proxy.accepted(),
        2,
        "the cut-off connection was not reused: a fresh one carried message 4"
    );
    // SMTP is at-least-once: message 3 reached the server even though its sender gave up.
    assert_eq!(inbox(&to, 4).await.len(), 4);
}
