//! Statements of one user's account that race take turns instead of deadlocking: each locks
//! the user's row before the user's link tokens or sessions (migrations/V4).

mod common;

use common::{STRONG_PASSWORD, fresh_state, psql, register, unique_email};
use shared::auth::Credentials;
use std::time::Duration;

/// Waits until a backend runs `query_like` and waits for a lock.
async fn until_blocked(client: &tokio_postgres::Client, query_like: &str) {
    for _ in 0..200 {
        let waiting: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE $1)",
                &[&format!("%{query_like}%")],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if waiting {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no backend ever waited on a lock for {query_like}");
}

#[tokio::test]
async fn a_reset_and_a_new_reset_request_of_one_user_take_turns() {
    let state = fresh_state(&[]).await;
    let email = unique_email();
    let user = register(
        &state,
        Credentials {
            email: email.clone(),
            password: STRONG_PASSWORD.into(),
        },
    )
    .await
    .expect("register");
    let token = [7u8; 32];
    let hash = shared::refresh::hash(&token);
    let reset = psql(&state).await;
    reset
        .execute(
            "INSERT INTO link_tokens (hash, user_id, purpose, created_at, expires_at) \
             VALUES ($1, $2, 'reset_password', now(), now() + interval '1 hour')",
            &[&hash, &user.id],
        )
        .await
        .expect("a reset link");

    // The reset's first step (what auth_reset_password does before touching the user row)...
    reset.batch_execute("BEGIN").await.expect("begin");
    reset
        .query(
            "SELECT * FROM auth_use_link($1, 'reset_password', now(), gen_random_uuid())",
            &[&hash],
        )
        .await
        .expect("use the link");

    // ...while a new request for a reset link of the same user replaces that link.
    let request = psql(&state).await;
    let recipient = shared::store::account_key(None, &email);
    let email_for_request = email.clone();
    let requested = tokio::spawn(async move {
        request
            .query(
                "SELECT outcome FROM auth_mail_request('reset_password', $1, $2, $3, \
                 now() + interval '1 hour', gen_random_uuid(), 'password_reset', '\\x00'::bytea, now(), \
                 interval '1 second', 100, now(), NULL, NULL)",
                &[&recipient, &email_for_request, &shared::refresh::hash(&[8u8; 32])],
            )
            .await
            .map(|rows| rows.first().map(|r| r.get::<_, String>(0)))
    });
    until_blocked(&psql(&state).await, "auth_mail_request").await;

    // The reset goes on with the user's row, as auth_reset_password does, and commits.
    reset
        .execute(
            "UPDATE users SET updated_at = now() WHERE id = $1",
            &[&user.id],
        )
        .await
        .expect("the reset is never chosen as a deadlock victim");
    reset.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(
        requested
            .await
            .expect("joined")
            .expect("the request is never a deadlock victim"),
        Some("queued".to_owned())
    );
}
