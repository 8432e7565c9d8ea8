//! `POST /auth/login` and `POST /auth/mfa/verify`: see `shared::http::handlers::login`.

fn main() -> Result<(), lambda_http::Error> {
    shared::http::run(shared::Function::Login, shared::http::handlers::login)
}
