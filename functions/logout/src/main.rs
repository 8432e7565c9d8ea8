//! `POST /auth/logout`: see `shared::http::handlers::logout`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::run(shared::http::handlers::logout).await
}
