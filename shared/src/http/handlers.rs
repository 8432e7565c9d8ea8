//! One handler per route. Each parses the request, calls the matching `auth` operation and
//! renders the outcome; they never fail at the Lambda level, every error is a problem document.

use super::{Bearer, bearer, json, json_object, render, string_field};
use crate::{
    AppState,
    auth::{self, Credentials},
    error::AuthError,
    token::IssuedToken,
    users::User,
};
use chrono::SecondsFormat;
use lambda_http::{Body, Error, Request, Response};
use serde::Serialize;

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
    let result = match credentials(&req) {
        Ok(creds) => auth::register(state, creds).await,
        Err(e) => Err(e),
    };
    Ok(render(result, |user| json(201, &UserBody::from(&user))))
}

/// `POST /auth/login` → 200 with an access token.
pub async fn login(state: &AppState, req: Request) -> Result<Response<Body>, Error> {
    let result = match credentials(&req) {
        Ok(creds) => auth::login(state, creds).await,
        Err(e) => Err(e),
    };
    Ok(render(result, |issued: IssuedToken| {
        json(
            200,
            &TokenBody {
                access_token: &issued.token,
                token_type: "Bearer",
                expires_in: issued.expires_in,
            },
        )
    }))
}

/// `GET /auth/me` → 200 with the token's user.
pub async fn me(state: &AppState, req: Request) -> Result<Response<Body>, Error> {
    let result = match bearer(&req) {
        Bearer::Missing => {
            tracing::info!(event = "token.rejected", reason = "missing");
            Err(AuthError::MissingToken)
        }
        Bearer::Token(token) => auth::current_user(state, token).await,
    };
    Ok(render(result, |user| json(200, &UserBody::from(&user))))
}
