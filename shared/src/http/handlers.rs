//! One handler per route. Each parses the request, calls the matching `auth` operation and
//! renders the outcome; they never fail at the Lambda level, every error is a problem document.

use super::{
    Bearer, bearer, json, json_object, no_content, origin, public_json, query_param, render,
    string_field,
};
use crate::{
    AppState,
    auth::{self, Credentials, Tokens},
    error::AuthError,
    store::User,
    token::TokenKeys,
};
use chrono::SecondsFormat;
use lambda_http::{Body, Error, Request, Response};
use serde::Serialize;

/// How long clients and API Gateway's JWT authorizer may cache the key set and discovery
/// document. Short enough that a key added for rotation is seen well before it signs.
const KEYS_MAX_AGE_SECS: u32 = 300;

/// The public view of a user (register's 201 and me's 200).
#[derive(Serialize)]
struct UserBody<'a> {
    id: uuid::Uuid,
    email: &'a str,
    is_active: bool,
    created_at: String,
}

impl<'a> From<&'a User> for UserBody<'a> {
    fn from(user: &'a User) -> Self {
        Self {
            id: user.id,
            email: &user.email,
            is_active: user.is_active,
            created_at: user.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
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
    let result = async {
        auth::check_source_address(state, &origin, "register").await?;
        auth::register(state, credentials(&req)?, &origin).await
    }
    .await;
    Ok(render(result, |user| json(201, &UserBody::from(&user))))
}

/// `POST /auth/login` → 200 with an access token and a refresh token.
pub async fn login(state: &AppState, req: Request) -> Result<Response<Body>, Error> {
    let origin = origin(&req);
    let result = async {
        auth::check_source_address(state, &origin, "login").await?;
        auth::login(state, credentials(&req)?, &origin).await
    }
    .await;
    Ok(render(result, tokens))
}

/// `POST /auth/refresh` → 200 with a new access token and the refresh token's successor.
pub async fn refresh(state: &AppState, req: Request) -> Result<Response<Body>, Error> {
    let origin = origin(&req);
    let result = async {
        auth::check_source_address(state, &origin, "refresh").await?;
        let body = json_object(&req)?;
        auth::refresh(state, &string_field(&body, "refresh_token")?, &origin).await
    }
    .await;
    Ok(render(result, tokens))
}

/// `GET /auth/me` → 200 with the token's user.
pub async fn me(state: &AppState, req: Request) -> Result<Response<Body>, Error> {
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

/// `GET /.well-known/jwks.json` and `GET /.well-known/openid-configuration`, cacheable.
pub async fn keys(tokens: &TokenKeys, req: Request) -> Result<Response<Body>, Error> {
    let document = if req.uri().path().ends_with("/openid-configuration") {
        tokens.discovery_json()
    } else {
        tokens.jwks_json()
    };
    Ok(public_json(document, KEYS_MAX_AGE_SECS))
}
