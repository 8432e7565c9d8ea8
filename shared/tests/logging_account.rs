//! What the account routes and the mailer log, with every level on (TRACE): one event per
//! outcome, and never a password, a link token, an access or refresh token, a hash, the SMTP
//! URL or its credentials, the data key, nor a whole email address or its local part. Every flow
//! runs through its handler against a real Postgres and a real MailDev (`TEST_SMTP_URL`,
//! `TEST_MAILDEV_URL`; `make test` starts one), failures included, and the link tokens are read
//! back from what MailDev received or from the outbox, as only the mailbox could.

mod common;

use base64::Engine as _;
use common::{
    Captured, DATA_KEY, SECRET, STRONG_PASSWORD, fresh_state, hand_clock, maildev_get, psql,
    required_env, stored_hash, unique_email,
};
use lambda_http::{
    Body, Request, RequestExt, Response, aws_lambda_events::apigw::ApiGatewayV2httpRequestContext,
    http, request::RequestContext,
};
use serde_json::{Value, json};
use shared::{
    AppState,
    http::{handlers, schedule},
    mail::{Notice, outbox},
};
use std::time::{Duration, Instant};

const NEW_PASSWORD: &str = "tangerine submarine orchestra 71";
const NEWER_PASSWORD: &str = "velvet lighthouse marmalade 4096";
const WRONG_PASSWORD: &str = "not the password at all 1";
/// Long enough, and still weak: zxcvbn scores a repeat far below 3.
const WEAK_PASSWORD: &str = "zzzzzzzzzzzzzzzz";
const SMTP_USER: &str = "someuser";
const SMTP_PASSWORD: &str = "smtp-secret-pass";
/// Generous: a hang is what it guards against, not speed.
const MAILDEV_WAIT: Duration = Duration::from_secs(10);

/// A mail server that takes credentials but is not there (nothing listens on port 1).
fn failing_smtp_url() -> String {
    format!("smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:1")
}

fn request(method: &str, path: &str, authorization: Option<&str>, body: Option<Value>) -> Request {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(format!("https://api.example.com{path}"))
        .header("user-agent", "logging-tests");
    if let Some(value) = authorization {
        builder = builder.header("authorization", value);
    }
    let body = match body {
        Some(value) => {
            builder = builder.header("content-type", "application/json");
            Body::from(value.to_string())
        }
        None => Body::Empty,
    };
    let mut context = ApiGatewayV2httpRequestContext::default();
    context.http.method = method.parse().expect("a method");
    context.http.path = Some(path.to_owned());
    context.http.source_ip = Some("198.51.100.23".to_owned());
    builder
        .body(body)
        .expect("request")
        .with_request_context(RequestContext::ApiGatewayV2(context))
}

fn post(path: &str, authorization: Option<&str>, body: Value) -> Request {
    request("POST", path, authorization, Some(body))
}

fn body(response: &Response<Body>) -> Value {
    serde_json::from_slice(response.body().as_ref()).unwrap_or(Value::Null)
}

/// Asserts the status, and the problem code when there is one.
fn expect(response: &Response<Body>, status: u16, code: Option<&str>, what: &str) {
    assert_eq!(
        response.status().as_u16(),
        status,
        "{what}: {}",
        String::from_utf8_lossy(response.body().as_ref())
    );
    if let Some(code) = code {
        assert_eq!(body(response)["code"], code, "{what}");
    }
}

fn ok<T>(result: Result<T, lambda_http::Error>) -> T {
    result.expect("the handlers never fail at the Lambda level")
}

async fn register(state: &AppState, email: &str) -> uuid::Uuid {
    let response = ok(handlers::register(
        state,
        post(
            "/auth/register",
            None,
            json!({"email": email, "password": STRONG_PASSWORD}),
        ),
    )
    .await);
    expect(&response, 201, None, "register");
    body(&response)["id"]
        .as_str()
        .and_then(|id| uuid::Uuid::parse_str(id).ok())
        .expect("the new user's id")
}

