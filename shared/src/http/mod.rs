//! The only module that knows Lambda and HTTP types: it turns a `lambda_http::Request` into
//! the plain arguments of `auth`, and results and [`AuthError`]s into responses — JSON bodies,
//! RFC 9457 problem documents, and the headers the contract asks for.

pub mod handlers;
pub mod schedule;

use crate::{AppState, config::ConfigError, error::AuthError, origin::Origin};
use lambda_http::{
    Body, Request, RequestExt, Response,
    http::{
        HeaderMap, HeaderValue, StatusCode,
        header::{
            ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
        },
    },
    request::RequestContext,
};
use serde::Serialize;
use serde_json::{Map, Value};

/// The largest request body accepted (docs/api.md: 16 KiB).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// Parses the request body as a JSON object: 413 over the size limit, 415 unless the content
/// type is `application/json` (a `charset=utf-8` parameter is fine), 400 `invalid_json` for
/// anything that is not UTF-8 JSON holding an object.
pub fn json_object(req: &Request) -> Result<Map<String, Value>, AuthError> {
    let bytes: &[u8] = req.body().as_ref();
    if bytes.len() > MAX_BODY_BYTES {
        return Err(AuthError::PayloadTooLarge);
    }
    if !is_json_content_type(req.headers()) {
        return Err(AuthError::UnsupportedMediaType);
    }
    // serde_json refuses invalid UTF-8 and lone surrogates, both `invalid_json`.
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AuthError::InvalidJson),
    }
}

fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut parts = value.split(';');
    let media_type = parts.next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return false;
    }
    parts.all(|param| match param.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        }
        Some(_) => true,
        None => param.trim().is_empty(),
    })
}

/// A required string field of a JSON object; `invalid_request` naming the field otherwise.
pub fn string_field(object: &Map<String, Value>, name: &str) -> Result<String, AuthError> {
    match object.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(AuthError::InvalidRequest(format!(
            "The field `{name}` must be a string."
        ))),
        None => Err(AuthError::InvalidRequest(format!(
            "The field `{name}` is required."
        ))),
    }
}

/// Who sent the request, for the limits and the audit: the source address API Gateway saw
/// (`requestContext.http.sourceIp`; `X-Forwarded-For` is client-controlled and never read)
/// and the user agent.
pub fn origin(req: &Request) -> Origin {
    let source_ip = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx.http.source_ip.clone(),
        _ => None,
    };
    let user_agent = req
        .headers()
        .get(lambda_http::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(512).collect());
    Origin {
        source_ip,
        user_agent,
    }
}

/// The value of a query parameter; `Err` when it is given more than once.
pub fn query_param(req: &Request, name: &str) -> Result<Option<String>, AuthError> {
    let mut values = url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned());
    let first = values.next();
    if values.next().is_some() {
        return Err(AuthError::InvalidRequest(format!(
            "The query parameter `{name}` is given twice."
        )));
    }
    Ok(first)
}

/// What the `Authorization` header holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Bearer<'a> {
    /// No header, or a scheme other than Bearer.
    Missing,
    /// A Bearer credential (possibly empty).
    Token(&'a str),
}

/// Reads `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 9110).
pub fn bearer(req: &Request) -> Bearer<'_> {
    let Some(value) = req.headers().get(AUTHORIZATION) else {
        return Bearer::Missing;
    };
    let Ok(value) = value.to_str() else {
        return Bearer::Token("");
    };
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        Bearer::Token(rest.trim())
    } else {
        Bearer::Missing
    }
}

/// A JSON response with `Cache-Control: no-store` (auth responses are personal).
///
/// JSON goes out as `Body::Text`: lambda_http marks a `Body::Binary` as `isBase64Encoded`, and
/// API Gateway would then base64-encode it on the way in and decode it on the way out for no
/// gain (docs/api.md "Requests").
pub fn json<T: Serialize>(status: u16, body: &T) -> Response<Body> {
    match serde_json::to_string(body) {
        Ok(text) => {
            let mut response = respond(status, Body::Text(text));
            response.headers_mut().insert(CONTENT_TYPE, JSON);
            response
        }
        Err(error) => {
            tracing::error!(%error, "response serialization failed");
            problem(&AuthError::Internal)
        }
    }
}

/// A 204 with no body.
pub fn no_content() -> Response<Body> {
    respond(204, Body::Empty)
}

/// A cacheable JSON document (the key set and the discovery document).
pub fn public_json(body: &str, max_age_secs: u32) -> Response<Body> {
    let mut response = Response::new(Body::Text(body.to_owned()));
    response.headers_mut().insert(CONTENT_TYPE, JSON);
    response.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_str(&format!("public, max-age={max_age_secs}")).unwrap_or(NO_STORE),
    );
    response
}

