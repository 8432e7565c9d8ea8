//! One handler per route. Each parses the request, calls the matching `auth` operation and
//! renders the outcome; they never fail at the Lambda level, every error is a problem document.

use super::{
    Bearer, bearer, json, json_object, no_content, origin, public_json, query_param, render,
    string_field,
};
use crate::{
    AppState,
    auth::{self, Credentials, SecondStep, Tokens, TurnOff},
    error::AuthError,
    store::User,
    token::TokenKeys,
    totp::{Code, RecoveryCode},
};
use chrono::SecondsFormat;
use lambda_http::{Body, Error, Request, Response, http::Method};
use serde::Serialize;

/// How long clients and API Gateway's JWT authorizer may cache the key set and discovery
/// document (and the OpenAPI document, alike). Short enough that a key added for rotation is
/// seen well before it signs.
const KEYS_MAX_AGE_SECS: u32 = 300;

/// The public view of a user (register's 201 and me's 200).
#[derive(Serialize)]
struct UserBody<'a> {
    id: uuid::Uuid,
    email: &'a str,
    is_active: bool,
    created_at: String,
    email_verified: bool,
    mfa_enabled: bool,
}

impl<'a> From<&'a User> for UserBody<'a> {
    fn from(user: &'a User) -> Self {
        Self {
            id: user.id,
            email: &user.email,
            is_active: user.is_active,
            created_at: user.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            email_verified: user.email_verified,
            mfa_enabled: user.mfa_enabled,
        }
    }
}

#[derive(Serialize)]
struct TokenBody<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: u64,
    refresh_token: &'a str,
}

fn tokens(tokens: Tokens) -> Response<Body> {
    json(
        200,
        &TokenBody {
            access_token: &tokens.access.token,
            token_type: "Bearer",
            expires_in: tokens.access.expires_in,
            refresh_token: &tokens.refresh_token,
        },
    )
}

fn credentials(req: &Request) -> Result<Credentials, AuthError> {
    let body = json_object(req)?;
    Ok(Credentials {
        email: string_field(&body, "email")?,
        password: string_field(&body, "password")?,
    })
}

/// `POST /auth/register` → 201 with the new user.
pub async fn register(state: &AppState, req: Request) -> Result<Response<Body>, Error> {
    let origin = origin(&req);
    let result = async { auth::register(state, credentials(&req)?, &origin).await }.await;
    Ok(render(result, |user| json(201, &UserBody::from(&user))))
}

/// `POST /auth/login` → 200 with an access token and a refresh token, or `401 mfa_required`
/// with TOTP on; `POST /auth/mfa/verify`, its second step → 200 with both tokens.
pub async fn login(state: &AppState, req: Request) -> Result<Response<Body>, Error> {
    let origin = origin(&req);
    let result = match route(&req) {
        (Method::POST, "/auth/mfa/verify") => {
            async {
                let body = json_object(&req)?;
                let mfa_token = string_field(&body, "mfa_token")?;
                let factor = second_step(&body)?;
                auth::verify_mfa(state, &mfa_token, &factor, &origin).await
            }
            .await
        }
        _ => async { auth::login(state, credentials(&req)?, &origin).await }.await,
    };
    Ok(render(result, tokens))
}

/// A six-digit code field; `400 invalid_request` for anything else.
fn code_field(
    body: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Code, AuthError> {
    Code::parse(&string_field(body, name)?).ok_or_else(|| {
        AuthError::InvalidRequest(format!(
            "The field `{name}` must be the 6 digits your authenticator app shows."
        ))
    })
}

/// Exactly one of the fields `one` and `other`: which one, or `400 invalid_request`.
fn one_of<'b>(
    body: &serde_json::Map<String, serde_json::Value>,
    one: &'b str,
    other: &'b str,
) -> Result<&'b str, AuthError> {
    match (body.contains_key(one), body.contains_key(other)) {
        (true, false) => Ok(one),
        (false, true) => Ok(other),
        (true, true) => Err(AuthError::InvalidRequest(format!(
            "Send either `{one}` or `{other}`, not both."
        ))),
        (false, false) => Err(AuthError::InvalidRequest(format!(
            "The field `{one}` or `{other}` is required."
        ))),
    }
}

