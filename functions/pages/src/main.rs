//! `GET /`, `/account`, `/verify-email`, `/reset-password` and `/assets/{file}`: the pages, see
//! `shared::http::handlers::pages`.

fn main() -> Result<(), lambda_http::Error> {
    shared::http::run_stateless(shared::http::handlers::pages)
}
