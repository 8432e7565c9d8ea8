//! The account routes' handlers (API.md "Mail", "Account"), called directly with a
//! `lambda_http::Request` built here as API Gateway hands it on (with a source address),
//! against a real Postgres: every bad input gets its documented problem document and leaves
//! the database as it was. Mail goes to an SMTP port where nothing listens, so the link tokens
//! stay sealed in the outbox, where a test opens them as only the mailbox could.

mod common;

use common::{CLOSED_SMTP, STRONG_PASSWORD, fresh_state, newest_link, psql, unique_email};
use lambda_http::{
    Body, Request, RequestExt, Response,
    aws_lambda_events::apigw::ApiGatewayV2httpRequestContext,
    http::{self, HeaderMap},
    request::RequestContext,
};
use serde_json::{Value, json};
use shared::{AppState, http::handlers};
use tokio_postgres::Client;

/// Every request comes from here: the per-address window of the routes without a bearer
/// token counts it in `ip_requests`.
const SOURCE_IP: &str = "203.0.113.40";
const NEW_PASSWORD: &str = "tangerine submarine orchestra 71";

/// The account routes, each with the function that serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Verify,
    Resend,
    Forgot,
    Reset,
    Change,
    DeleteMe,
    ListSessions,
    RevokeSession,
}

use Route::*;

impl Route {
    fn method(self) -> &'static str {
        match self {
            DeleteMe | RevokeSession => "DELETE",
            ListSessions => "GET",
            _ => "POST",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Verify => "/auth/email/verify",
            Resend => "/auth/email/verify/resend",
            Forgot => "/auth/password/forgot",
            Reset => "/auth/password/reset",
            Change => "/auth/password/change",
            DeleteMe => "/auth/me",
            ListSessions => "/auth/sessions",
            // The router hands `/auth/sessions/{id}` on as the request path with the id in it.
            RevokeSession => "/auth/sessions/00000000-0000-4000-8000-000000000000",
        }
    }

    /// The string fields of its JSON body, in the order the handler reads them.
    fn fields(self) -> &'static [&'static str] {
        match self {
            Verify => &["token"],
            Resend | Forgot => &["email"],
            Reset => &["token", "password"],
            Change => &["current_password", "new_password"],
            DeleteMe => &["password"],
            ListSessions | RevokeSession => &[],
        }
    }

    async fn call(self, state: &AppState, req: Request) -> Response<Body> {
        let response = match self {
            Verify | Resend => handlers::email(state, req).await,
            Forgot | Reset | Change => handlers::password(state, req).await,
            DeleteMe => handlers::me(state, req).await,
            ListSessions | RevokeSession => handlers::sessions(state, req).await,
        };
        response.expect("the handlers never fail at the Lambda level")
    }
}

/// A request as API Gateway passes it to the function: from [`SOURCE_IP`], with a user agent.
fn request(
    method: &str,
    path: &str,
    content_type: Option<&str>,
    authorization: Option<&str>,
    body: impl Into<Body>,
) -> Request {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(format!("https://api.example.com{path}"))
        .header("user-agent", "handler-tests");
    if let Some(ct) = content_type {
        builder = builder.header("content-type", ct);
    }
    if let Some(value) = authorization {
        builder = builder.header("authorization", value);
    }
    let mut context = ApiGatewayV2httpRequestContext::default();
    context.http.method = method.parse().expect("a method");
    context.http.path = Some(path.to_owned());
    context.http.source_ip = Some(SOURCE_IP.to_owned());
    builder
        .body(body.into())
        .expect("request")
        .with_request_context(RequestContext::ApiGatewayV2(context))
}

fn json_request(route: Route, authorization: Option<&str>, body: &Value) -> Request {
    request(
        route.method(),
        route.path(),
        Some("application/json"),
        authorization,
        body.to_string(),
    )
}

fn header<'a>(response: &'a Response<Body>, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

fn body(response: &Response<Body>) -> Value {
    serde_json::from_slice(response.body().as_ref()).expect("JSON body")
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        503 => "Service Unavailable",
        other => panic!("no problem status {other} expected here"),
    }
}

