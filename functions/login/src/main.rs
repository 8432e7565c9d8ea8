//! `POST /auth/login`: see `shared::http::handlers::login`.

fn main() -> Result<(), lambda_http::Error> {
    shared::http::run(shared::Function::Login, shared::http::handlers::login)
}
