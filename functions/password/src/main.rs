//! `POST /auth/password/forgot`, `/reset` and `/change`: see
//! `shared::http::handlers::password`.

fn main() -> Result<(), lambda_http::Error> {
    shared::http::run(shared::Function::Password, shared::http::handlers::password)
}