fn assert_problem(response: &Response<Body>, status: u16, code: &str, what: &str) -> Value {
    assert_eq!(
        response.status().as_u16(),
        status,
        "{what}: {}",
        String::from_utf8_lossy(response.body().as_ref())
    );
    assert_eq!(
        header(response, "content-type"),
        Some("application/problem+json"),
        "{what}"
    );
    assert!(
        matches!(response.body(), Body::Text(_)),
        "{what}: not Body::Text"
    );
    let problem = body(response);
    assert_eq!(problem["code"], code, "{what}: {problem}");
    assert_eq!(problem["status"], status, "{what}");
    assert_eq!(problem["type"], "about:blank", "{what}");
    assert_eq!(problem["title"], reason_phrase(status), "{what}");
    assert!(
        problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{what}: no detail"
    );
    problem
}

/// The tables a refused request must leave as they were: each one's row count and a digest of
/// all its rows, so an update shows as well as an insert or a delete. The audit table, where
/// refusals are written, and the address window (counted separately) are left out.
const TABLES: [&str; 7] = [
    "users",
    "sessions",
    "refresh_tokens",
    "link_tokens",
    "outbox",
    "mail_requests",
    "login_throttle",
];

async fn snapshot(client: &Client) -> Vec<(String, i64, String)> {
    let mut tables = Vec::new();
    for table in TABLES {
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') \
                     FROM {table} t"
                ),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
        tables.push((table.to_owned(), row.get(0), row.get(1)));
    }
    tables
}

async fn ip_requests(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM ip_requests", &[])
        .await
        .expect("ip_requests")
        .get(0)
}

/// Mail on, every delivery failing at once (messages stay sealed), forgot and resend answering
/// after 50 ms, and an address window no test here fills.
async fn mail_on() -> AppState {
    fresh_state(&[
        ("SMTP_URL", CLOSED_SMTP),
        ("SMTP_TIMEOUT_MS", "1000"),
        ("MAIL_ANSWER_MS", "50"),
        ("IP_RATE_LIMIT_PER_MINUTE", "100000"),
    ])
    .await
}

async fn register(state: &AppState, email: &str) -> Value {
    let response = handlers::register(
        state,
        request(
            "POST",
            "/auth/register",
            Some("application/json"),
            None,
            json!({"email": email, "password": STRONG_PASSWORD}).to_string(),
        ),
    )
    .await
    .expect("infallible");
    assert_eq!(response.status(), 201);
    body(&response)
}

/// Logs in: the access and the refresh token.
async fn login(state: &AppState, email: &str) -> (String, String) {
    let response = handlers::login(
        state,
        request(
            "POST",
            "/auth/login",
            Some("application/json"),
            None,
            json!({"email": email, "password": STRONG_PASSWORD}).to_string(),
        ),
    )
    .await
    .expect("infallible");
    assert_eq!(response.status(), 200);
    let tokens = body(&response);
    let field = |name: &str| tokens[name].as_str().expect("a token").to_owned();
    (field("access_token"), field("refresh_token"))
}

/// The link token of the newest sealed message of `kind` to `email`.
async fn link(state: &AppState, email: &str, kind: &str) -> String {
    let mailer = state.mailer.as_ref().expect("mail is on");
    newest_link(&psql(state).await, mailer, email, kind).await
}

/// Well-typed values for a route's fields: the body every malformed variant is made from.
fn good_body(route: Route) -> serde_json::Map<String, Value> {
    route
        .fields()
        .iter()
        .map(|field| {
            let value = match *field {
                "token" => "a-token-that-is-never-looked-up",
                "email" => "someone@example.com",
                "new_password" => NEW_PASSWORD,
                _ => STRONG_PASSWORD,
            };
            ((*field).to_owned(), Value::from(value))
        })
        .collect()
}

