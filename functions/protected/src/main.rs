//! `GET /auth/me` and `DELETE /auth/me`: see `shared::http::handlers::me`.

fn main() -> Result<(), lambda_http::Error> {
    shared::http::run(shared::Function::Me, shared::http::handlers::me)
}
