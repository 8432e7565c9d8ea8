//! `GET /.well-known/jwks.json` and `GET /.well-known/openid-configuration`: see
//! `shared::http::handlers::keys`.

fn main() -> Result<(), lambda_http::Error> {
    shared::http::run_without_database(shared::http::handlers::keys)
}
