//! `POST /auth/mfa/totp`, `POST /auth/mfa/totp/confirm` and `DELETE /auth/mfa/totp`: see
//! `shared::http::handlers::mfa`.

fn main() -> Result<(), lambda_http::Error> {
    shared::http::run(shared::Function::Mfa, shared::http::handlers::mfa)
}
