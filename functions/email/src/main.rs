//! `POST /auth/email/verify` and `POST /auth/email/verify/resend`: see
//! `shared::http::handlers::email`.

fn main() -> Result<(), lambda_http::Error> {
    shared::http::run(shared::Function::Email, shared::http::handlers::email)
}