/// Every way a body can be wrong, each with the problem it gets: (what, content type, body,
/// status, code).
fn malformed_bodies(route: Route) -> Vec<(String, Option<&'static str>, Body, u16, &'static str)> {
    let good = Value::Object(good_body(route)).to_string();
    let mut cases: Vec<(String, Option<&'static str>, Body, u16, &'static str)> = vec![
        (
            "no content type".into(),
            None,
            good.clone().into(),
            415,
            "unsupported_media_type",
        ),
        (
            "text/plain".into(),
            Some("text/plain"),
            good.clone().into(),
            415,
            "unsupported_media_type",
        ),
        (
            "a form".into(),
            Some("application/x-www-form-urlencoded"),
            "email=someone%40example.com".into(),
            415,
            "unsupported_media_type",
        ),
        (
            "JSON in another charset".into(),
            Some("application/json; charset=iso-8859-1"),
            good.clone().into(),
            415,
            "unsupported_media_type",
        ),
        (
            "a body over 16 KiB".into(),
            Some("application/json"),
            {
                let mut padded = good_body(route);
                padded.insert("pad".into(), Value::from("x".repeat(16 * 1024)));
                Value::Object(padded).to_string().into()
            },
            413,
            "payload_too_large",
        ),
        (
            "a JSON array".into(),
            Some("application/json"),
            format!("[{good}]").into(),
            400,
            "invalid_json",
        ),
        (
            "a JSON string".into(),
            Some("application/json"),
            "\"token\"".into(),
            400,
            "invalid_json",
        ),
        (
            "truncated JSON".into(),
            Some("application/json"),
            good[..good.len() - 1].to_owned().into(),
            400,
            "invalid_json",
        ),
        (
            "an empty body".into(),
            Some("application/json"),
            Body::Empty,
            400,
            "invalid_json",
        ),
        (
            "invalid UTF-8".into(),
            Some("application/json"),
            Body::Binary(b"{\"x\":\"\xff\"}".to_vec()),
            400,
            "invalid_json",
        ),
        (
            "an empty object".into(),
            Some("application/json"),
            "{}".into(),
            400,
            "invalid_request",
        ),
    ];
    for field in route.fields() {
        let mut missing = good_body(route);
        missing.remove(*field);
        cases.push((
            format!("`{field}` missing"),
            Some("application/json"),
            Value::Object(missing).to_string().into(),
            400,
            "invalid_request",
        ));
        for wrong in [json!(7), json!(null), json!(["x"]), json!({"x": "y"})] {
            let mut mistyped = good_body(route);
            mistyped.insert((*field).to_owned(), wrong.clone());
            cases.push((
                format!("`{field}` as {wrong}"),
                Some("application/json"),
                Value::Object(mistyped).to_string().into(),
                400,
                "invalid_request",
            ));
        }
    }
    cases
}

#[tokio::test]
async fn malformed_bodies_get_their_problem_and_change_nothing() {
    let state = mail_on().await;
    let db = psql(&state).await;
    let email = unique_email();
    register(&state, &email).await;
    let (access, _) = login(&state, &email).await;
    let bearer = format!("Bearer {access}");

    for route in [Verify, Resend, Forgot, Reset, Change, DeleteMe] {
        for (what, content_type, request_body, status, code) in malformed_bodies(route) {
            let what = format!("{} {}: {what}", route.method(), route.path());
            let authorization = matches!(route, Change | DeleteMe).then_some(bearer.as_str());
            let before = snapshot(&db).await;
            let counted = ip_requests(&db).await;
            let response = route
                .call(
                    &state,
                    request(
                        route.method(),
                        route.path(),
                        content_type,
                        authorization,
                        request_body,
                    ),
                )
                .await;
            let problem = assert_problem(&response, status, code, &what);
            if code == "invalid_request" {
                // The detail names the field to fix.
                let detail = problem["detail"].as_str().unwrap_or_default();
                assert!(
                    route
                        .fields()
                        .iter()
                        .any(|f| detail.contains(&format!("`{f}`"))),
                    "{what}: {detail}"
                );
            }
            assert_eq!(snapshot(&db).await, before, "{what}");
            // The address window is counted by the statement that does a route's work: a body
            // refused before any database work is not counted (and costs no round trip).
            assert_eq!(ip_requests(&db).await, counted, "{what}");
        }
    }
}

