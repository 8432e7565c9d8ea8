//! The scheduled functions, whatever event their schedule sends: the prune deletes what has
//! expired (address windows, finished backoffs, ended sessions, finished mail, old link tokens,
//! audit rows past the retention), so storage stays bounded without an operator; the mailer
//! delivers the outbox's due messages. Each answers with its counts.

use crate::{AppState, store};
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::{Value, json};

/// Prunes once; the counts are logged and returned.
pub async fn prune(state: &AppState) -> Result<Value, crate::error::AuthError> {
    let now = state.now();
    let cutoff = now - chrono::Duration::days(i64::from(state.config.audit_retention_days));
    let pruned = store::prune(&state.db, cutoff, now).await?;
    tracing::info!(
        event = "prune.succeeded",
        events = pruned.events,
        sessions = pruned.sessions,
        ip_requests = pruned.ip_requests,
        throttles = pruned.throttles,
        mail = pruned.mail,
        links = pruned.links,
        mail_requests = pruned.mail_requests,
        challenges = pruned.challenges
    );
    Ok(json!({
        "events": pruned.events,
        "sessions": pruned.sessions,
        "ip_requests": pruned.ip_requests,
        "throttles": pruned.throttles,
        "mail": pruned.mail,
        "links": pruned.links,
        "mail_requests": pruned.mail_requests,
        "challenges": pruned.challenges,
    }))
}

/// Delivers the due messages once; the counts are logged and returned.
pub async fn mail(state: &AppState) -> Result<Value, crate::error::AuthError> {
    let done = crate::mail::outbox::run(state).await?;
    Ok(json!(done))
}

/// The prune function's `main`: see [`run_scheduled`].
pub fn run_prune() -> Result<(), lambda_runtime::Error> {
    run_scheduled(crate::Function::Prune, "prune", |state| {
        Box::pin(prune(state))
    })
}

/// The mailer function's `main`: see [`run_scheduled`].
pub fn run_mailer() -> Result<(), lambda_runtime::Error> {
    run_scheduled(crate::Function::Mailer, "mailer", |state| {
        Box::pin(mail(state))
    })
}

type Job = for<'a> fn(
    &'a AppState,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Value, crate::error::AuthError>> + Send + 'a>,
>;

/// A scheduled function: settings and pool at init, then one `job` per invocation. A failed
/// job fails the invocation, so the schedule's retry and the function's error metric see it.
fn run_scheduled(
    function: crate::Function,
    name: &'static str,
    job: Job,
) -> Result<(), lambda_runtime::Error> {
    super::runtime()?.block_on(async {
        super::init_logging();
        let state = super::init_state(function)
            .await
            .inspect_err(|error| tracing::error!(%error, "init failed"))?;
        let state: &'static AppState = Box::leak(Box::new(state));
        lambda_runtime::run(service_fn(move |_: LambdaEvent<Value>| async move {
            job(state).await.map_err(|error| {
                lambda_runtime::Error::from(format!("{name} failed: {}", error.code()))
            })
        }))
        .await
    })
}