/// Logs in: the access and the refresh token.
async fn login(state: &AppState, email: &str, password: &str) -> (String, String) {
    let response = ok(handlers::login(
        state,
        post(
            "/auth/login",
            None,
            json!({"email": email, "password": password}),
        ),
    )
    .await);
    expect(&response, 200, None, "login");
    let tokens = body(&response);
    let field = |name: &str| tokens[name].as_str().expect("a token").to_owned();
    (field("access_token"), field("refresh_token"))
}

/// The link tokens in a message text: what follows each `/{page}#token=`.
fn tokens_in(text: &str, page: &str) -> Vec<String> {
    let marker = format!("/{page}#token=");
    text.match_indices(&marker)
        .map(|(at, _)| {
            text[at + marker.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect()
        })
        .collect()
}

/// Every link token for `page` (`verify-email`, `reset-password`) that reached `email`:
/// delivered to MailDev, or still sealed in the outbox.
async fn link_tokens(state: &AppState, email: &str, page: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let all: Value = serde_json::from_str(&maildev_get("/api/email").await).expect("JSON");
    for message in all.as_array().expect("a list of messages") {
        let to_them = message["to"]
            .as_array()
            .is_some_and(|to| to.iter().any(|t| t["address"] == email));
        if to_them {
            for part in ["text", "html"] {
                tokens.extend(tokens_in(message[part].as_str().unwrap_or_default(), page));
            }
        }
    }
    let mailer = state.mailer.as_ref().expect("mail is on");
    for envelope in common::sealed_mail(&psql(state).await, mailer, email).await {
        match (envelope.notice, page) {
            (Notice::VerifyEmail { token }, "verify-email")
            | (Notice::PasswordReset { token }, "reset-password") => tokens.push(token),
            _ => {}
        }
    }
    tokens.sort();
    tokens.dedup();
    tokens
}

/// The one link token for `page` that reached `email`, waiting (bounded) for MailDev to show
/// a message the request delivered.
async fn the_link(state: &AppState, email: &str, page: &str) -> String {
    let started = Instant::now();
    loop {
        let mut tokens = link_tokens(state, email, page).await;
        if tokens.len() == 1 {
            return tokens.remove(0);
        }
        assert!(
            tokens.is_empty() && started.elapsed() < MAILDEV_WAIT,
            "{} {page} tokens for one address",
            tokens.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The log's events: every line is one JSON object.
fn events(log: &str) -> Vec<Value> {
    log.lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
        })
        .collect()
}

/// How many events named `event` have every field in `fields` as given.
fn count(events: &[Value], event: &str, fields: &[(&str, Value)]) -> usize {
    events
        .iter()
        .filter(|e| {
            e["fields"]["event"] == event && fields.iter().all(|(k, v)| e["fields"][*k] == *v)
        })
        .count()
}

/// Random tokens and digests are looked for piecewise too: a cut-off token is still most of a
/// secret.
const TOKEN_PIECE: usize = 12;

/// Fails naming the first secret the log holds.
fn assert_holds_none(log: &str, secrets: &[(String, String)]) {
    for (what, secret) in secrets {
        assert!(!secret.is_empty(), "no value for {what}");
        assert!(
            !log.contains(secret.as_str()),
            "the log holds the {what} ({secret}):\n{log}"
        );
        if what.contains("token") || what.contains("hash") {
            // The random part: an access token's signature, a PHC string's digest.
            let random = secret.rsplit(['.', '$']).next().unwrap_or(secret);
            for piece in random.as_bytes().windows(TOKEN_PIECE) {
                let piece = std::str::from_utf8(piece).expect("base64url is ASCII");
                assert!(
                    !log.contains(piece),
                    "the log holds a piece of the {what} ({piece}):\n{log}"
                );
            }
        }
    }
    assert!(!log.contains("$argon2"), "the log holds a hash:\n{log}");
}

/// Secrets every state of these tests holds: the signing secret, the data key, the database
/// password.
fn state_secrets(state: &AppState) -> Vec<(String, String)> {
    let mut secrets = vec![
        ("JWT secret".to_owned(), SECRET.to_owned()),
        ("DATA_ENCRYPTION_KEY".to_owned(), DATA_KEY.to_owned()),
        (
            "DATA_ENCRYPTION_KEY's bytes".to_owned(),
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(DATA_KEY)
                    .expect("base64"),
            )
            .expect("the test key's bytes are text"),
        ),
    ];
    if let Some(password) = common::database_url(state).password() {
        secrets.push(("database password".to_owned(), password.to_owned()));
    }
    secrets
}

fn address_secrets(what: &str, email: &str) -> Vec<(String, String)> {
    let local = email.split('@').next().expect("a local part").to_owned();
    vec![
        (format!("{what}'s email address"), email.to_owned()),
        (format!("{what}'s local part"), local),
    ]
}

#[tokio::test]
async fn the_account_flows_log_each_outcome_and_no_secret() {
    let captured = Captured::default();
    let _guard = captured.install(Some("TRACE"), None);
    let smtp = required_env("TEST_SMTP_URL");
    required_env("TEST_MAILDEV_URL");
    let settings = [
        ("SMTP_URL", smtp.as_str()),
        // Deliveries to MailDev finish well within these; the deadlines are for hangs.
        ("SMTP_TIMEOUT_MS", "10000"),
        ("MAIL_ANSWER_MS", "1000"),
    ];
    let state = fresh_state(&settings).await;
    let (ann, bob) = (unique_email(), unique_email());
    let unknown = unique_email();
    let malformed = "malformed-secretlocal at example.com";
    let mut secrets = state_secrets(&state);
    secrets.push(("SMTP URL".to_owned(), smtp.clone()));
    for (what, password) in [
        ("password", STRONG_PASSWORD),
        ("new password", NEW_PASSWORD),
        ("newer password", NEWER_PASSWORD),
        ("wrong password", WRONG_PASSWORD),
        ("weak password", WEAK_PASSWORD),
    ] {
        secrets.push((what.to_owned(), password.to_owned()));
    }
    secrets.extend(address_secrets("Ann", &ann));
    secrets.extend(address_secrets("Bob", &bob));
    secrets.extend(address_secrets("the unknown address", &unknown));
    secrets.push(("malformed address".to_owned(), malformed.to_owned()));
    secrets.push((
        "malformed address's start".to_owned(),
        "secretlocal".to_owned(),
    ));

    // Register: the verification mail goes out with it.
    let ann_id = register(&state, &ann).await;
    let bob_id = register(&state, &bob).await;
    for id in [ann_id, bob_id] {
        secrets.push((
            "registration hash".to_owned(),
            stored_hash(&state, id).await,
        ));
    }
    let ann_verify = the_link(&state, &ann, "verify-email").await;
    let bob_verify = the_link(&state, &bob, "verify-email").await;

    // Verify: good, used, malformed, expired (to a clock past the link's lifetime).
    let verify = |token: &str| post("/auth/email/verify", None, json!({"token": token}));
    let response = ok(handlers::email(&state, verify(&ann_verify)).await);
    expect(&response, 200, None, "verify");
    let response = ok(handlers::email(&state, verify(&ann_verify)).await);
    expect(&response, 400, Some("link_invalid"), "verify again");
    let response = ok(handlers::email(&state, verify("not-a-link-token")).await);
    expect(
        &response,
        400,
        Some("link_invalid"),
        "verify a malformed token",
    );
    let url = common::database_url(&state).to_string();
    let mut later = AppState::new(common::config(&url, &settings)).expect("state");
    let clock = hand_clock(&mut later);
    common::advance(
        &clock,
        chrono::Duration::from_std(later.config.mail.verify_ttl).expect("a lifetime")
            + chrono::Duration::seconds(1),
    );
    let response = ok(handlers::email(&later, verify(&bob_verify)).await);
    expect(
        &response,
        400,
        Some("link_expired"),
        "verify an expired link",
    );

    // Resend (Bob is still unverified), forgot for an account, an unknown and a malformed
    // address: each person asks once, since both share one per-recipient limit.
    let ask = |path: &str, email: &str| post(path, None, json!({"email": email}));
    let response = ok(handlers::email(&state, ask("/auth/email/verify/resend", &bob)).await);
    expect(&response, 202, None, "resend");
    for email in [ann.as_str(), unknown.as_str(), malformed] {
        let response = ok(handlers::password(&state, ask("/auth/password/forgot", email)).await);
        expect(&response, 202, None, "forgot");
    }
    let ann_reset = the_link(&state, &ann, "reset-password").await;
    for (what, token) in [
        ("Ann's verification link token", &ann_verify),
        ("Bob's first verification link token", &bob_verify),
        ("Ann's reset link token", &ann_reset),
    ] {
        secrets.push((what.to_owned(), token.clone()));
    }

    // Reset: weak, then good.
    let reset = |password: &str| {
        post(
            "/auth/password/reset",
            None,
            json!({"token": ann_reset, "password": password}),
        )
    };
    let response = ok(handlers::password(&state, reset(WEAK_PASSWORD)).await);
    expect(
        &response,
        422,
        Some("weak_password"),
        "reset to a weak password",
    );
    let response = ok(handlers::password(&state, reset(NEW_PASSWORD)).await);
    expect(&response, 204, None, "reset");
    secrets.push(("reset hash".to_owned(), stored_hash(&state, ann_id).await));

    // Two sessions; the list, and one of them revoked by the other.
    let (access, refresh) = login(&state, &ann, NEW_PASSWORD).await;
    let (other_access, other_refresh) = login(&state, &ann, NEW_PASSWORD).await;
    for (what, token) in [
        ("access token", &access),
        ("refresh token", &refresh),
        ("other access token", &other_access),
        ("other refresh token", &other_refresh),
    ] {
        secrets.push((what.to_owned(), token.clone()));
    }
    let bearer = format!("Bearer {access}");
    let response = ok(handlers::sessions(
        &state,
        request("GET", "/auth/sessions", Some(&bearer), None),
    )
    .await);
    expect(&response, 200, None, "sessions");
    let listed = body(&response);
    let other_session = listed["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .find(|s| s["current"] == false)
        .and_then(|s| s["id"].as_str())
        .expect("the other session")
        .to_owned();
    let revoke = || {
        request(
            "DELETE",
            &format!("/auth/sessions/{other_session}"),
            Some(&bearer),
            None,
        )
    };
    let response = ok(handlers::sessions(&state, revoke()).await);
    expect(&response, 204, None, "revoke");
    let response = ok(handlers::sessions(&state, revoke()).await);
    expect(&response, 404, Some("session_not_found"), "revoke again");

    // Change: wrong, weak, good.
    let change = |current: &str, new: &str| {
        post(
            "/auth/password/change",
            Some(&bearer),
            json!({"current_password": current, "new_password": new}),
        )
    };
    let response = ok(handlers::password(&state, change(WRONG_PASSWORD, NEWER_PASSWORD)).await);
    expect(&response, 403, Some("wrong_password"), "change, wrong");
    let response = ok(handlers::password(&state, change(NEW_PASSWORD, WEAK_PASSWORD)).await);
    expect(&response, 422, Some("weak_password"), "change, weak");
    let response = ok(handlers::password(&state, change(NEW_PASSWORD, NEWER_PASSWORD)).await);
    expect(&response, 204, None, "change");
    secrets.push(("changed hash".to_owned(), stored_hash(&state, ann_id).await));

    // Delete: wrong, good.
    let delete = |password: &str| {
        request(
            "DELETE",
            "/auth/me",
            Some(&bearer),
            Some(json!({"password": password})),
        )
    };
    let response = ok(handlers::me(&state, delete(WRONG_PASSWORD)).await);
    expect(&response, 403, Some("wrong_password"), "delete, wrong");
    let response = ok(handlers::me(&state, delete(NEWER_PASSWORD)).await);
    expect(&response, 204, None, "delete");

    // Every link token that was ever made for a mailbox (Bob's resend and Ann's notices
    // included), read now that every message is delivered or queued.
    for (who, email) in [("Ann", &ann), ("Bob", &bob)] {
        for page in ["verify-email", "reset-password"] {
            for token in link_tokens(&state, email, page).await {
                secrets.push((format!("{who}'s {page} link token"), token));
            }
        }
    }
    let bob_tokens = link_tokens(&state, &bob, "verify-email").await;
    assert_eq!(bob_tokens.len(), 2, "Bob's registration and resend links");

    let log = captured.text();
    assert_holds_none(&log, &secrets);
    let events = events(&log);
    let ann_id = Value::from(ann_id.to_string());
    let bob_id = Value::from(bob_id.to_string());
    /// An event, fields it must carry, and how many times it appears.
    type Expected<'a> = (&'a str, Vec<(&'a str, Value)>, usize);
    let expected: Vec<Expected> = vec![
        ("user.registered", vec![], 2),
        ("email.verified", vec![("user_id", ann_id.clone())], 1),
        (
            "email.verify_failed",
            vec![("reason", "link_invalid".into())],
            1,
        ),
        (
            "email.verify_failed",
            vec![("reason", "malformed".into())],
            1,
        ),
        (
            "email.verify_failed",
            vec![("reason", "link_expired".into())],
            1,
        ),
        (
            "mail.requested",
            vec![
                ("route", "email_resend".into()),
                ("user_id", bob_id.clone()),
            ],
            1,
        ),
        (
            "mail.requested",
            vec![
                ("route", "password_forgot".into()),
                ("user_id", ann_id.clone()),
            ],
            1,
        ),
        (
            "mail.requested",
            vec![
                ("route", "password_forgot".into()),
                ("account", false.into()),
            ],
            2,
        ),
        ("password.reset", vec![("user_id", ann_id.clone())], 1),
        ("login.succeeded", vec![], 2),
        (
            "session.revoked",
            vec![("session_id", other_session.clone().into())],
            1,
        ),
        (
            "session.revoke_failed",
            vec![("reason", "not_found".into())],
            1,
        ),
        (
            "password.check_failed",
            vec![
                ("route", "password_change".into()),
                ("reason", "bad_password".into()),
            ],
            1,
        ),
        ("password.changed", vec![("user_id", ann_id.clone())], 1),
        (
            "password.check_failed",
            vec![
                ("route", "me_delete".into()),
                ("reason", "bad_password".into()),
            ],
            1,
        ),
        ("user.deleted", vec![("user_id", ann_id.clone())], 1),
    ];
    for (event, fields, n) in &expected {
        assert_eq!(
            count(&events, event, fields),
            *n,
            "{event} {fields:?} in:\n{log}"
        );
    }
    // A requested mail is delivered by its request until the answer is due: one `mail.sent`,
    // or one `mail.deferred` when it is left to the mailer.
    let requested: Vec<Value> = events
        .iter()
        .filter(|e| e["fields"]["event"] == "mail.requested")
        .filter_map(|e| e["fields"].get("message_id").cloned())
        .collect();
    assert_eq!(requested.len(), 2, "resend and forgot for an account");
    for id in &requested {
        assert_eq!(
            count(&events, "mail.sent", &[("message_id", id.clone())])
                + count(&events, "mail.deferred", &[("message_id", id.clone())]),
            1,
            "the requested message {id} is sent or deferred once:\n{log}"
        );
    }
    // Every other message is sent by its request, which waits for it up to SMTP_TIMEOUT_MS:
    // the two registrations' and the two "password changed" notices (reset, change).
    let sent_unrequested = |kind: &str| {
        events
            .iter()
            .filter(|e| e["fields"]["event"] == "mail.sent" && e["fields"]["kind"] == kind)
            .filter(|e| !requested.contains(&e["fields"]["message_id"]))
            .count()
    };
    assert_eq!(sent_unrequested("verify_email"), 2, "{log}");
    assert_eq!(sent_unrequested("password_changed"), 2, "{log}");
    assert_eq!(sent_unrequested("password_reset"), 0, "{log}");
}

#[tokio::test]
async fn the_mailer_and_a_failing_mail_server_log_each_outcome_and_no_secret() {
    let captured = Captured::default();
    let _guard = captured.install(Some("TRACE"), None);
    let smtp = required_env("TEST_SMTP_URL");
    required_env("TEST_MAILDEV_URL");
    let failing_url = failing_smtp_url();
    // Requests whose delivery fails at once: their messages wait in the outbox.
    let failing = fresh_state(&[
        ("SMTP_URL", failing_url.as_str()),
        // The lease and the first backoff are twice this: long enough that a run never
        // meets again a message it has just deferred.
        ("SMTP_TIMEOUT_MS", "5000"),
        ("MAIL_ANSWER_MS", "50"),
    ])
    .await;
    let url = common::database_url(&failing).to_string();
    let delivering = AppState::new(common::config(
        &url,
        &[("SMTP_URL", smtp.as_str()), ("SMTP_TIMEOUT_MS", "10000")],
    ))
    .expect("state");
    let db = psql(&failing).await;

    let (cat, dan) = (unique_email(), unique_email());
    let mut secrets = state_secrets(&failing);
    for (what, value) in [
        ("failing SMTP URL", failing_url.clone()),
        ("SMTP user", SMTP_USER.to_owned()),
        ("SMTP password", SMTP_PASSWORD.to_owned()),
        ("SMTP URL", smtp.clone()),
        ("password", STRONG_PASSWORD.to_owned()),
    ] {
        secrets.push((what.to_owned(), value));
    }
    secrets.extend(address_secrets("Cat", &cat));
    secrets.extend(address_secrets("Dan", &dan));

    let cat_id = register(&failing, &cat).await;
    let dan_id = register(&failing, &dan).await;
    let response = ok(handlers::password(
        &failing,
        post("/auth/password/forgot", None, json!({"email": cat})),
    )
    .await);
    expect(&response, 202, None, "forgot");
    for id in [cat_id, dan_id] {
        secrets.push(("hash".to_owned(), stored_hash(&failing, id).await));
    }
    // Read while still sealed: delivery deletes the bodies.
    for (who, email) in [("Cat", &cat), ("Dan", &dan)] {
        for page in ["verify-email", "reset-password"] {
            for token in link_tokens(&failing, email, page).await {
                secrets.push((format!("{who}'s {page} link token"), token));
            }
        }
    }
    assert_eq!(
        secrets
            .iter()
            .filter(|(w, _)| w.contains("link token"))
            .count(),
        3
    );

    // The mailer against the server that is not there: each message deferred.
    let done = schedule::mail(&failing).await.expect("a mailer run");
    assert_eq!(done, json!({"sent": 0, "deferred": 3, "failed": 0}));

    // Cat's two messages due again, for the mailer that reaches MailDev; Dan's kept back.
    db.execute(
        "UPDATE outbox SET next_attempt_at = CASE WHEN user_id = $1 \
             THEN now() - interval '1 second' ELSE now() + interval '1 hour' END",
        &[&cat_id],
    )
    .await
    .expect("due");
    let done = schedule::mail(&delivering).await.expect("a mailer run");
    assert_eq!(done, json!({"sent": 2, "deferred": 0, "failed": 0}));

    // Dan's message on its last attempt, against the server that is not there: failed.
    let last = i32::try_from(outbox::MAX_ATTEMPTS - 1).expect("small");
    db.execute(
        "UPDATE outbox SET next_attempt_at = now() - interval '1 second', attempts = $2 \
         WHERE user_id = $1",
        &[&dan_id, &last],
    )
    .await
    .expect("due");
    let done = schedule::mail(&failing).await.expect("a mailer run");
    assert_eq!(done, json!({"sent": 0, "deferred": 0, "failed": 1}));

    let log = captured.text();
    assert_holds_none(&log, &secrets);
    let events = events(&log);
    for (event, fields, n) in [
        ("user.registered", vec![], 2),
        (
            "mail.requested",
            vec![
                ("route", "password_forgot".into()),
                ("user_id", cat_id.to_string().into()),
            ],
            1,
        ),
        // Three by the requests themselves, three by the first mailer run.
        ("mail.deferred", vec![], 6),
        ("mail.deferred", vec![("attempts", 2.into())], 3),
        ("mail.sent", vec![("attempts", 3.into())], 2),
        (
            "mail.failed",
            vec![("attempts", outbox::MAX_ATTEMPTS.into())],
            1,
        ),
        ("mailer.finished", vec![], 3),
    ] {
        assert_eq!(
            count(&events, event, &fields),
            n,
            "{event} {fields:?} in:\n{log}"
        );
    }
    // The failures say why in fixed words, never the server's address or reply.
    for e in events.iter().filter(|e| {
        ["mail.deferred", "mail.failed"]
            .contains(&e["fields"]["event"].as_str().unwrap_or_default())
    }) {
        let error = e["fields"]["error"].as_str().unwrap_or_default();
        assert!(!error.contains("127.0.0.1"), "{e}");
    }
}

/// Fails when `code` stands alone anywhere in the log (six digits inside a longer run of
/// letters and digits, such as an id, are not the code).
fn assert_code_absent(log: &str, what: &str, code: &str) {
    let bytes = log.as_bytes();
    for (at, _) in log.match_indices(code) {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(at + code.len()).copied();
        let alone = !before.is_some_and(|b| b.is_ascii_alphanumeric())
            && !after.is_some_and(|b| b.is_ascii_alphanumeric());
        assert!(!alone, "the log holds the {what} ({code}):\n{log}");
    }
}

#[tokio::test]
async fn the_two_step_login_logs_each_outcome_and_no_secret() {
    let captured = Captured::default();
    let _guard = captured.install(Some("TRACE"), None);
    let smtp = required_env("TEST_SMTP_URL");
    let settings = [("SMTP_URL", smtp.as_str()), ("SMTP_TIMEOUT_MS", "10000")];
    let state = fresh_state(&settings).await;
    let ann = unique_email();
    let mut secrets = state_secrets(&state);
    secrets.push(("password".to_owned(), STRONG_PASSWORD.to_owned()));
    secrets.push(("wrong password".to_owned(), WRONG_PASSWORD.to_owned()));
    secrets.extend(address_secrets("Ann", &ann));
    let ann_id = register(&state, &ann).await;
    let (access, refresh) = login(&state, &ann, STRONG_PASSWORD).await;
    secrets.push(("access token".to_owned(), access.clone()));
    secrets.push(("refresh token".to_owned(), refresh));
    let bearer = format!("Bearer {access}");
    let mfa = |req| handlers::mfa(&state, req);

    let enrol = |password: &str| {
        post(
            "/auth/mfa/totp",
            Some(&bearer),
            json!({ "password": password }),
        )
    };
    let response = ok(mfa(enrol(WRONG_PASSWORD)).await);
    expect(
        &response,
        403,
        Some("wrong_password"),
        "enrol, wrong password",
    );
    let response = ok(mfa(enrol(STRONG_PASSWORD)).await);
    expect(&response, 200, None, "enrol");
    let enrolment = body(&response);
    let text = |name: &str| enrolment[name].as_str().expect("a member").to_owned();
    let secret = shared::totp::from_base32(&text("secret")).expect("base32");
    secrets.push(("TOTP secret token".to_owned(), text("secret")));
    secrets.push(("otpauth URI".to_owned(), text("otpauth_uri")));
    secrets.push(("QR code token".to_owned(), text("qr_code")));
    let step = shared::totp::step_of(chrono::Utc::now().timestamp());
    let code_at = |step| shared::totp::code_at_step(&secret, step);
    let window: Vec<String> = (step - 1..=step + 2).map(code_at).collect();
    let wrong = (0..10)
        .map(|n| format!("{n:06}"))
        .find(|c| !window.contains(c))
        .expect("a wrong code");

    let confirm = |code: &str| {
        post(
            "/auth/mfa/totp/confirm",
            Some(&bearer),
            json!({ "code": code }),
        )
    };
    let response = ok(mfa(confirm(&wrong)).await);
    expect(&response, 401, Some("invalid_code"), "confirm, wrong code");
    let response = ok(mfa(confirm(&code_at(step))).await);
    expect(&response, 200, None, "confirm");
    let recovery: Vec<String> = body(&response)["recovery_codes"]
        .as_array()
        .expect("codes")
        .iter()
        .map(|c| c.as_str().expect("a code").to_owned())
        .collect();
    for code in &recovery {
        secrets.push(("recovery code token".to_owned(), code.clone()));
        secrets.push(("recovery code token, raw".to_owned(), code.replace('-', "")));
    }

    // Login, its second step wrong, right, and by a recovery code.
    let challenge = || async {
        let response = ok(handlers::login(
            &state,
            post(
                "/auth/login",
                None,
                json!({"email": ann, "password": STRONG_PASSWORD}),
            ),
        )
        .await);
        expect(&response, 401, Some("mfa_required"), "login with TOTP on");
        body(&response)["mfa_token"]
            .as_str()
            .expect("a token")
            .to_owned()
    };
    let verify = |token: &str, factor: Value| {
        let mut body = factor;
        body["mfa_token"] = token.into();
        post("/auth/mfa/verify", None, body)
    };
    let first = challenge().await;
    let response = ok(handlers::login(&state, verify(&first, json!({ "code": wrong }))).await);
    expect(&response, 401, Some("invalid_code"), "verify, wrong code");
    let response =
        ok(handlers::login(&state, verify(&first, json!({ "code": code_at(step + 1) }))).await);
    expect(&response, 200, None, "verify");
    let tokens = body(&response);
    let second = challenge().await;
    let response = ok(handlers::login(
        &state,
        verify(&second, json!({ "recovery_code": recovery[0] })),
    )
    .await);
    expect(&response, 200, None, "verify with a recovery code");
    let response = ok(handlers::login(
        &state,
        verify(&second, json!({ "code": code_at(step + 2) })),
    )
    .await);
    expect(&response, 401, Some("invalid_token"), "a used mfa_token");
    for (what, token) in [
        ("mfa_token", first),
        ("second mfa_token", second),
        (
            "second-step access token",
            tokens["access_token"].as_str().expect("t").to_owned(),
        ),
        (
            "second-step refresh token",
            tokens["refresh_token"].as_str().expect("t").to_owned(),
        ),
    ] {
        secrets.push((what.to_owned(), token));
    }

    // Off with the password (every step a code could name now was used).
    let off = post(
        "/auth/mfa/totp",
        Some(&bearer),
        json!({ "password": STRONG_PASSWORD }),
    );
    let off = {
        let (mut parts, body) = off.into_parts();
        parts.method = http::Method::DELETE;
        Request::from_parts(parts, body)
    };
    let response = ok(mfa(off).await);
    expect(&response, 204, None, "off with the password");

    let log = captured.text();
    assert_holds_none(&log, &secrets);
    for code in window.iter().chain([&wrong]) {
        assert_code_absent(&log, "TOTP code", code);
    }
    let left: i64 = psql(&state)
        .await
        .query_one(
            "SELECT count(*) FROM user_totp WHERE user_id = $1",
            &[&ann_id],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "off: the secret is gone");
    let events = events(&log);
    let user = || ("user_id", Value::from(ann_id.to_string()));
    for (event, fields, n) in [
        (
            "password.check_failed",
            vec![user(), ("reason", "bad_password".into())],
            1,
        ),
        ("mfa.enrolment_started", vec![user()], 1),
        (
            "mfa.challenge_failed",
            vec![user(), ("reason", "bad_code".into())],
            1,
        ),
        ("mfa.enrolled", vec![user()], 1),
        ("mfa.challenge_started", vec![user()], 2),
        (
            "mfa.challenge_failed",
            vec![user(), ("failures", 1.into())],
            1,
        ),
        ("login.succeeded", vec![user(), ("aal", "aal2".into())], 2),
        (
            "mfa.challenge_failed",
            vec![("reason", "unknown_token".into())],
            1,
        ),
        ("mfa.disabled", vec![user()], 1),
    ] {
        assert_eq!(
            count(&events, event, &fields),
            n,
            "{event} {fields:?} in:\n{log}"
        );
    }
}
