//! The scheduled function: whatever event its schedule sends, it deletes what has expired
//! (address windows, finished backoffs, ended sessions, audit rows past the retention) and
//! answers with the counts, so storage stays bounded without an operator.

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
        throttles = pruned.throttles
    );
    Ok(json!({
        "events": pruned.events,
        "sessions": pruned.sessions,
        "ip_requests": pruned.ip_requests,
        "throttles": pruned.throttles,
    }))
}

/// The function's `main`: settings and pool at init, then one prune per invocation. A failed
/// prune fails the invocation, so the schedule's retry and the function's error metric see it.
pub fn run_prune() -> Result<(), lambda_runtime::Error> {
    super::runtime()?.block_on(async {
        super::init_logging();
        let state = super::init_state(crate::Function::Prune)
            .await
            .inspect_err(|error| tracing::error!(%error, "init failed"))?;
        let state: &'static AppState = Box::leak(Box::new(state));
        lambda_runtime::run(service_fn(move |_: LambdaEvent<Value>| async move {
            prune(state).await.map_err(|error| {
                lambda_runtime::Error::from(format!("prune failed: {}", error.code()))
            })
        }))
        .await
    })
}