/// The second factor of `POST /auth/mfa/verify`: `code` or `recovery_code`.
fn second_step(body: &serde_json::Map<String, serde_json::Value>) -> Result<SecondStep, AuthError> {
    if one_of(body, "code", "recovery_code")? == "code" {
        return code_field(body, "code").map(SecondStep::Code);
    }
    RecoveryCode::parse(&string_field(body, "recovery_code")?)
        .map(SecondStep::RecoveryCode)
        .ok_or_else(|| {
            AuthError::InvalidRequest(
                "The field `recovery_code` must be one of your recovery codes: 16 letters and digits."
                    .into(),
            )
        })
}

/// A pending enrolment, shown once.
#[derive(Serialize)]
struct EnrolmentBody<'a> {
    secret: &'a str,
    otpauth_uri: &'a str,
    qr_code: &'a str,
}

/// `POST /auth/mfa/totp` (Bearer, `{"password"}`) → 200 with the pending enrolment;
/// `POST /auth/mfa/totp/confirm` (Bearer, `{"code"}`) → 200 with the recovery codes;
/// `DELETE /auth/mfa/totp` (Bearer, `{"code"}` or `{"password"}`) → 204.
pub async fn mfa(state: &AppState, req: Request) -> Result<Response<Body>, Error> {
    let origin = origin(&req);
    let response = match route(&req) {
        (Method::POST, "/auth/mfa/totp") => {
            let result = async {
                let token = required_bearer(&req)?;
                let body = json_object(&req)?;
                let password = string_field(&body, "password")?;
                auth::enrol_totp(state, token, &password, &origin).await
            }
            .await;
            render(result, |enrolment| {
                json(
                    200,
                    &EnrolmentBody {
                        secret: &enrolment.secret,
                        otpauth_uri: &enrolment.otpauth_uri,
                        qr_code: &enrolment.qr_code,
                    },
                )
            })
        }
        (Method::POST, "/auth/mfa/totp/confirm") => {
            let result = async {
                let token = required_bearer(&req)?;
                let body = json_object(&req)?;
                let code = code_field(&body, "code")?;
                auth::confirm_totp(state, token, &code, &origin).await
            }
            .await;
            render(result, |codes| {
                json(200, &serde_json::json!({ "recovery_codes": codes }))
            })
        }
        (Method::DELETE, "/auth/mfa/totp") => {
            let result = async {
                let token = required_bearer(&req)?;
                let body = json_object(&req)?;
                let proof = if one_of(&body, "code", "password")? == "code" {
                    TurnOff::Code(code_field(&body, "code")?)
                } else {
                    TurnOff::Password(string_field(&body, "password")?)
                };
                auth::disable_totp(state, token, &proof, &origin).await
            }
            .await;
            render(result, |()| no_content())
        }
        _ => unrouted(&req),
    };
    Ok(response)
}

/// `POST /auth/refresh` → 200 with a new access token and the refresh token's successor.
pub async fn refresh(state: &AppState, req: Request) -> Result<Response<Body>, Error> {
    let origin = origin(&req);
    let result = async {
        let body = json_object(&req)?;
        auth::refresh(state, &string_field(&body, "refresh_token")?, &origin).await
    }
    .await;
    Ok(render(result, tokens))
}

/// `GET /auth/me` → 200 with the token's user; `DELETE /auth/me` → 204, the account deleted.
pub async fn me(state: &AppState, req: Request) -> Result<Response<Body>, Error> {
    if req.method() == Method::DELETE {
        return delete_me(state, req).await;
    }
    let origin = origin(&req);
    let result = match bearer(&req) {
        Bearer::Missing => {
            tracing::info!(event = "token.rejected", reason = "missing");
            Err(AuthError::MissingToken)
        }
        Bearer::Token(token) => auth::current_user(state, token, &origin).await,
    };
    Ok(render(result, |user| json(200, &UserBody::from(&user))))
}

/// `POST /auth/logout[?scope=global]` → 204; ends the token's session, or all of its user's.
pub async fn logout(state: &AppState, req: Request) -> Result<Response<Body>, Error> {
    let origin = origin(&req);
    let result = async {
        let global = match query_param(&req, "scope")?.as_deref() {
            None => false,
            Some("global") => true,
            Some(_) => {
                return Err(AuthError::InvalidRequest(
                    "The query parameter `scope` may only be `global`.".into(),
                ));
            }
        };
        match bearer(&req) {
            Bearer::Missing => Err(AuthError::MissingToken),
            Bearer::Token(token) => auth::logout(state, token, global, &origin).await,
        }
    }
    .await;
    Ok(render(result, |()| no_content()))
}