fn respond(status: u16, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(CACHE_CONTROL, NO_STORE);
    response
}

#[derive(Serialize)]
struct Problem<'a> {
    r#type: &'static str,
    title: &'static str,
    status: u16,
    code: &'static str,
    detail: &'a str,
    /// `mfa_required`'s extension members (RFC 9457 §3.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    mfa_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    methods: Option<&'static [&'static str]>,
}

/// An RFC 9457 problem document for `error`, with `WWW-Authenticate` on every 401 (RFC 6750
/// form: `error="invalid_token"` only where a bearer token was sent) and `Retry-After` on 429
/// and 503.
pub fn problem(error: &AuthError) -> Response<Body> {
    let detail = error.detail();
    let body = Problem {
        r#type: "about:blank",
        title: error.title(),
        status: error.status(),
        code: error.code(),
        detail: &detail,
        mfa_token: match error {
            AuthError::MfaRequired(token) => Some(token.0.as_str()),
            _ => None,
        },
        methods: matches!(error, AuthError::MfaRequired(_))
            .then_some(&crate::error::MFA_METHODS[..]),
    };
    let text = serde_json::to_string(&body).unwrap_or_default();
    let mut response = respond(error.status(), Body::Text(text));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, PROBLEM_JSON);
    let challenge = match error {
        AuthError::InvalidToken => Some(
            r#"Bearer realm="auth", error="invalid_token", error_description="The access token is not valid""#,
        ),
        AuthError::TokenExpired => Some(
            r#"Bearer realm="auth", error="invalid_token", error_description="The access token expired""#,
        ),
        // A refused mfa_token is a refused token, as a refused refresh token is.
        AuthError::InvalidMfaToken => Some(
            r#"Bearer realm="auth", error="invalid_token", error_description="The sign-in token is not valid""#,
        ),
        e if e.status() == 401 => Some(r#"Bearer realm="auth""#),
        _ => None,
    };
    if let Some(challenge) = challenge {
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    }
    if let Some(seconds) = error.retry_after_secs() {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let AuthError::MethodNotAllowed { allow } = error {
        headers.insert(ALLOW, HeaderValue::from_static(allow));
    }
    response
}

/// Renders an operation's outcome: `ok` on success, a problem document on failure.
pub fn render<T>(
    result: Result<T, AuthError>,
    ok: impl FnOnce(T) -> Response<Body>,
) -> Response<Body> {
    match result {
        Ok(value) => ok(value),
        Err(error) => problem(&error),
    }
}

/// The whole of every function's `main`: a runtime sized for Lambda, logging (JSON under
/// `AWS_LAMBDA_LOG_FORMAT=JSON`), the state built once per cold start (a bad setting fails init
/// with a message naming it), a database connection opened during init, then the runtime loop.
/// Only the parts `function` uses are built, from only the secrets it uses ([`crate::Function`],
/// [`crate::secrets`]).
pub fn run<F, Fut>(function: crate::Function, handler: F) -> Result<(), lambda_http::Error>
where
    F: Fn(&'static AppState, Request) -> Fut,
    Fut: std::future::Future<Output = Result<Response<Body>, lambda_http::Error>> + Send,
{
    runtime()?.block_on(serve(function, handler))
}

/// [`run`] for the function that never queries the database (`keys`): it builds the key set
/// and discovery document alone, with no database URL, pool or private key.
pub fn run_without_database<F, Fut>(handler: F) -> Result<(), lambda_http::Error>
where
    F: Fn(&'static crate::token::TokenKeys, Request) -> Fut,
    Fut: std::future::Future<Output = Result<Response<Body>, lambda_http::Error>> + Send,
{
    runtime()?.block_on(async {
        init_logging();
        let config = crate::secrets::config_for(crate::Function::Keys.uses(), env_var)
            .await
            .inspect_err(|error| tracing::error!(%error, "init failed"))?;
        let tokens = crate::token::TokenKeys::from_config(&config)
            .inspect_err(|error| tracing::error!(%error, "init failed"))?;
        let tokens: &'static crate::token::TokenKeys = Box::leak(Box::new(tokens));
        lambda_http::run(lambda_http::service_fn(move |req| handler(tokens, req))).await
    })
}

/// [`run`] for the function that needs no settings at all (`pages`: embedded files).
pub fn run_stateless<F, Fut>(handler: F) -> Result<(), lambda_http::Error>
where
    F: Fn(Request) -> Fut,
    Fut: std::future::Future<Output = Result<Response<Body>, lambda_http::Error>> + Send,
{
    runtime()?.block_on(async {
        init_logging();
        lambda_http::run(lambda_http::service_fn(handler)).await
    })
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The state of a database function, built from the environment and the secrets it names.
pub(crate) async fn init_state(function: crate::Function) -> Result<AppState, ConfigError> {
    let config = crate::secrets::config_for(function.uses(), env_var).await?;
    AppState::for_function(config, function)
}

/// An instance serves one request at a time, so one thread for the async work and one for
/// argon2 are all it needs. A single blocking thread also matters for memory: glibc gives each
/// thread that allocates argon2's 19 MiB of blocks its own arena and keeps the pages, so a pool
/// of blocking threads multiplies the resident set.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .build()
}

/// The runtime crates' own targets. At DEBUG and TRACE they log whole invocation events
/// ("raw JSON event received from Lambda": bodies with passwords, headers with tokens), so no
/// setting may lift them above INFO.
pub const RUNTIME_LOG_TARGETS: [&str; 4] = [
    "lambda_runtime",
    "lambda_runtime_api_client",
    "lambda_http",
    "aws_lambda_events",
];

/// The functions' logging, built from what Lambda's advanced logging controls set, as
/// lambda_runtime's default subscriber reads them: `aws_lambda_log_level`
/// (`AWS_LAMBDA_LOG_LEVEL`) when set, else the `rust_log` directives (`RUST_LOG`), else INFO;
/// JSON lines when `json` (`AWS_LAMBDA_LOG_FORMAT=JSON`). On top of that filter, a second one
/// that no directive can override caps [`RUNTIME_LOG_TARGETS`] at INFO: a directive added to
/// one `EnvFilter` would lose to a more specific one such as
/// `lambda_runtime::layers::api_response=trace`.
pub fn log_subscriber<W>(
    aws_lambda_log_level: Option<&str>,
    rust_log: Option<&str>,
    json: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> lambda_http::tracing::subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use lambda_http::tracing::subscriber::{
        EnvFilter, filter::LevelFilter, filter::Targets, fmt, layer::SubscriberExt, registry,
    };
    let requested = match aws_lambda_log_level
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        // Lambda's levels include FATAL, which tracing has not.
        Some(level) if level.eq_ignore_ascii_case("fatal") => {
            EnvFilter::default().add_directive(LevelFilter::ERROR.into())
        }
        Some(level) => EnvFilter::default().add_directive(
            level
                .parse::<LevelFilter>()
                .unwrap_or(LevelFilter::INFO)
                .into(),
        ),
        None => EnvFilter::builder()
            .with_default_directive(LevelFilter::INFO.into())
            .parse_lossy(rust_log.unwrap_or_default()),
    };
    let runtime_cap = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(RUNTIME_LOG_TARGETS.map(|target| (target, LevelFilter::INFO)));
    let layer = fmt::layer()
        .with_target(false)
        .without_time()
        .with_writer(writer);
    let filtered = registry().with(requested).with(runtime_cap);
    if json {
        Box::new(filtered.with(layer.json()))
    } else {
        Box::new(filtered.with(layer))
    }
}

/// Installs [`log_subscriber`] from the process environment, at the start of every function.
pub(crate) fn init_logging() {
    let env = |name| std::env::var(name).ok();
    let json = env("AWS_LAMBDA_LOG_FORMAT").is_some_and(|f| f.eq_ignore_ascii_case("json"));
    let subscriber = log_subscriber(
        env("AWS_LAMBDA_LOG_LEVEL").as_deref(),
        env("RUST_LOG").as_deref(),
        json,
        std::io::stdout,
    );
    // Only fails when a subscriber is already installed, which then keeps logging.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// The state lives as long as the process, so it is leaked into a `'static` reference rather
/// than reference-counted.
async fn serve<F, Fut>(function: crate::Function, handler: F) -> Result<(), lambda_http::Error>
where
    F: Fn(&'static AppState, Request) -> Fut,
    Fut: std::future::Future<Output = Result<Response<Body>, lambda_http::Error>> + Send,
{
    init_logging();
    let state = init_state(function)
        .await
        .inspect_err(|error| tracing::error!(%error, "init failed"))?;
    let state: &'static AppState = Box::leak(Box::new(state));
    state.db.warm_up().await;
    lambda_http::run(lambda_http::service_fn(move |req| handler(state, req))).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_http::http::Request as HttpRequest;

    fn request(content_type: Option<&str>, body: impl Into<Body>) -> Request {
        let mut builder = HttpRequest::builder().method("POST").uri("/auth/login");
        if let Some(ct) = content_type {
            builder = builder.header(CONTENT_TYPE, ct);
        }
        builder.body(body.into()).expect("request")
    }

    #[test]
    fn content_type_must_be_json_with_an_optional_utf8_charset() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
        ] {
            assert!(json_object(&request(Some(ok), "{}")).is_ok(), "{ok}");
        }
        for bad in [
            None,
            Some("text/plain"),
            Some("application/json; charset=latin1"),
            Some("application/jsonx"),
            Some("application/x-www-form-urlencoded"),
        ] {
            assert_eq!(
                json_object(&request(bad, "{}")).err(),
                Some(AuthError::UnsupportedMediaType),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn only_utf8_json_objects_are_accepted() {
        for bad in ["", "[]", "\"s\"", "null", "1", "{", "{\"a\":\"\\ud800\"}"] {
            assert_eq!(
                json_object(&request(Some("application/json"), bad)).err(),
                Some(AuthError::InvalidJson),
                "{bad}"
            );
        }
        let latin1 = Body::Binary(b"{\"email\":\"\xe9\"}".to_vec());
        assert_eq!(
            json_object(&request(Some("application/json"), latin1)).err(),
            Some(AuthError::InvalidJson)
        );
    }

    #[test]
    fn bodies_over_16_kib_are_refused() {
        let big = format!("{{\"email\":\"{}\"}}", "a".repeat(MAX_BODY_BYTES));
        assert_eq!(
            json_object(&request(Some("application/json"), big)).err(),
            Some(AuthError::PayloadTooLarge)
        );
        let fits = format!("{{\"e\":\"{}\"}}", "a".repeat(MAX_BODY_BYTES - 8));
        assert_eq!(fits.len(), MAX_BODY_BYTES);
        assert!(json_object(&request(Some("application/json"), fits)).is_ok());
    }

    #[test]
    fn string_fields_are_required_and_typed() {
        let map = json_object(&request(
            Some("application/json"),
            r#"{"email":"a","password":5}"#,
        ))
        .expect("object");
        assert_eq!(string_field(&map, "email"), Ok("a".into()));
        assert_eq!(
            string_field(&map, "password"),
            Err(AuthError::InvalidRequest(
                "The field `password` must be a string.".into()
            ))
        );
        assert_eq!(
            string_field(&map, "missing"),
            Err(AuthError::InvalidRequest(
                "The field `missing` is required.".into()
            ))
        );
    }

    fn with_auth(value: &str) -> Request {
        HttpRequest::builder()
            .header(AUTHORIZATION, value)
            .body(Body::Empty)
            .expect("request")
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_other_schemes_count_as_missing() {
        assert_eq!(bearer(&with_auth("Bearer abc")), Bearer::Token("abc"));
        assert_eq!(bearer(&with_auth("bearer   abc ")), Bearer::Token("abc"));
        assert_eq!(bearer(&with_auth("Bearer")), Bearer::Token(""));
        assert_eq!(bearer(&with_auth("Bearer ")), Bearer::Token(""));
        assert_eq!(bearer(&with_auth("Basic dTpw")), Bearer::Missing);
        let none = HttpRequest::builder().body(Body::Empty).expect("request");
        assert_eq!(bearer(&none), Bearer::Missing);
    }

    fn header<'a>(r: &'a Response<Body>, name: &str) -> Option<&'a str> {
        r.headers().get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn problems_carry_the_right_headers() {
        let r = problem(&AuthError::MissingToken);
        assert_eq!(r.status(), 401);
        assert_eq!(header(&r, "content-type"), Some("application/problem+json"));
        assert_eq!(
            header(&r, "www-authenticate"),
            Some(r#"Bearer realm="auth""#)
        );
        for e in [AuthError::InvalidToken, AuthError::TokenExpired] {
            let r = problem(&e);
            assert!(
                header(&r, "www-authenticate")
                    .is_some_and(|c| c.contains(r#"error="invalid_token""#))
            );
        }
        assert_eq!(
            header(&problem(&AuthError::InvalidCredentials), "www-authenticate"),
            Some(r#"Bearer realm="auth""#)
        );
        assert!(header(&problem(&AuthError::EmailTaken), "www-authenticate").is_none());
        let r = problem(&AuthError::ServiceUnavailable {
            retry_after_secs: 2,
        });
        assert_eq!(header(&r, "retry-after"), Some("2"));
        let body: Value = serde_json::from_slice(r.body().as_ref()).expect("json");
        assert_eq!(body["type"], "about:blank");
        assert_eq!(body["status"], 503);
        assert_eq!(body["code"], "service_unavailable");
        assert_eq!(body["title"], "Service Unavailable");
    }
}
