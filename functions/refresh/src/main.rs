//! `POST /auth/refresh`: see `shared::http::handlers::refresh`.

fn main() -> Result<(), lambda_http::Error> {
    shared::http::run(shared::http::handlers::refresh)
}