/// `GET /.well-known/jwks.json`, `GET /.well-known/openid-configuration` and
/// `GET /openapi.json`, cacheable; and every request no route takes (API Gateway's `$default`
/// route): `405` with `Allow` on a path that has other methods, else `404`.
pub async fn keys(tokens: &TokenKeys, req: Request) -> Result<Response<Body>, Error> {
    let document = match route(&req) {
        (Method::GET, "/.well-known/jwks.json") => tokens.jwks_json(),
        (Method::GET, "/.well-known/openid-configuration") => tokens.discovery_json(),
        (Method::GET, "/openapi.json") => tokens.openapi_json(),
        // The path as sent: `route` trims a trailing slash, which no route has.
        (method, _) => {
            return Ok(
                match crate::openapi::unrouted(method.as_str(), req.uri().path()) {
                    Some(error) => super::problem(&error),
                    None => unrouted(&req),
                },
            );
        }
    };
    Ok(public_json(document, KEYS_MAX_AGE_SECS))
}

/// `GET /`, `/account`, `/verify-email`, `/reset-password` and `/assets/{file}`: the embedded
/// pages ([`crate::pages`]), each with its `Cache-Control` and ETag (`304` when
/// `If-None-Match` names it), and the pages' security headers on every answer, a `404` for an
/// unknown asset included.
pub async fn pages(req: Request) -> Result<Response<Body>, Error> {
    use lambda_http::http::{
        HeaderName, HeaderValue, StatusCode,
        header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH},
    };
    let mut response = match (req.method(), crate::pages::find(req.uri().path())) {
        (&Method::GET, Some((asset, etag))) => {
            let fresh = req
                .headers()
                .get(IF_NONE_MATCH)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|value| crate::pages::none_match(value, etag));
            let mut response = if fresh {
                let mut response = Response::new(Body::Empty);
                *response.status_mut() = StatusCode::NOT_MODIFIED;
                response
            } else {
                let mut response = Response::new(Body::Text(asset.body.to_owned()));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
                response
            };
            let headers = response.headers_mut();
            headers.insert(CACHE_CONTROL, HeaderValue::from_static(asset.cache_control));
            headers.insert(ETAG, HeaderValue::from_static(etag));
            response
        }
        // `/assets/{file}` with no such file.
        (&Method::GET, None) if req.uri().path().starts_with("/assets/") => {
            super::problem(&AuthError::NotFound)
        }
        _ => unrouted(&req),
    };
    for (name, value) in crate::pages::SECURITY_HEADERS {
        response.headers_mut().insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    Ok(response)
}

/// The bearer token of a request that needs one: `401 missing_token` without it.
fn required_bearer(req: &Request) -> Result<&str, AuthError> {
    match bearer(req) {
        Bearer::Missing => Err(AuthError::MissingToken),
        Bearer::Token(token) => Ok(token),
    }
}

/// `DELETE /auth/me` with `{"password"}` → 204.
async fn delete_me(state: &AppState, req: Request) -> Result<Response<Body>, Error> {
    let origin = origin(&req);
    let result = async {
        let token = required_bearer(&req)?;
        let body = json_object(&req)?;
        let password = string_field(&body, "password")?;
        auth::delete_account(state, token, &password, &origin).await
    }
    .await;
    Ok(render(result, |()| no_content()))
}

/// A route of a function serving several, by method and path; the router sends no other.
fn route(req: &Request) -> (Method, &str) {
    (req.method().clone(), req.uri().path().trim_end_matches('/'))
}

/// A request the function's routes do not cover: only a routing mistake sends one.
fn unrouted(req: &Request) -> Response<Body> {
    tracing::error!(method = %req.method(), path = req.uri().path(), "no route in this function");
    super::problem(&AuthError::Internal)
}

