//! `POST /auth/register`: see `shared::http::handlers::register`.

fn main() -> Result<(), lambda_http::Error> {
    shared::http::run(shared::Function::Register, shared::http::handlers::register)
}
