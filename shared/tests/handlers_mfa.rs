//! The two-step login handlers (API.md "Two-step login (TOTP)") called with real requests
//! against a real Postgres: the bodies and problem documents, `mfa_required`'s members and
//! challenge, and bad input on every route answered with its problem and changing nothing.

mod common;

use common::{STRONG_PASSWORD, fresh_state, psql, unique_email};
use lambda_http::{Body, Request, Response, http};
use serde_json::{Value, json};
use shared::{AppState, http::handlers, totp};

fn request(method: &str, path: &str, bearer: Option<&str>, body: &str) -> Request {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(format!("https://api.example.com{path}"))
        .header("content-type", "application/json");
    if let Some(token) = bearer {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(Body::from(body.to_owned())).expect("request")
}

fn body(response: &Response<Body>) -> Value {
    serde_json::from_slice(response.body().as_ref()).unwrap_or(Value::Null)
}

fn header<'a>(response: &'a Response<Body>, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

fn assert_problem(response: &Response<Body>, status: u16, code: &str) -> Value {
    let problem = body(response);
    assert_eq!(
        (response.status().as_u16(), problem["code"].as_str()),
        (status, Some(code)),
        "{problem}"
    );
    assert_eq!(
        header(response, "content-type"),
        Some("application/problem+json")
    );
    problem
}

async fn call(state: &AppState, req: Request) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let handled = if path == "/auth/login" || path == "/auth/mfa/verify" {
        handlers::login(state, req).await
    } else {
        handlers::mfa(state, req).await
    };
    handled.expect("infallible")
}

/// A signed-in account with TOTP on: its address, access token and secret.
async fn with_totp(state: &AppState) -> (String, String, totp::TotpSecret) {
    let email = unique_email();
    let credentials = json!({ "email": email, "password": STRONG_PASSWORD }).to_string();
    let registered =
        handlers::register(state, request("POST", "/auth/register", None, &credentials))
            .await
            .expect("infallible");
    assert_eq!(registered.status(), 201);
    let login = call(state, request("POST", "/auth/login", None, &credentials)).await;
    let access = body(&login)["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let password = json!({ "password": STRONG_PASSWORD }).to_string();
    let enrolled = call(
        state,
        request("POST", "/auth/mfa/totp", Some(&access), &password),
    )
    .await;
    assert_eq!(enrolled.status(), 200);
    assert_eq!(header(&enrolled, "cache-control"), Some("no-store"));
    let enrolment = body(&enrolled);
    let keys: Vec<&String> = enrolment.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["otpauth_uri", "qr_code", "secret"]);
    let secret = totp::from_base32(enrolment["secret"].as_str().expect("secret")).expect("b32");
    let code = totp::code_at_step(&secret, totp::step_of(chrono::Utc::now().timestamp()));
    let confirmed = call(
        state,
        request(
            "POST",
            "/auth/mfa/totp/confirm",
            Some(&access),
            &json!({ "code": code }).to_string(),
        ),
    )
    .await;
    assert_eq!(confirmed.status(), 200, "{}", body(&confirmed));
    let codes = body(&confirmed)["recovery_codes"]
        .as_array()
        .expect("codes")
        .len();
    assert_eq!(codes, 10);
    (email, access, secret)
}

/// Every row of the two-step login tables and the users, as text: what bad input must leave.
async fn snapshot(state: &AppState) -> Vec<String> {
    let client = psql(state).await;
    let mut rows = Vec::new();
    for table in [
        "users",
        "user_totp",
        "recovery_codes",
        "mfa_challenges",
        "sessions",
    ] {
        let row = client
            .query_one(
                &format!("SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {table} t"),
                &[],
            )
            .await
            .expect("snapshot");
        rows.push(format!(
            "{table}: {} {}",
            row.get::<_, i64>(0),
            row.get::<_, String>(1)
        ));
    }
    rows
}

