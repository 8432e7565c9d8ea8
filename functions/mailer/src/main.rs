//! The scheduled mailer (an EventBridge schedule in the template, a timer in `make dev`): see
//! `shared::http::schedule::run_mailer`.

fn main() -> Result<(), lambda_runtime::Error> {
    shared::http::schedule::run_mailer()
}
