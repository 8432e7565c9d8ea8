//! `GET /.well-known/jwks.json`, `GET /.well-known/openid-configuration` and
//! `GET /openapi.json`: see `shared::http::handlers::keys`.

fn main() -> Result<(), lambda_http::Error> {
    shared::http::run_without_database(shared::http::handlers::keys)
}
