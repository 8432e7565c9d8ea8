//! `GET /auth/me`: see `shared::http::handlers::me`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::run(shared::http::handlers::me).await
}
