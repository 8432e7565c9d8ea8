//! `POST /auth/register`: see `shared::http::handlers::register`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::run(shared::http::handlers::register).await
}