/// `POST /auth/email/verify` → 200 with the user; `POST /auth/email/verify/resend` → 202.
pub async fn email(state: &AppState, req: Request) -> Result<Response<Body>, Error> {
    let started = tokio::time::Instant::now();
    let origin = origin(&req);
    let response = match route(&req) {
        (Method::POST, "/auth/email/verify") => {
            let result = async {
                let body = json_object(&req)?;
                auth::verify_email(state, &string_field(&body, "token")?, &origin).await
            }
            .await;
            render(result, |user| json(200, &UserBody::from(&user)))
        }
        (Method::POST, "/auth/email/verify/resend") => {
            mail_request(state, &req, &origin, auth::MailAsk::Verification, started).await
        }
        _ => unrouted(&req),
    };
    Ok(response)
}

/// Forgot and resend: `202 {}` for every email (see `auth::request_mail`).
async fn mail_request(
    state: &AppState,
    req: &Request,
    origin: &crate::origin::Origin,
    ask: auth::MailAsk,
    started: tokio::time::Instant,
) -> Response<Body> {
    let result = async {
        let body = json_object(req)?;
        let email = string_field(&body, "email")?;
        auth::request_mail(state, ask, &email, origin, started).await
    }
    .await;
    render(result, |()| json(202, &serde_json::json!({})))
}

/// `POST /auth/password/forgot` → 202, `/reset` → 204, `/change` (Bearer) → 204.
pub async fn password(state: &AppState, req: Request) -> Result<Response<Body>, Error> {
    let started = tokio::time::Instant::now();
    let origin = origin(&req);
    let response = match route(&req) {
        (Method::POST, "/auth/password/forgot") => {
            mail_request(state, &req, &origin, auth::MailAsk::PasswordReset, started).await
        }
        (Method::POST, "/auth/password/reset") => {
            let result = async {
                let body = json_object(&req)?;
                let token = string_field(&body, "token")?;
                let password = string_field(&body, "password")?;
                auth::reset_password(state, &token, &password, &origin).await
            }
            .await;
            render(result, |()| no_content())
        }
        (Method::POST, "/auth/password/change") => {
            let result = async {
                let token = required_bearer(&req)?;
                let body = json_object(&req)?;
                let current = string_field(&body, "current_password")?;
                let new = string_field(&body, "new_password")?;
                auth::change_password(state, token, &current, &new, &origin).await
            }
            .await;
            render(result, |()| no_content())
        }
        _ => unrouted(&req),
    };
    Ok(response)
}

/// One session in the list.
#[derive(Serialize)]
struct SessionBody<'a> {
    id: uuid::Uuid,
    created_at: String,
    last_used_at: String,
    expires_at: String,
    user_agent: Option<&'a str>,
    source_ip: Option<&'a str>,
    current: bool,
    aal: &'static str,
}

#[derive(Serialize)]
struct SessionsBody<'a> {
    sessions: Vec<SessionBody<'a>>,
}

fn sessions_body(sessions: &[crate::store::SessionInfo]) -> Response<Body> {
    let time = |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
    json(
        200,
        &SessionsBody {
            sessions: sessions
                .iter()
                .map(|s| SessionBody {
                    id: s.id,
                    created_at: time(&s.created_at),
                    last_used_at: time(&s.last_used_at),
                    expires_at: time(&s.expires_at),
                    user_agent: s.user_agent.as_deref(),
                    source_ip: s.source_ip.as_deref(),
                    current: s.current,
                    aal: s.factors.aal(),
                })
                .collect(),
        },
    )
}

/// `GET /auth/sessions` → 200 with the live sessions; `DELETE /auth/sessions/{id}` → 204.
pub async fn sessions(state: &AppState, req: Request) -> Result<Response<Body>, Error> {
    let origin = origin(&req);
    let (method, path) = route(&req);
    let response = match (method, path) {
        (Method::GET, "/auth/sessions") => {
            let result = async {
                let token = required_bearer(&req)?;
                auth::list_sessions(state, token, &origin).await
            }
            .await;
            render(result, |sessions| sessions_body(&sessions))
        }
        (Method::DELETE, path) if path.starts_with("/auth/sessions/") => {
            let target = &path["/auth/sessions/".len()..];
            let result = async {
                let token = required_bearer(&req)?;
                auth::revoke_session(state, token, target, &origin).await
            }
            .await;
            render(result, |()| no_content())
        }
        _ => unrouted(&req),
    };
    Ok(response)
}