#[tokio::test]
async fn login_with_totp_on_is_a_401_with_the_token_and_methods_of_the_second_step() {
    let state = fresh_state(&[]).await;
    let (email, _, _) = with_totp(&state).await;
    let credentials = json!({ "email": email, "password": STRONG_PASSWORD }).to_string();
    let response = call(&state, request("POST", "/auth/login", None, &credentials)).await;
    let problem = assert_problem(&response, 401, "mfa_required");
    assert_eq!(
        header(&response, "www-authenticate"),
        Some(r#"Bearer realm="auth""#)
    );
    assert_eq!(problem["methods"], json!(["totp", "recovery_code"]));
    let token = problem["mfa_token"].as_str().expect("mfa_token");
    assert_eq!(token.len(), 43, "256 bits, base64url: {token}");
    assert!(problem.get("access_token").is_none());
    // A wrong password is still the plain 401, without the members.
    let wrong = json!({ "email": email, "password": "not the password at all 1" }).to_string();
    let response = call(&state, request("POST", "/auth/login", None, &wrong)).await;
    let problem = assert_problem(&response, 401, "invalid_credentials");
    assert!(problem.get("mfa_token").is_none() && problem.get("methods").is_none());
}

#[tokio::test]
async fn bad_input_on_every_route_is_its_problem_and_changes_nothing() {
    let state = fresh_state(&[]).await;
    let (email, access, secret) = with_totp(&state).await;
    let credentials = json!({ "email": email, "password": STRONG_PASSWORD }).to_string();
    let challenged = call(&state, request("POST", "/auth/login", None, &credentials)).await;
    let mfa_token = body(&challenged)["mfa_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let before = snapshot(&state).await;

    let verify = |body: Value| request("POST", "/auth/mfa/verify", None, &body.to_string());
    let cases: Vec<(Request, u16, &str)> = vec![
        (verify(json!({ "code": "123456" })), 400, "invalid_request"),
        (
            verify(json!({ "mfa_token": mfa_token })),
            400,
            "invalid_request",
        ),
        (
            verify(json!({ "mfa_token": mfa_token, "code": "1234567" })),
            400,
            "invalid_request",
        ),
        (
            verify(json!({ "mfa_token": mfa_token, "code": "12345" })),
            400,
            "invalid_request",
        ),
        (
            verify(json!({ "mfa_token": mfa_token, "code": "12a456" })),
            400,
            "invalid_request",
        ),
        (
            verify(json!({ "mfa_token": mfa_token, "code": 123456 })),
            400,
            "invalid_request",
        ),
        (
            verify(json!({ "mfa_token": mfa_token, "code": "١٢٣٤٥٦" })),
            400,
            "invalid_request",
        ),
        (
            verify(
                json!({ "mfa_token": mfa_token, "code": "123456", "recovery_code": "AAAA-AAAA-AAAA-AAAA" }),
            ),
            400,
            "invalid_request",
        ),
        (
            verify(json!({ "mfa_token": mfa_token, "recovery_code": "AAAA" })),
            400,
            "invalid_request",
        ),
        (
            verify(json!({ "mfa_token": 7, "code": "123456" })),
            400,
            "invalid_request",
        ),
        (
            request("POST", "/auth/mfa/verify", None, "[1]"),
            400,
            "invalid_json",
        ),
        (
            request(
                "POST",
                "/auth/mfa/totp/confirm",
                Some(&access),
                &json!({}).to_string(),
            ),
            400,
            "invalid_request",
        ),
        (
            request(
                "POST",
                "/auth/mfa/totp/confirm",
                Some(&access),
                &json!({ "code": "0000000" }).to_string(),
            ),
            400,
            "invalid_request",
        ),
        (
            request(
                "POST",
                "/auth/mfa/totp",
                Some(&access),
                &json!({ "password": 12 }).to_string(),
            ),
            400,
            "invalid_request",
        ),
        (
            request(
                "DELETE",
                "/auth/mfa/totp",
                Some(&access),
                &json!({}).to_string(),
            ),
            400,
            "invalid_request",
        ),
        (
            request(
                "DELETE",
                "/auth/mfa/totp",
                Some(&access),
                &json!({ "code": "123456", "password": STRONG_PASSWORD }).to_string(),
            ),
            400,
            "invalid_request",
        ),
        (
            request(
                "DELETE",
                "/auth/mfa/totp",
                Some(&access),
                &json!({ "code": "abcdef" }).to_string(),
            ),
            400,
            "invalid_request",
        ),
        // The tokens cannot pass for each other.
        (
            verify(json!({ "mfa_token": access, "code": "123456" })),
            401,
            "invalid_token",
        ),
        (
            request(
                "POST",
                "/auth/mfa/totp",
                Some(&mfa_token),
                &json!({ "password": STRONG_PASSWORD }).to_string(),
            ),
            401,
            "invalid_token",
        ),
        (
            request(
                "DELETE",
                "/auth/mfa/totp",
                None,
                &json!({ "password": STRONG_PASSWORD }).to_string(),
            ),
            401,
            "missing_token",
        ),
    ];
    for (req, status, code) in cases {
        let described = format!("{} {}", req.method(), req.uri().path());
        let response = call(&state, req).await;
        let problem = assert_problem(&response, status, code);
        assert!(
            !problem.to_string().contains(&mfa_token) && !problem.to_string().contains(&access),
            "{described}: no token is echoed: {problem}"
        );
    }
    let me = handlers::me(
        &state,
        http::Request::builder()
            .uri("https://api.example.com/auth/me")
            .header("authorization", format!("Bearer {mfa_token}"))
            .body(Body::Empty)
            .expect("request"),
    )
    .await
    .expect("infallible");
    assert_problem(&me, 401, "invalid_token");
    assert_eq!(snapshot(&state).await, before, "bad input changed nothing");

    // The mfa_token still works: no bad input above counted against it.
    let step = totp::step_of(chrono::Utc::now().timestamp()) + 1;
    let code = totp::code_at_step(&secret, step);
    let response = call(
        &state,
        verify(json!({ "mfa_token": mfa_token, "code": code })),
    )
    .await;
    assert_eq!(response.status(), 200, "{}", body(&response));
    assert_eq!(header(&response, "cache-control"), Some("no-store"));
    let tokens = body(&response);
    for member in ["access_token", "token_type", "expires_in", "refresh_token"] {
        assert!(tokens.get(member).is_some(), "{member}: {tokens}");
    }
}

#[tokio::test]
async fn a_wrong_code_is_invalid_code_with_a_challenge_naming_no_error() {
    let state = fresh_state(&[]).await;
    let (_, access, secret) = with_totp(&state).await;
    let now = totp::step_of(chrono::Utc::now().timestamp());
    let window: Vec<String> = (now - 1..=now + 2)
        .map(|s| totp::code_at_step(&secret, s))
        .collect();
    let wrong = (0..5)
        .map(|n| format!("{n:06}"))
        .find(|c| !window.contains(c))
        .expect("a wrong code");
    let response = call(
        &state,
        request(
            "DELETE",
            "/auth/mfa/totp",
            Some(&access),
            &json!({ "code": wrong }).to_string(),
        ),
    )
    .await;
    assert_problem(&response, 401, "invalid_code");
    assert_eq!(
        header(&response, "www-authenticate"),
        Some(r#"Bearer realm="auth""#)
    );
    let response = call(
        &state,
        request(
            "POST",
            "/auth/mfa/totp",
            Some(&access),
            &json!({ "password": STRONG_PASSWORD }).to_string(),
        ),
    )
    .await;
    assert_problem(&response, 409, "mfa_already_enabled");
}