#[tokio::test]
async fn the_bearer_routes_refuse_a_missing_or_garbage_token_and_change_nothing() {
    let state = mail_on().await;
    let db = psql(&state).await;
    let email = unique_email();
    register(&state, &email).await;
    let (access, refresh) = login(&state, &email).await;
    // The caller's own session: a revoke the right token would be allowed to make.
    let listed = ListSessions
        .call(
            &state,
            request(
                "GET",
                "/auth/sessions",
                None,
                Some(&format!("Bearer {access}")),
                Body::Empty,
            ),
        )
        .await;
    assert_eq!(listed.status(), 200);
    let own_session = body(&listed)["sessions"][0]["id"]
        .as_str()
        .expect("a session id")
        .to_owned();
    let own_session_path = format!("/auth/sessions/{own_session}");

    // One character of the signature changed (not its last, whose low bits may be unused).
    let at = access.len() - 10;
    let flipped = if &access[at..=at] == "A" { "B" } else { "A" };
    let tampered = format!("{}{flipped}{}", &access[..at], &access[at + 1..]);
    let missing = ["(none)", "Basic dXNlcjpwYXNz", "Token abc"];
    let garbage = [
        "Bearer ".to_owned(),
        "Bearer not.a.jwt".to_owned(),
        format!("Bearer {refresh}"),
        format!("Bearer {tampered}"),
        format!("Bearer {access}x"),
    ];
    // Bodies that the right token would get through: nothing but the token stops them.
    let cases: [(Route, &str, Value); 4] = [
        (
            Change,
            Change.path(),
            json!({"current_password": STRONG_PASSWORD, "new_password": NEW_PASSWORD}),
        ),
        (
            DeleteMe,
            DeleteMe.path(),
            json!({"password": STRONG_PASSWORD}),
        ),
        (ListSessions, ListSessions.path(), Value::Null),
        (RevokeSession, own_session_path.as_str(), Value::Null),
    ];
    for (route, path, payload) in &cases {
        let send = |authorization: Option<&str>| {
            let (content_type, request_body) = if payload.is_null() {
                (None, Body::Empty)
            } else {
                (Some("application/json"), Body::from(payload.to_string()))
            };
            request(
                route.method(),
                path,
                content_type,
                authorization,
                request_body,
            )
        };
        let before = snapshot(&db).await;
        let counted = ip_requests(&db).await;
        for value in missing {
            let what = format!("{} {path} with Authorization {value}", route.method());
            let authorization = (value != "(none)").then_some(value);
            let response = route.call(&state, send(authorization)).await;
            assert_problem(&response, 401, "missing_token", &what);
            assert_eq!(
                header(&response, "www-authenticate"),
                Some(r#"Bearer realm="auth""#),
                "{what}"
            );
        }
        // A request without a token is not counted by the address window...
        assert_eq!(ip_requests(&db).await, counted, "{route:?}");
        for value in &garbage {
            let what = format!("{} {path} with a garbage bearer", route.method());
            let response = route.call(&state, send(Some(value))).await;
            assert_problem(&response, 401, "invalid_token", &what);
            assert!(
                header(&response, "www-authenticate")
                    .is_some_and(|c| c.starts_with(r#"Bearer realm="auth""#)
                        && c.contains(r#"error="invalid_token""#)),
                "{what}: {:?}",
                header(&response, "www-authenticate")
            );
        }
        assert_eq!(snapshot(&db).await, before, "{route:?}");
        // ...a refused token is, once each, so a flood of garbage tokens meets a 429.
        assert_eq!(
            ip_requests(&db).await - counted,
            i64::try_from(garbage.len()).expect("a few"),
            "{route:?}"
        );
    }
    // The token itself was never at fault: the session still lists.
    let response = ListSessions
        .call(
            &state,
            request(
                "GET",
                "/auth/sessions",
                None,
                Some(&format!("Bearer {access}")),
                Body::Empty,
            ),
        )
        .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn hostile_link_tokens_are_link_invalid_and_change_nothing() {
    let state = mail_on().await;
    let db = psql(&state).await;
    let email = unique_email();
    register(&state, &email).await;
    let verify_token = link(&state, &email, "verify_email").await;
    let forgot = Forgot
        .call(&state, json_request(Forgot, None, &json!({"email": email})))
        .await;
    assert_eq!(forgot.status(), 202);
    let reset_token = link(&state, &email, "password_reset").await;
    let (_, refresh) = login(&state, &email).await;

    // 32 bytes in standard base64 (with `+`, `/` and padding), not base64url.
    let standard_base64 = "+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/8=";
    let hostile = |other_purpose: &str| {
        vec![
            ("empty", String::new()),
            ("10 KB", "A".repeat(10 * 1024)),
            ("not base64url", "not a token, not base64url!".to_owned()),
            ("standard base64", standard_base64.to_owned()),
            (
                "well-formed but unknown",
                "q".repeat(42) + "A", // 43 characters: 32 bytes of base64url
            ),
            ("a refresh token", refresh.clone()),
            ("another purpose's token", other_purpose.to_owned()),
        ]
    };
    let cases: Vec<(Route, &str, String, Value)> = hostile(&reset_token)
        .into_iter()
        .map(|(what, token)| (Verify, what, token.clone(), json!({"token": token})))
        .chain(hostile(&verify_token).into_iter().map(|(what, token)| {
            (
                Reset,
                what,
                token.clone(),
                json!({"token": token, "password": NEW_PASSWORD}),
            )
        }))
        .collect();
    for (route, what, _, payload) in &cases {
        let what = format!("{} with {what}", route.path());
        let before = snapshot(&db).await;
        let counted = ip_requests(&db).await;
        let response = route
            .call(&state, json_request(*route, None, payload))
            .await;
        assert_problem(&response, 400, "link_invalid", &what);
        assert_eq!(snapshot(&db).await, before, "{what}");
        assert_eq!(ip_requests(&db).await - counted, 1, "{what}");
    }
    // None of them used up the real links.
    let response = Verify
        .call(
            &state,
            json_request(Verify, None, &json!({"token": verify_token})),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(body(&response)["email_verified"], true);
    let response = Reset
        .call(
            &state,
            json_request(
                Reset,
                None,
                &json!({"token": reset_token, "password": NEW_PASSWORD}),
            ),
        )
        .await;
    assert_eq!(response.status(), 204);
}

#[tokio::test]
async fn a_session_id_that_is_not_one_of_the_callers_is_404_and_changes_nothing() {
    let state = mail_on().await;
    let db = psql(&state).await;
    let (mine, theirs) = (unique_email(), unique_email());
    register(&state, &mine).await;
    register(&state, &theirs).await;
    let (access, refresh) = login(&state, &mine).await;
    let (their_access, _) = login(&state, &theirs).await;
    let listed = ListSessions
        .call(
            &state,
            request(
                "GET",
                "/auth/sessions",
                None,
                Some(&format!("Bearer {their_access}")),
                Body::Empty,
            ),
        )
        .await;
    let their_session = body(&listed)["sessions"][0]["id"]
        .as_str()
        .expect("a session id")
        .to_owned();
    let bearer = format!("Bearer {access}");
    for (what, id) in [
        ("not a uuid", "not-a-uuid".to_owned()),
        ("the nil uuid", uuid::Uuid::nil().to_string()),
        ("an unknown uuid", uuid::Uuid::new_v4().to_string()),
        ("another user's session", their_session),
        ("a refresh token", refresh),
        ("a long id", "9".repeat(2048)),
    ] {
        let before = snapshot(&db).await;
        let counted = ip_requests(&db).await;
        let response = RevokeSession
            .call(
                &state,
                request(
                    "DELETE",
                    &format!("/auth/sessions/{id}"),
                    None,
                    Some(&bearer),
                    Body::Empty,
                ),
            )
            .await;
        assert_problem(&response, 404, "session_not_found", what);
        assert_eq!(snapshot(&db).await, before, "{what}");
        assert_eq!(ip_requests(&db).await, counted, "{what}");
    }
}

#[tokio::test]
async fn with_mail_off_forgot_and_resend_are_503_and_register_queues_nothing() {
    let state = fresh_state(&[]).await;
    let db = psql(&state).await;
    let email = unique_email();
    let user = register(&state, &email).await;
    assert_eq!(user["email_verified"], false);
    for table in ["outbox", "link_tokens"] {
        let rows: i64 = db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(rows, 0, "{table} after a registration with mail off");
    }
    for route in [Forgot, Resend] {
        for address in [email.as_str(), "nobody-here@example.com", "not an email"] {
            let what = format!("{} for {address}", route.path());
            let before = snapshot(&db).await;
            let response = route
                .call(
                    &state,
                    json_request(route, None, &json!({"email": address})),
                )
                .await;
            assert_problem(&response, 503, "mail_unavailable", &what);
            // Not a fault that passes: there is no moment to come back at.
            assert_eq!(header(&response, "retry-after"), None, "{what}");
            assert_eq!(snapshot(&db).await, before, "{what}");
        }
    }
}

#[tokio::test]
async fn forgot_and_resend_answer_the_same_bytes_and_headers_for_every_address() {
    let state = mail_on().await;
    let db = psql(&state).await;
    let [unverified, verified, unverified_too, verified_too] = [(); 4].map(|()| unique_email());
    for email in [&unverified, &verified, &unverified_too, &verified_too] {
        register(&state, email).await;
    }
    for email in [&verified, &verified_too] {
        let token = link(&state, email, "verify_email").await;
        let response = Verify
            .call(&state, json_request(Verify, None, &json!({"token": token})))
            .await;
        assert_eq!(response.status(), 200);
    }

    // Each address asks once: forgot and resend share one per-recipient limit.
    let asks = [
        (Forgot, unverified.clone()),
        (Forgot, verified.clone()),
        (Forgot, unique_email()),
        (Forgot, "  NOT an email @@ ".to_owned()),
        (Resend, unverified_too.clone()),
        (Resend, format!(" {} ", verified_too.to_uppercase())),
        (Resend, unique_email()),
        (Resend, "not-an-email".to_owned()),
    ];
    let mut answers: Vec<(String, HeaderMap, Vec<u8>)> = Vec::new();
    for (route, address) in asks {
        let response = route
            .call(
                &state,
                json_request(route, None, &json!({"email": address})),
            )
            .await;
        let what = format!("{} for {address:?}", route.path());
        assert_eq!(response.status(), 202, "{what}");
        assert!(matches!(response.body(), Body::Text(_)), "{what}");
        assert_eq!(response.body().as_ref(), b"{}", "{what}");
        assert_eq!(header(&response, "content-type"), Some("application/json"));
        assert_eq!(header(&response, "cache-control"), Some("no-store"));
        answers.push((
            what,
            response.headers().clone(),
            response.body().as_ref().to_vec(),
        ));
    }
    let (first, headers, bytes) = &answers[0];
    for (what, other_headers, other_bytes) in &answers[1..] {
        assert_eq!(other_headers, headers, "{what} vs {first}");
        assert_eq!(other_bytes, bytes, "{what} vs {first}");
    }
    // Only the qualifying accounts got a link: a reset for each forgot account, and a new
    // verification link for the one unverified account that asked for it.
    let kinds: Vec<(String, i64)> = db
        .query(
            "SELECT kind, count(*) FROM outbox GROUP BY kind ORDER BY kind",
            &[],
        )
        .await
        .expect("outbox")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        kinds,
        [
            ("password_reset".to_owned(), 2),
            // Four registrations and one resend.
            ("verify_email".to_owned(), 5),
        ]
    );
}
