//! The Lambda handlers, called directly with a `lambda_http::Request` built here, against a
//! real Postgres: status codes, headers and bodies as docs/api.md gives them.

mod common;

use common::{STRONG_PASSWORD, fresh_state, unique_email};
use lambda_http::{Body, Request, Response, http};
use serde_json::{Value, json};
use shared::{AppState, http::handlers};

fn post(path: &str, content_type: Option<&str>, body: impl Into<Body>) -> Request {
    let mut builder = http::Request::builder()
        .method("POST")
        .uri(format!("https://api.example.com{path}"));
    if let Some(ct) = content_type {
        builder = builder.header("content-type", ct);
    }
    builder.body(body.into()).expect("request")
}

fn credentials(email: &str, password: &str) -> Request {
    post(
        "/auth/register",
        Some("application/json"),
        json!({"email": email, "password": password}).to_string(),
    )
}

fn me(authorization: Option<&str>) -> Request {
    let mut builder = http::Request::builder()
        .method("GET")
        .uri("https://api.example.com/auth/me");
    if let Some(value) = authorization {
        builder = builder.header("authorization", value);
    }
    builder.body(Body::Empty).expect("request")
}

fn header<'a>(response: &'a Response<Body>, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

fn body(response: &Response<Body>) -> Value {
    serde_json::from_slice(response.body().as_ref()).expect("JSON body")
}

/// lambda_http sends a `Body::Binary` to API Gateway with `isBase64Encoded: true`; docs/api.md
/// says every JSON and problem body goes as text.
fn assert_text(response: &Response<Body>) {
    assert!(
        matches!(response.body(), Body::Text(_)),
        "{} body is not Body::Text: {:?}",
        response.status(),
        response.body()
    );
}

/// The RFC 9110 reason phrase, which RFC 9457 makes the title of an `about:blank` problem.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        other => panic!("no problem status {other} in the contract"),
    }
}

fn assert_problem(response: &Response<Body>, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "{:?}", body(response));
    assert_eq!(
        header(response, "content-type"),
        Some("application/problem+json")
    );
    let problem = body(response);
    assert_eq!(problem["code"], code);
    assert_eq!(problem["status"], status);
    assert_eq!(problem["type"], "about:blank");
    assert_eq!(problem["title"], reason_phrase(status));
    assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
    assert_text(response);
    problem
}

async fn registered(state: &AppState) -> (String, Value) {
    let email = unique_email();
    let response = handlers::register(state, credentials(&email, STRONG_PASSWORD))
        .await
        .expect("infallible");
    assert_eq!(response.status(), 201);
    (email, body(&response))
}

async fn token_for(state: &AppState, email: &str) -> String {
    let response = handlers::login(state, credentials(email, STRONG_PASSWORD))
        .await
        .expect("infallible");
    assert_eq!(response.status(), 200);
    body(&response)["access_token"]
        .as_str()
        .expect("token")
        .to_owned()
}

#[tokio::test]
async fn register_login_and_me_answer_as_the_contract_says() {
    let state = fresh_state(&[]).await;
    let email = unique_email();
    let response = handlers::register(
        &state,
        credentials(&format!(" {} ", email.to_uppercase()), STRONG_PASSWORD),
    )
    .await
    .expect("infallible");
    assert_eq!(response.status(), 201);
    assert_eq!(header(&response, "content-type"), Some("application/json"));
    let user = body(&response);
    assert_eq!(user.as_object().map(|o| o.len()), Some(6));
    assert_eq!(user["email"], email.as_str());
    assert_eq!(user["is_active"], true);
    assert_eq!(user["email_verified"], false);
    assert_eq!(user["mfa_enabled"], false);
    assert!(uuid::Uuid::parse_str(user["id"].as_str().expect("id")).is_ok());
    assert!(
        chrono::DateTime::parse_from_rfc3339(user["created_at"].as_str().expect("created_at"))
            .is_ok()
    );

    let response = handlers::login(&state, credentials(&email, STRONG_PASSWORD))
        .await
        .expect("infallible");
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "cache-control"), Some("no-store"));
    let token = body(&response);
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["expires_in"], 900);

    let bearer = format!("Bearer {}", token["access_token"].as_str().expect("token"));
    let response = handlers::me(&state, me(Some(&bearer)))
        .await
        .expect("infallible");
    assert_eq!(response.status(), 200);
    assert_eq!(body(&response), user);
}

