//! `POST /auth/logout`: see `shared::http::handlers::logout`.

fn main() -> Result<(), lambda_http::Error> {
    shared::http::run(shared::Function::Logout, shared::http::handlers::logout)
}
