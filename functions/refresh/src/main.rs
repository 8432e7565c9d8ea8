//! `POST /auth/refresh`: see `shared::http::handlers::refresh`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::run(shared::http::handlers::refresh).await
}
