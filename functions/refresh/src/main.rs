//! `POST /auth/refresh`: see `shared::http::handlers::refresh`.

fn main() -> Result<(), lambda_http::Error> {
    shared::http::run(shared::Function::Refresh, shared::http::handlers::refresh)
}
