//! `POST /auth/login`: see `shared::http::handlers::login`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::run(shared::http::handlers::login).await
}
