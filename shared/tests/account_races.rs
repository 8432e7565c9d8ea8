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

/// A registered user with one live session (its refresh token's hash returned).
async fn signed_in(state: &shared::AppState) -> (shared::store::User, String, Vec<u8>) {
    let email = unique_email();
    let user = register(
        state,
        Credentials {
            email: email.clone(),
            password: STRONG_PASSWORD.into(),
        },
    )
    .await
    .expect("register");
    let tokens = common::login(
        state,
        Credentials {
            email: email.clone(),
            password: STRONG_PASSWORD.into(),
        },
    )
    .await
    .expect("login");
    let raw = shared::refresh::decode(&tokens.refresh_token).expect("a refresh token");
    (user, email, shared::refresh::hash(&raw))
}

#[tokio::test]
async fn a_login_that_checked_the_old_password_starts_no_session_after_a_reset() {
    let state = fresh_state(&[]).await;
    let (user, email, _) = signed_in(&state).await;
    let old_hash = common::stored_hash(&state, user.id).await;
    let account = shared::store::account_key(None, &email);

    // A reset (or change) is committing the new hash...
    let reset = psql(&state).await;
    reset.batch_execute("BEGIN").await.expect("begin");
    reset
        .execute(
            "UPDATE users SET hashed_password = '$argon2id$v=19$m=8192,t=1,p=1$bmV3$bmV3' WHERE id = $1",
            &[&user.id],
        )
        .await
        .expect("the new hash");

    // ...while a login that checked the old password starts its session.
    let login_state = state.clone();
    let started = tokio::spawn(async move {
        shared::store::start_session(
            &login_state.db,
            user.id,
            uuid::Uuid::new_v4(),
            &[9u8; 32],
            &old_hash,
            &account,
            "127.0.0.1",
            chrono::Utc::now(),
            chrono::Utc::now() + chrono::Duration::days(1),
            &shared::origin::Origin::default(),
        )
        .await
    });
    until_blocked(&psql(&state).await, "login_throttle").await;
    reset.batch_execute("COMMIT").await.expect("commit");
    assert!(!started.await.expect("joined").expect("no error"));
    let sessions: i64 = psql(&state)
        .await
        .query_one(
            "SELECT count(*) FROM sessions WHERE user_id = $1",
            &[&user.id],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(sessions, 1, "only the session from before the reset");
}

#[tokio::test]
async fn deleting_an_account_and_refreshing_one_of_its_sessions_take_turns() {
    let state = fresh_state(&[]).await;
    let (user, _, token_hash) = signed_in(&state).await;
    let hash = common::stored_hash(&state, user.id).await;

    // A refresh's first steps: its token, then its session (as auth_refresh locks them)...
    let refresh = psql(&state).await;
    refresh.batch_execute("BEGIN").await.expect("begin");
    let session: uuid::Uuid = refresh
        .query_one(
            "SELECT session_id FROM refresh_tokens WHERE hash = $1 FOR UPDATE",
            &[&token_hash],
        )
        .await
        .expect("the token")
        .get(0);

    // ...while the account is deleted.
    let delete = psql(&state).await;
    let deleted = tokio::spawn(async move {
        delete
            .query_one(
                "SELECT auth_delete_user($1, $2, $3, $4, now(), NULL, NULL)",
                &[&user.id, &session, &hash, &vec![0u8; 32]],
            )
            .await
            .map(|row| row.get::<_, bool>(0))
    });
    until_blocked(&psql(&state).await, "auth_delete_user").await;
    refresh
        .query_one(
            "SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE",
            &[&session],
        )
        .await
        .expect("the refresh is never chosen as a deadlock victim");
    refresh.batch_execute("COMMIT").await.expect("commit");
    assert!(
        deleted
            .await
            .expect("joined")
            .expect("the delete is never a deadlock victim")
    );
}