#[tokio::test]
async fn json_and_problem_bodies_are_sent_as_text() {
    let state = fresh_state(&[]).await;
    let (email, _) = registered(&state).await;
    let responses = [
        handlers::register(&state, credentials(&unique_email(), STRONG_PASSWORD))
            .await
            .expect("infallible"),
        handlers::login(&state, credentials(&email, STRONG_PASSWORD))
            .await
            .expect("infallible"),
        handlers::login(&state, credentials(&email, "a wrong password!!"))
            .await
            .expect("infallible"),
        handlers::register(&state, post("/auth/register", None, "{}"))
            .await
            .expect("infallible"),
        handlers::me(&state, me(None)).await.expect("infallible"),
    ];
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses, [201, 200, 401, 415, 401]);
    for response in &responses {
        assert_text(response);
    }
}

#[tokio::test]
async fn malformed_requests_get_400_413_415_and_change_nothing() {
    let state = fresh_state(&[]).await;
    let email = unique_email();
    let ok_body = json!({"email": email, "password": STRONG_PASSWORD}).to_string();
    let cases: Vec<(Request, u16, &str)> = vec![
        (
            post("/auth/register", None, ok_body.clone()),
            415,
            "unsupported_media_type",
        ),
        (
            post("/auth/register", Some("text/plain"), ok_body.clone()),
            415,
            "unsupported_media_type",
        ),
        (
            post("/auth/register", Some("application/json"), "[1]"),
            400,
            "invalid_json",
        ),
        (
            post(
                "/auth/register",
                Some("application/json"),
                Body::Binary(b"{\"email\":\"\xff\"}".to_vec()),
            ),
            400,
            "invalid_json",
        ),
        (
            post(
                "/auth/register",
                Some("application/json"),
                json!({"email": email}).to_string(),
            ),
            400,
            "invalid_request",
        ),
        (
            post(
                "/auth/register",
                Some("application/json"),
                json!({"email": email, "password": 7}).to_string(),
            ),
            400,
            "invalid_request",
        ),
        (
            post(
                "/auth/register",
                Some("application/json"),
                format!("{{\"pad\":\"{}\"}}", "x".repeat(17_000)),
            ),
            413,
            "payload_too_large",
        ),
    ];
    for (request, status, code) in cases {
        let response = handlers::register(&state, request)
            .await
            .expect("infallible");
        assert_problem(&response, status, code);
    }
    // The valid body still registers: nothing above created the account.
    let response = handlers::register(
        &state,
        post(
            "/auth/register",
            Some("application/json; charset=utf-8"),
            ok_body,
        ),
    )
    .await
    .expect("infallible");
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn registration_rules_map_to_422_and_409() {
    let state = fresh_state(&[]).await;
    let (email, _) = registered(&state).await;
    for (e, p, status, code) in [
        ("not-an-email", STRONG_PASSWORD, 422, "invalid_email"),
        (&*unique_email(), "short", 422, "invalid_password"),
        (&*unique_email(), "password1234", 422, "weak_password"),
        (&*email.to_uppercase(), STRONG_PASSWORD, 409, "email_taken"),
    ] {
        let response = handlers::register(&state, credentials(e, p))
            .await
            .expect("infallible");
        let problem = assert_problem(&response, status, code);
        assert!(
            !problem["detail"].as_str().unwrap_or_default().contains(p),
            "password echoed"
        );
    }
}

#[tokio::test]
async fn every_failed_login_gets_the_same_bytes() {
    let state = fresh_state(&[]).await;
    let (email, _) = registered(&state).await;
    let mut bodies = Vec::new();
    for (e, p) in [
        (email.as_str(), "a wrong password!!"),
        ("nobody@example.com", STRONG_PASSWORD),
        ("malformed", "x"),
    ] {
        let response = handlers::login(&state, credentials(e, p))
            .await
            .expect("infallible");
        assert_problem(&response, 401, "invalid_credentials");
        // No bearer token was sent, so the challenge names no error (docs/api.md).
        assert_eq!(
            header(&response, "www-authenticate"),
            Some(r#"Bearer realm="auth""#)
        );
        bodies.push(response.body().as_ref().to_vec());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
}

#[tokio::test]
async fn me_refuses_missing_foreign_and_expired_tokens_with_a_bearer_challenge() {
    let state = fresh_state(&[]).await;
    let (email, _) = registered(&state).await;
    let token = token_for(&state, &email).await;

    for auth in [None, Some("Basic dXNlcjpwYXNz")] {
        let response = handlers::me(&state, me(auth)).await.expect("infallible");
        assert_problem(&response, 401, "missing_token");
        assert_eq!(
            header(&response, "www-authenticate"),
            Some(r#"Bearer realm="auth""#)
        );
    }
    let tampered = format!("Bearer {}x", token);
    for auth in ["Bearer ", "Bearer not.a.jwt", tampered.as_str()] {
        let response = handlers::me(&state, me(Some(auth)))
            .await
            .expect("infallible");
        assert_problem(&response, 401, "invalid_token");
        assert!(
            header(&response, "www-authenticate")
                .is_some_and(|c| c.contains(r#"error="invalid_token""#))
        );
    }
    let user_id = uuid::Uuid::parse_str(
        body(
            &handlers::me(&state, me(Some(&format!("Bearer {token}"))))
                .await
                .expect("ok"),
        )["id"]
            .as_str()
            .expect("id"),
    )
    .expect("uuid");
    let expired = state
        .tokens
        .issue(
            user_id,
            uuid::Uuid::new_v4(),
            false,
            shared::token::Factors::Password,
            chrono::Utc::now().timestamp() - 3_600,
        )
        .expect("issue");
    let response = handlers::me(&state, me(Some(&format!("Bearer {}", expired.token))))
        .await
        .expect("infallible");
    assert_problem(&response, 401, "token_expired");
    assert!(
        header(&response, "www-authenticate")
            .is_some_and(|c| c.contains(r#"error="invalid_token""#))
    );
}

#[tokio::test]
async fn a_disabled_account_gets_403_at_login() {
    let state = fresh_state(&[]).await;
    let (email, user) = registered(&state).await;
    let id = uuid::Uuid::parse_str(user["id"].as_str().expect("id")).expect("uuid");
    common::psql(&state)
        .await
        .execute("UPDATE users SET is_active = false WHERE id = $1", &[&id])
        .await
        .expect("q");
    let response = handlers::login(&state, credentials(&email, STRONG_PASSWORD))
        .await
        .expect("infallible");
    assert_problem(&response, 403, "account_disabled");
}

#[tokio::test]
async fn an_unreachable_database_answers_503_with_retry_after() {
    let state = AppState::new(common::config(
        "postgres://u:p@127.0.0.1:9/db?sslmode=disable",
        &[],
    ))
    .expect("state");
    let token = state
        .tokens
        .issue(
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
            false,
            shared::token::Factors::Password,
            chrono::Utc::now().timestamp(),
        )
        .expect("issue")
        .token;
    let responses = [
        handlers::register(&state, credentials(&unique_email(), STRONG_PASSWORD))
            .await
            .expect("infallible"),
        handlers::login(&state, credentials(&unique_email(), STRONG_PASSWORD))
            .await
            .expect("infallible"),
        handlers::me(&state, me(Some(&format!("Bearer {token}"))))
            .await
            .expect("infallible"),
    ];
    for response in &responses {
        let problem = assert_problem(response, 503, "service_unavailable");
        assert_eq!(header(response, "retry-after"), Some("2"));
        let detail = problem["detail"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        assert!(
            !detail.contains("postgres") && !detail.contains("connect"),
            "{detail}"
        );
    }
}
