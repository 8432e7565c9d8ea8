//! `GET /auth/sessions` and `DELETE /auth/sessions/{id}`: see
//! `shared::http::handlers::sessions`.

fn main() -> Result<(), lambda_http::Error> {
    shared::http::run(shared::Function::Sessions, shared::http::handlers::sessions)
}
