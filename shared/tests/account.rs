//! The account routes (API.md "Mail", "Account") against a real Postgres with a hand-set clock:
//! link tokens, reset, forgot and resend with their per-recipient limits, change, delete, the
//! sessions list and required verification. Mail goes to an SMTP port where nothing listens,
//! so every message stays sealed in the outbox, where a test opens it for its link token as
//! only the mailbox could; delivery itself is tested against a real MailDev in mailer.rs.

mod common;

use chrono::{DateTime, Duration, Utc};
use common::{
    CLOSED_SMTP, STRONG_PASSWORD, advance, fresh_state, hand_clock, newest_link, psql, sealed_mail,
    unique_email,
};
use shared::{
    AppState,
    auth::{self, Credentials, MailAsk, Tokens},
    email::Email,
    error::AuthError,
    mail::Notice,
    origin::Origin,
    store::{self, User},
};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

const NEW_PASSWORD: &str = "tangerine submarine orchestra 71";
const WRONG_PASSWORD: &str = "not the password at all 1";
/// Long enough, and still weak: zxcvbn scores it far below 3.
const WEAK_PASSWORD: &str = "aaaaaaaaaaaaaaaa";

fn nobody() -> Origin {
    Origin::default()
}

fn creds(email: &str, password: &str) -> Credentials {
    Credentials {
        email: email.to_owned(),
        password: password.to_owned(),
    }
}

/// A fresh database and a state with mail on, every delivery failing at once (the messages
/// stay sealed in the outbox), and forgot and resend answering after 50 ms.
async fn mail_on(extra: &[(&str, &str)]) -> AppState {
    let mut overrides = vec![
        ("SMTP_URL", CLOSED_SMTP),
        ("SMTP_TIMEOUT_MS", "1000"),
        ("MAIL_ANSWER_MS", "50"),
    ];
    overrides.extend_from_slice(extra);
    fresh_state(&overrides).await
}

/// Another state over the same database, with its own settings (mail off, say).
fn sibling(state: &AppState, overrides: &[(&str, &str)]) -> AppState {
    let url = common::database_url(state).to_string();
    AppState::new(common::config(&url, overrides)).expect("state")
}

async fn account(state: &AppState) -> (String, User) {
    let email = unique_email();
    let user = auth::register(state, creds(&email, STRONG_PASSWORD), &nobody())
        .await
        .expect("register");
    (email, user)
}

async fn login(state: &AppState, email: &str, password: &str) -> Tokens {
    auth::login(state, creds(email, password), &nobody())
        .await
        .expect("login")
}

async fn me(state: &AppState, tokens: &Tokens) -> Result<User, AuthError> {
    auth::current_user(state, &tokens.access.token, &nobody()).await
}

async fn refresh(state: &AppState, tokens: &Tokens) -> Result<Tokens, AuthError> {
    auth::refresh(state, &tokens.refresh_token, &nobody()).await
}

/// The link token of the newest message of `kind` waiting for `email`.
async fn link(state: &AppState, email: &str, kind: &str) -> String {
    let mailer = state.mailer.as_ref().expect("mail is on");
    newest_link(&psql(state).await, mailer, email, kind).await
}

async fn ask(state: &AppState, what: MailAsk, email: &str) -> Result<(), AuthError> {
    auth::request_mail(state, what, email, &nobody(), tokio::time::Instant::now()).await
}

async fn forgot(state: &AppState, email: &str) -> Result<(), AuthError> {
    ask(state, MailAsk::PasswordReset, email).await
}

async fn resend(state: &AppState, email: &str) -> Result<(), AuthError> {
    ask(state, MailAsk::Verification, email).await
}

async fn count(state: &AppState, sql: &str, params: &[&(dyn ToSql + Sync)]) -> i64 {
    psql(state)
        .await
        .query_one(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

async fn events(state: &AppState, event: &str) -> i64 {
    count(
        state,
        "SELECT count(*) FROM auth_events WHERE event = $1",
        &[&event],
    )
    .await
}

/// Every row a refused request must leave as it was (the audit table aside, where refusals
/// are written).
async fn snapshot(state: &AppState) -> String {
    psql(state)
        .await
        .query_one(
            "SELECT concat_ws(' | ',
                (SELECT string_agg(concat_ws(',', id, email, hashed_password, is_active, email_verified_at, updated_at), ';' ORDER BY id) FROM users),
                (SELECT string_agg(concat_ws(',', encode(hash, 'hex'), user_id, purpose, expires_at, used_at), ';' ORDER BY hash) FROM link_tokens),
                (SELECT string_agg(concat_ws(',', id, last_used_at, ended_at, ended_reason), ';' ORDER BY id) FROM sessions),
                (SELECT string_agg(concat_ws(',', encode(hash, 'hex'), rotated_at), ';' ORDER BY hash) FROM refresh_tokens),
                (SELECT string_agg(concat_ws(',', id, status, attempts, next_attempt_at), ';' ORDER BY id) FROM outbox),
                (SELECT string_agg(concat_ws(',', encode(account, 'hex'), network, failures, blocked_until, locked_at), ';' ORDER BY account, network) FROM login_throttle),
                (SELECT count(*) FROM mail_requests))",
            &[],
        )
        .await
        .expect("snapshot")
        .get(0)
}

/// An access token's claims, read without checking it (what it says is the point).
fn claims_of(access_token: &str) -> serde_json::Value {
    jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(access_token)
        .expect("a JWT")
        .claims
}

fn session_id(tokens: &Tokens) -> Uuid {
    let claims = claims_of(&tokens.access.token);
    Uuid::parse_str(claims["sid"].as_str().expect("sid")).expect("a uuid")
}

fn now_of(clock: &std::sync::Arc<std::sync::Mutex<DateTime<Utc>>>) -> DateTime<Utc> {
    *clock.lock().expect("clock")
}

// --- Link tokens ------------------------------------------------------------------------------

#[tokio::test]
async fn a_verification_link_works_once() {
    let state = mail_on(&[]).await;
    let (email, user) = account(&state).await;
    assert!(!user.email_verified);
    let token = link(&state, &email, "verify_email").await;
    let verified = auth::verify_email(&state, &token, &nobody())
        .await
        .expect("verified");
    assert_eq!(verified.id, user.id);
    assert!(verified.email_verified);
    let before = snapshot(&state).await;
    assert_eq!(
        auth::verify_email(&state, &token, &nobody()).await.err(),
        Some(AuthError::LinkInvalid)
    );
    assert_eq!(snapshot(&state).await, before);
    assert_eq!(events(&state, "email.verified").await, 1);
    let tokens = login(&state, &email, STRONG_PASSWORD).await;
    assert!(me(&state, &tokens).await.expect("me").email_verified);
}

#[tokio::test]
async fn a_verification_link_expires_after_its_lifetime() {
    let mut state = mail_on(&[("EMAIL_VERIFY_TTL_SECONDS", "5")]).await;
    let clock = hand_clock(&mut state);
    let (early, _) = account(&state).await;
    let (late, _) = account(&state).await;
    let early_token = link(&state, &early, "verify_email").await;
    let late_token = link(&state, &late, "verify_email").await;
    advance(&clock, Duration::milliseconds(4_999));
    auth::verify_email(&state, &early_token, &nobody())
        .await
        .expect("inside its lifetime");
    advance(&clock, Duration::milliseconds(1));
    let before = snapshot(&state).await;
    for _ in 0..2 {
        assert_eq!(
            auth::verify_email(&state, &late_token, &nobody())
                .await
                .err(),
            Some(AuthError::LinkExpired)
        );
    }
    assert_eq!(snapshot(&state).await, before);
    let tokens = login(&state, &late, STRONG_PASSWORD).await;
    assert!(!me(&state, &tokens).await.expect("me").email_verified);
}

#[tokio::test]
async fn a_reset_link_expires_after_its_lifetime() {
    let mut state = mail_on(&[("PASSWORD_RESET_TTL_SECONDS", "5")]).await;
    let clock = hand_clock(&mut state);
    let (email, _) = account(&state).await;
    forgot(&state, &email).await.expect("forgot");
    let token = link(&state, &email, "password_reset").await;
    advance(&clock, Duration::seconds(5));
    let before = snapshot(&state).await;
    assert_eq!(
        auth::reset_password(&state, &token, NEW_PASSWORD, &nobody())
            .await
            .err(),
        Some(AuthError::LinkExpired)
    );
    assert_eq!(snapshot(&state).await, before);
    login(&state, &email, STRONG_PASSWORD).await;
}

#[tokio::test]
async fn a_newer_verification_link_replaces_the_older_one() {
    let state = mail_on(&[]).await;
    let (email, user) = account(&state).await;
    let older = link(&state, &email, "verify_email").await;
    resend(&state, &email).await.expect("resend");
    let newer = link(&state, &email, "verify_email").await;
    assert_ne!(older, newer);
    assert_eq!(
        count(
            &state,
            "SELECT count(*) FROM link_tokens WHERE user_id = $1 AND purpose = 'verify_email'",
            &[&user.id]
        )
        .await,
        1,
        "the older token's row is gone"
    );
    assert_eq!(
        auth::verify_email(&state, &older, &nobody()).await.err(),
        Some(AuthError::LinkInvalid)
    );
    auth::verify_email(&state, &newer, &nobody())
        .await
        .expect("the newer link works");
}

#[tokio::test]
async fn a_newer_reset_link_replaces_the_older_one() {
    let mut state = mail_on(&[]).await;
    let clock = hand_clock(&mut state);
    let (email, _) = account(&state).await;
    forgot(&state, &email).await.expect("forgot");
    let older = link(&state, &email, "password_reset").await;
    advance(&clock, Duration::seconds(60));
    forgot(&state, &email).await.expect("forgot again");
    let newer = link(&state, &email, "password_reset").await;
    assert_ne!(older, newer);
    assert_eq!(
        auth::reset_password(&state, &older, NEW_PASSWORD, &nobody())
            .await
            .err(),
        Some(AuthError::LinkInvalid)
    );
    auth::reset_password(&state, &newer, NEW_PASSWORD, &nobody())
        .await
        .expect("the newer link works");
}

#[tokio::test]
async fn a_link_of_the_other_purpose_is_invalid_and_stays_usable_for_its_own() {
    let state = mail_on(&[]).await;
    let (email, _) = account(&state).await;
    forgot(&state, &email).await.expect("forgot");
    let verify = link(&state, &email, "verify_email").await;
    let reset = link(&state, &email, "password_reset").await;
    let before = snapshot(&state).await;
    assert_eq!(
        auth::reset_password(&state, &verify, NEW_PASSWORD, &nobody())
            .await
            .err(),
        Some(AuthError::LinkInvalid)
    );
    assert_eq!(
        auth::verify_email(&state, &reset, &nobody()).await.err(),
        Some(AuthError::LinkInvalid)
    );
    assert_eq!(snapshot(&state).await, before);
    auth::verify_email(&state, &verify, &nobody())
        .await
        .expect("the verification link verifies");
    auth::reset_password(&state, &reset, NEW_PASSWORD, &nobody())
        .await
        .expect("the reset link resets");
}

#[tokio::test]
async fn hostile_link_tokens_are_invalid_and_change_nothing() {
    let state = mail_on(&[]).await;
    let (email, _) = account(&state).await;
    forgot(&state, &email).await.expect("forgot");
    let tokens = login(&state, &email, STRONG_PASSWORD).await;
    let unknown = shared::refresh::encode(&shared::refresh::generate());
    let hostile = [
        String::new(),
        "A".repeat(10 * 1024),
        "not base64url at all!".to_owned(),
        // Standard base64's alphabet, the length of a real token.
        "+/".repeat(21) + "+",
        unknown,
        tokens.refresh_token.clone(),
        tokens.access.token.clone(),
    ];
    let before = snapshot(&state).await;
    for token in &hostile {
        let shown = &token[..token.len().min(40)];
        assert_eq!(
            auth::verify_email(&state, token, &nobody()).await.err(),
            Some(AuthError::LinkInvalid),
            "verify with {shown:?}"
        );
        assert_eq!(
            auth::reset_password(&state, token, NEW_PASSWORD, &nobody())
                .await
                .err(),
            Some(AuthError::LinkInvalid),
            "reset with {shown:?}"
        );
    }
    assert_eq!(snapshot(&state).await, before);
}

// --- Reset ------------------------------------------------------------------------------------

#[tokio::test]
async fn a_reset_to_a_password_breaking_the_rules_is_refused_and_the_link_still_works() {
    let state = mail_on(&[]).await;
    let (email, _) = account(&state).await;
    forgot(&state, &email).await.expect("forgot");
    let token = link(&state, &email, "password_reset").await;
    let before = snapshot(&state).await;
    assert_eq!(
        auth::reset_password(&state, &token, WEAK_PASSWORD, &nobody())
            .await
            .err(),
        Some(AuthError::WeakPassword)
    );
    assert_eq!(
        auth::reset_password(&state, &token, &email, &nobody())
            .await
            .err(),
        Some(AuthError::WeakPassword),
        "the email itself"
    );
    assert_eq!(
        auth::reset_password(&state, &token, "short", &nobody())
            .await
            .err()
            .map(|e| e.code()),
        Some("invalid_password")
    );
    assert_eq!(snapshot(&state).await, before);
    auth::reset_password(&state, &token, NEW_PASSWORD, &nobody())
        .await
        .expect("the token still works");
    login(&state, &email, NEW_PASSWORD).await;
}

#[tokio::test]
async fn a_reset_ends_every_session_lifts_the_lock_proves_the_address_and_queues_a_notice() {
    let state = mail_on(&[
        ("LOGIN_LOCK_AFTER", "3"),
        ("LOGIN_BACKOFF_AFTER", "1000"),
        ("LOGIN_ACCOUNT_BACKOFF_AFTER", "10000"),
    ])
    .await;
    let (email, user) = account(&state).await;
    let first = login(&state, &email, STRONG_PASSWORD).await;
    let second = login(&state, &email, STRONG_PASSWORD).await;
    for _ in 0..3 {
        assert_eq!(
            auth::login(&state, creds(&email, WRONG_PASSWORD), &nobody())
                .await
                .err(),
            Some(AuthError::InvalidCredentials)
        );
    }
    assert_eq!(
        auth::login(&state, creds(&email, STRONG_PASSWORD), &nobody())
            .await
            .err(),
        Some(AuthError::AccountLocked)
    );
    forgot(&state, &email).await.expect("forgot");
    let token = link(&state, &email, "password_reset").await;
    auth::reset_password(&state, &token, NEW_PASSWORD, &nobody())
        .await
        .expect("reset");

    // Every session ended at once, and the reset started none.
    for tokens in [&first, &second] {
        assert_eq!(
            me(&state, tokens).await.err(),
            Some(AuthError::InvalidToken)
        );
        assert_eq!(
            refresh(&state, tokens).await.err(),
            Some(AuthError::InvalidToken)
        );
    }
    assert_eq!(
        count(
            &state,
            "SELECT count(*) FROM sessions WHERE user_id = $1 AND ended_at IS NULL",
            &[&user.id]
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &state,
            "SELECT count(*) FROM sessions WHERE ended_reason = 'password_reset'",
            &[]
        )
        .await,
        2
    );
    // The notice, queued by the reset's own statement.
    let mailer = state.mailer.as_ref().expect("mail on");
    let last = sealed_mail(&psql(&state).await, mailer, &email)
        .await
        .pop()
        .expect("a message");
    assert_eq!(last.notice, Notice::PasswordChanged);
    assert_eq!(events(&state, "password.reset").await, 1);
    // The token is used up; the old password is refused, the new one works despite the lock.
    assert_eq!(
        auth::reset_password(&state, &token, NEW_PASSWORD, &nobody())
            .await
            .err(),
        Some(AuthError::LinkInvalid)
    );
    assert_eq!(
        auth::login(&state, creds(&email, STRONG_PASSWORD), &nobody())
            .await
            .err(),
        Some(AuthError::InvalidCredentials)
    );
    let tokens = login(&state, &email, NEW_PASSWORD).await;
    assert!(
        me(&state, &tokens).await.expect("me").email_verified,
        "the mailbox was proven"
    );
    assert_eq!(claims_of(&tokens.access.token)["email_verified"], true);
}

// --- Forgot and resend ------------------------------------------------------------------------

#[tokio::test]
async fn forgot_and_resend_answer_alike_and_store_only_for_a_qualifying_account() {
    let mut state = mail_on(&[]).await;
    let clock = hand_clock(&mut state);
    let (unverified, a) = account(&state).await;
    let (verified, b) = account(&state).await;
    let (disabled, c) = account(&state).await;
    let token = link(&state, &verified, "verify_email").await;
    auth::verify_email(&state, &token, &nobody())
        .await
        .expect("verify");
    psql(&state)
        .await
        .execute("UPDATE users SET is_active = false WHERE id = $1", &[&c.id])
        .await
        .expect("disable");
    let addresses = [
        unverified.clone(),
        format!("  {}  ", verified.to_uppercase()),
        disabled.clone(),
        unique_email(),
        "not an address".to_owned(),
        "a@b".to_owned(),
    ];
    let stored_since = |since: DateTime<Utc>, purpose: &'static str| {
        let state = &state;
        async move {
            let links = psql(state)
                .await
                .query(
                    "SELECT user_id FROM link_tokens WHERE created_at >= $1 AND purpose = $2 ORDER BY user_id",
                    &[&since, &purpose],
                )
                .await
                .expect("links");
            let messages = psql(state)
                .await
                .query(
                    "SELECT user_id FROM outbox WHERE created_at >= $1 ORDER BY user_id",
                    &[&since],
                )
                .await
                .expect("messages");
            let ids = |rows: Vec<tokio_postgres::Row>| {
                rows.iter().map(|r| r.get::<_, Uuid>(0)).collect::<Vec<_>>()
            };
            (ids(links), ids(messages))
        }
    };

    advance(&clock, Duration::seconds(1));
    let round = now_of(&clock);
    for address in &addresses {
        let started = std::time::Instant::now();
        assert_eq!(forgot(&state, address).await, Ok(()), "forgot {address:?}");
        assert!(started.elapsed() >= std::time::Duration::from_millis(50));
    }
    let mut both = vec![a.id, b.id];
    both.sort();
    assert_eq!(
        stored_since(round, "reset_password").await,
        (both.clone(), both),
        "a reset link and its message for each active account, and only for them"
    );

    // The per-recipient limit counts forgot and resend together: a minute later.
    advance(&clock, Duration::seconds(60));
    let round = now_of(&clock);
    for address in &addresses {
        let started = std::time::Instant::now();
        assert_eq!(resend(&state, address).await, Ok(()), "resend {address:?}");
        assert!(started.elapsed() >= std::time::Duration::from_millis(50));
    }
    assert_eq!(
        stored_since(round, "verify_email").await,
        (vec![a.id], vec![a.id]),
        "a verification link only for the active, unverified account"
    );
    assert_eq!(
        count(&state, "SELECT count(*) FROM mail_requests", &[]).await,
        2 * addresses.len() as i64,
        "every request counted, account or not"
    );
}

#[tokio::test]
async fn requested_mail_is_limited_per_recipient_for_accounts_and_unknown_addresses_alike() {
    let mut state = mail_on(&[
        ("MAIL_RESEND_INTERVAL_SECONDS", "60"),
        ("MAIL_MAX_PER_HOUR", "3"),
    ])
    .await;
    let clock = hand_clock(&mut state);
    let (email, user) = account(&state).await;
    let unknown = unique_email();
    let limited = |secs| {
        Err(AuthError::TooManyRequests {
            retry_after_secs: secs,
        })
    };
    // (seconds to advance, expected answer), the same for both addresses.
    let steps: [(i64, Result<(), AuthError>); 6] = [
        (0, Ok(())),
        (20, limited(40)),
        (40, Ok(())),
        (60, Ok(())),
        // Three in the hour: the next is allowed when the first leaves it.
        (60, limited(3420)),
        (3420, Ok(())),
    ];
    for (secs, expected) in steps {
        advance(&clock, Duration::seconds(secs));
        let messages = count(
            &state,
            "SELECT count(*) FROM outbox WHERE kind = 'password_reset'",
            &[],
        )
        .await;
        for address in [&email, &unknown] {
            assert_eq!(
                forgot(&state, address).await,
                expected.clone(),
                "{address} at +{secs}s"
            );
        }
        let added = count(
            &state,
            "SELECT count(*) FROM outbox WHERE kind = 'password_reset'",
            &[],
        )
        .await
            - messages;
        assert_eq!(
            added,
            i64::from(expected.is_ok()),
            "only the account's allowed requests queue mail"
        );
    }
    assert_eq!(
        count(
            &state,
            "SELECT count(*) FROM link_tokens WHERE user_id = $1 AND purpose = 'reset_password'",
            &[&user.id]
        )
        .await,
        1
    );
}

#[tokio::test]
async fn with_mail_off_forgot_and_resend_are_unavailable_and_links_already_sent_still_work() {
    let on = mail_on(&[]).await;
    let (email, _) = account(&on).await;
    forgot(&on, &email).await.expect("forgot");
    let verify = link(&on, &email, "verify_email").await;
    let reset = link(&on, &email, "password_reset").await;
    let off = sibling(&on, &[("MAIL_ANSWER_MS", "50")]);
    assert!(off.mailer.is_none());
    let before = snapshot(&off).await;
    assert_eq!(
        forgot(&off, &email).await.err(),
        Some(AuthError::MailUnavailable)
    );
    assert_eq!(
        resend(&off, &email).await.err(),
        Some(AuthError::MailUnavailable)
    );
    assert_eq!(
        forgot(&off, &unique_email()).await.err(),
        Some(AuthError::MailUnavailable)
    );
    assert_eq!(snapshot(&off).await, before);
    let messages = count(&off, "SELECT count(*) FROM outbox", &[]).await;
    auth::verify_email(&off, &verify, &nobody())
        .await
        .expect("verify without mail");
    auth::reset_password(&off, &reset, NEW_PASSWORD, &nobody())
        .await
        .expect("reset without mail");
    assert_eq!(
        count(&off, "SELECT count(*) FROM outbox", &[]).await,
        messages,
        "no notice queued while mail is off"
    );
    login(&off, &email, NEW_PASSWORD).await;
    // Registering without mail queues nothing and leaves the address unverified.
    let (_, fresh) = account(&off).await;
    assert!(!fresh.email_verified);
    assert_eq!(
        count(
            &off,
            "SELECT count(*) FROM outbox WHERE user_id = $1",
            &[&fresh.id]
        )
        .await
            + count(
                &off,
                "SELECT count(*) FROM link_tokens WHERE user_id = $1",
                &[&fresh.id]
            )
            .await,
        0
    );
}

// --- Change password --------------------------------------------------------------------------

#[tokio::test]
async fn a_change_with_a_wrong_current_password_is_refused_and_counted_like_a_failed_login() {
    let mut state = mail_on(&[("LOGIN_BACKOFF_AFTER", "3")]).await;
    let clock = hand_clock(&mut state);
    let (email, user) = account(&state).await;
    let tokens = login(&state, &email, STRONG_PASSWORD).await;
    let hash = common::stored_hash(&state, user.id).await;
    for _ in 0..3 {
        assert_eq!(
            auth::change_password(
                &state,
                &tokens.access.token,
                WRONG_PASSWORD,
                NEW_PASSWORD,
                &nobody()
            )
            .await
            .err(),
            Some(AuthError::WrongPassword)
        );
    }
    // Counted on the login backoff's own rows: the account key of the normalized address.
    let account = store::account_key(Some(&Email::parse(&email).expect("email")), &email);
    assert_eq!(
        count(
            &state,
            "SELECT count(*) FROM login_throttle WHERE account = $1 AND failures = 3",
            &[&account]
        )
        .await,
        2,
        "the account-wide row and the network's"
    );
    let waiting = Some(AuthError::TooManyRequests {
        retry_after_secs: 1,
    });
    assert_eq!(
        auth::change_password(
            &state,
            &tokens.access.token,
            STRONG_PASSWORD,
            NEW_PASSWORD,
            &nobody()
        )
        .await
        .err(),
        waiting,
        "the right password waits too"
    );
    assert_eq!(
        auth::login(&state, creds(&email, STRONG_PASSWORD), &nobody())
            .await
            .err(),
        waiting,
        "and so does a login"
    );
    assert_eq!(common::stored_hash(&state, user.id).await, hash);
    advance(&clock, Duration::seconds(1));
    auth::change_password(
        &state,
        &tokens.access.token,
        STRONG_PASSWORD,
        NEW_PASSWORD,
        &nobody(),
    )
    .await
    .expect("after the wait");
    login(&state, &email, NEW_PASSWORD).await;
}

#[tokio::test]
async fn a_change_to_a_weak_password_is_refused_and_its_right_current_password_is_not_counted() {
    let state = mail_on(&[("LOGIN_BACKOFF_AFTER", "3")]).await;
    let (email, user) = account(&state).await;
    let tokens = login(&state, &email, STRONG_PASSWORD).await;
    let change = |current: &'static str, new: &'static str| {
        let (state, bearer) = (&state, tokens.access.token.clone());
        async move { auth::change_password(state, &bearer, current, new, &nobody()).await }
    };
    for _ in 0..2 {
        assert_eq!(
            change(WRONG_PASSWORD, NEW_PASSWORD).await.err(),
            Some(AuthError::WrongPassword)
        );
    }
    let hash = common::stored_hash(&state, user.id).await;
    assert_eq!(
        change(STRONG_PASSWORD, WEAK_PASSWORD).await.err(),
        Some(AuthError::WeakPassword)
    );
    assert_eq!(
        change(STRONG_PASSWORD, "short")
            .await
            .err()
            .map(|e| e.code()),
        Some("invalid_password")
    );
    assert_eq!(common::stored_hash(&state, user.id).await, hash);
    // Each refusal of a new password is audited with its reason, as register's are.
    let reasons: Vec<String> = common::psql(&state)
        .await
        .query(
            "SELECT reason FROM auth_events WHERE user_id = $1 AND event = 'password.rejected' \
             ORDER BY id",
            &[&user.id],
        )
        .await
        .expect("audit")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(reasons, ["weak_password", "invalid_password"]);
    // Had the right password counted as a third failure, this attempt would wait (429).
    assert_eq!(
        change(WRONG_PASSWORD, NEW_PASSWORD).await.err(),
        Some(AuthError::WrongPassword)
    );
    change(STRONG_PASSWORD, NEW_PASSWORD)
        .await
        .expect("changed");
}

#[tokio::test]
async fn a_password_change_keeps_the_calling_session_ends_the_others_and_queues_a_notice() {
    let state = mail_on(&[]).await;
    let (email, user) = account(&state).await;
    let caller = login(&state, &email, STRONG_PASSWORD).await;
    let other = login(&state, &email, STRONG_PASSWORD).await;
    auth::change_password(
        &state,
        &caller.access.token,
        STRONG_PASSWORD,
        NEW_PASSWORD,
        &nobody(),
    )
    .await
    .expect("changed");
    assert_eq!(
        me(&state, &caller).await.expect("the caller lives on").id,
        user.id
    );
    assert_eq!(
        me(&state, &other).await.err(),
        Some(AuthError::InvalidToken)
    );
    assert_eq!(
        refresh(&state, &other).await.err(),
        Some(AuthError::InvalidToken)
    );
    refresh(&state, &caller)
        .await
        .expect("the caller's refresh token works");
    let mailer = state.mailer.as_ref().expect("mail on");
    let last = sealed_mail(&psql(&state).await, mailer, &email)
        .await
        .pop()
        .expect("a message");
    assert_eq!(last.notice, Notice::PasswordChanged);
    assert_eq!(events(&state, "password.changed").await, 1);
    assert_eq!(
        auth::login(&state, creds(&email, STRONG_PASSWORD), &nobody())
            .await
            .err(),
        Some(AuthError::InvalidCredentials)
    );
    login(&state, &email, NEW_PASSWORD).await;
}

// --- Delete -----------------------------------------------------------------------------------

#[tokio::test]
async fn deleting_with_a_wrong_password_is_refused_and_counted() {
    let mut state = mail_on(&[("LOGIN_BACKOFF_AFTER", "3")]).await;
    let clock = hand_clock(&mut state);
    let (email, user) = account(&state).await;
    let tokens = login(&state, &email, STRONG_PASSWORD).await;
    for _ in 0..3 {
        assert_eq!(
            auth::delete_account(&state, &tokens.access.token, WRONG_PASSWORD, &nobody())
                .await
                .err(),
            Some(AuthError::WrongPassword)
        );
    }
    assert_eq!(
        auth::delete_account(&state, &tokens.access.token, STRONG_PASSWORD, &nobody())
            .await
            .err(),
        Some(AuthError::TooManyRequests {
            retry_after_secs: 1
        })
    );
    assert_eq!(
        count(
            &state,
            "SELECT count(*) FROM users WHERE id = $1",
            &[&user.id]
        )
        .await,
        1
    );
    advance(&clock, Duration::seconds(1));
    auth::delete_account(&state, &tokens.access.token, STRONG_PASSWORD, &nobody())
        .await
        .expect("after the wait");
}

#[tokio::test]
async fn deleting_the_account_takes_its_rows_and_keeps_its_audit() {
    let state = mail_on(&[]).await;
    let (email, user) = account(&state).await;
    let (_, bystander) = account(&state).await;
    let caller = login(&state, &email, STRONG_PASSWORD).await;
    let other = refresh(&state, &login(&state, &email, STRONG_PASSWORD).await)
        .await
        .expect("refresh");
    forgot(&state, &email).await.expect("forgot");
    let audit_before = count(
        &state,
        "SELECT count(*) FROM auth_events WHERE user_id = $1",
        &[&user.id],
    )
    .await;
    auth::delete_account(&state, &caller.access.token, STRONG_PASSWORD, &nobody())
        .await
        .expect("deleted");
    for (table, sql) in [
        ("users", "SELECT count(*) FROM users WHERE id = $1"),
        (
            "sessions",
            "SELECT count(*) FROM sessions WHERE user_id = $1",
        ),
        (
            "link_tokens",
            "SELECT count(*) FROM link_tokens WHERE user_id = $1",
        ),
        ("outbox", "SELECT count(*) FROM outbox WHERE user_id = $1"),
    ] {
        assert_eq!(count(&state, sql, &[&user.id]).await, 0, "{table}");
    }
    assert_eq!(
        count(&state, "SELECT count(*) FROM refresh_tokens", &[]).await,
        0,
        "the only sessions were the deleted user's"
    );
    let account = store::account_key(Some(&Email::parse(&email).expect("email")), &email);
    assert_eq!(
        count(
            &state,
            "SELECT count(*) FROM login_throttle WHERE account = $1",
            &[&account]
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &state,
            "SELECT count(*) FROM auth_events WHERE user_id = $1",
            &[&user.id]
        )
        .await,
        audit_before + 1,
        "every audit row kept, and user.deleted added"
    );
    assert_eq!(
        count(
            &state,
            "SELECT count(*) FROM auth_events WHERE user_id = $1 AND event = 'user.deleted'",
            &[&user.id]
        )
        .await,
        1
    );
    for tokens in [&caller, &other] {
        assert_eq!(
            me(&state, tokens).await.err(),
            Some(AuthError::InvalidToken)
        );
        assert_eq!(
            refresh(&state, tokens).await.err(),
            Some(AuthError::InvalidToken)
        );
    }
    assert_eq!(
        auth::delete_account(&state, &caller.access.token, STRONG_PASSWORD, &nobody())
            .await
            .err(),
        Some(AuthError::InvalidToken)
    );
    assert_eq!(
        count(
            &state,
            "SELECT count(*) FROM users WHERE id = $1",
            &[&bystander.id]
        )
        .await,
        1,
        "nobody else's"
    );
}

// --- Sessions ---------------------------------------------------------------------------------

#[tokio::test]
async fn sessions_are_listed_newest_first_with_their_login_origin_and_earliest_limit() {
    let mut state = fresh_state(&[
        ("SESSION_IDLE_SECONDS", "7200"),
        ("SESSION_MAX_SECONDS", "10800"),
    ])
    .await;
    let clock = hand_clock(&mut state);
    let (email, _) = account(&state).await;
    let laptop = Origin {
        source_ip: Some("198.51.100.1".into()),
        user_agent: Some("laptop browser".into()),
    };
    let phone = Origin {
        source_ip: Some("2001:db8::1".into()),
        user_agent: Some("phone app".into()),
    };
    let older = auth::login(&state, creds(&email, STRONG_PASSWORD), &laptop)
        .await
        .expect("login");
    // 90 minutes later the laptop refreshes from elsewhere: it stays listed with its login's
    // origin, and its idle limit now ends after its absolute one.
    advance(&clock, Duration::minutes(90));
    let elsewhere = Origin {
        source_ip: Some("203.0.113.9".into()),
        user_agent: Some("elsewhere".into()),
    };
    auth::refresh(&state, &older.refresh_token, &elsewhere)
        .await
        .expect("refresh");
    advance(&clock, Duration::minutes(1));
    let newer = auth::login(&state, creds(&email, STRONG_PASSWORD), &phone)
        .await
        .expect("login");
    let listed = auth::list_sessions(&state, &newer.access.token, &nobody())
        .await
        .expect("list");
    assert_eq!(
        listed.iter().map(|s| s.id).collect::<Vec<_>>(),
        [session_id(&newer), session_id(&older)],
        "newest first"
    );
    let (n, o) = (&listed[0], &listed[1]);
    assert!(n.current && !o.current);
    assert_eq!(
        (n.source_ip.as_deref(), n.user_agent.as_deref()),
        (Some("2001:db8::1"), Some("phone app"))
    );
    assert_eq!(
        (o.source_ip.as_deref(), o.user_agent.as_deref()),
        (Some("198.51.100.1"), Some("laptop browser"))
    );
    assert!(o.created_at < n.created_at);
    assert!(o.last_used_at > o.created_at, "the refresh moved it");
    // Idle ends first for the fresh one, the absolute limit for the refreshed one.
    assert_eq!(n.expires_at, n.last_used_at + Duration::seconds(7200));
    assert_eq!(o.expires_at, o.created_at + Duration::seconds(10800));
    let from_older = auth::list_sessions(&state, &older.access.token, &nobody())
        .await
        .expect("list");
    assert_eq!(
        from_older.iter().map(|s| s.current).collect::<Vec<_>>(),
        [false, true]
    );
}

#[tokio::test]
async fn ending_another_of_ones_sessions_refuses_its_tokens_at_once() {
    let state = fresh_state(&[]).await;
    let (email, _) = account(&state).await;
    let caller = login(&state, &email, STRONG_PASSWORD).await;
    let other = login(&state, &email, STRONG_PASSWORD).await;
    let target = session_id(&other).to_string();
    auth::revoke_session(&state, &caller.access.token, &target, &nobody())
        .await
        .expect("revoked");
    assert_eq!(
        me(&state, &other).await.err(),
        Some(AuthError::InvalidToken)
    );
    assert_eq!(
        refresh(&state, &other).await.err(),
        Some(AuthError::InvalidToken)
    );
    me(&state, &caller).await.expect("the caller lives on");
    let listed = auth::list_sessions(&state, &caller.access.token, &nobody())
        .await
        .expect("list");
    assert_eq!(
        listed.iter().map(|s| s.id).collect::<Vec<_>>(),
        [session_id(&caller)]
    );
    assert_eq!(events(&state, "session.revoked").await, 1);
    assert_eq!(
        auth::revoke_session(&state, &caller.access.token, &target, &nobody())
            .await
            .err(),
        Some(AuthError::SessionNotFound),
        "an ended session is no longer one of the caller's"
    );
}

#[tokio::test]
async fn another_users_session_is_not_found_and_lives_on() {
    let state = fresh_state(&[]).await;
    let (ann, _) = account(&state).await;
    let (bob, _) = account(&state).await;
    let ann_tokens = login(&state, &ann, STRONG_PASSWORD).await;
    let bob_tokens = login(&state, &bob, STRONG_PASSWORD).await;
    let before = snapshot(&state).await;
    for target in [
        session_id(&bob_tokens).to_string(),
        Uuid::new_v4().to_string(),
        "not-a-session-id".to_owned(),
        String::new(),
    ] {
        assert_eq!(
            auth::revoke_session(&state, &ann_tokens.access.token, &target, &nobody())
                .await
                .err(),
            Some(AuthError::SessionNotFound),
            "{target:?}"
        );
    }
    assert_eq!(snapshot(&state).await, before);
    me(&state, &bob_tokens)
        .await
        .expect("bob's session lives on");
    refresh(&state, &bob_tokens).await.expect("and refreshes");
}

#[tokio::test]
async fn ending_a_session_from_an_ended_one_is_an_invalid_token() {
    let state = fresh_state(&[]).await;
    let (email, _) = account(&state).await;
    let ended = login(&state, &email, STRONG_PASSWORD).await;
    let other = login(&state, &email, STRONG_PASSWORD).await;
    auth::logout(&state, &ended.access.token, false, &nobody())
        .await
        .expect("logout");
    let before = snapshot(&state).await;
    assert_eq!(
        auth::revoke_session(
            &state,
            &ended.access.token,
            &session_id(&other).to_string(),
            &nobody()
        )
        .await
        .err(),
        Some(AuthError::InvalidToken)
    );
    assert_eq!(
        auth::list_sessions(&state, &ended.access.token, &nobody())
            .await
            .err(),
        Some(AuthError::InvalidToken)
    );
    assert_eq!(snapshot(&state).await, before);
    me(&state, &other)
        .await
        .expect("the other session lives on");
}

// --- Required verification --------------------------------------------------------------------

#[tokio::test]
async fn with_verification_required_an_unverified_account_gets_no_session_until_verified() {
    let state = mail_on(&[("REQUIRE_VERIFIED_EMAIL", "true")]).await;
    let (email, user) = account(&state).await;
    let (disabled, d) = account(&state).await;
    psql(&state)
        .await
        .execute("UPDATE users SET is_active = false WHERE id = $1", &[&d.id])
        .await
        .expect("disable");
    assert_eq!(
        auth::login(&state, creds(&email, STRONG_PASSWORD), &nobody())
            .await
            .err(),
        Some(AuthError::EmailNotVerified)
    );
    assert_eq!(
        auth::login(&state, creds(&email, WRONG_PASSWORD), &nobody())
            .await
            .err(),
        Some(AuthError::InvalidCredentials),
        "a wrong password tells nothing more"
    );
    assert_eq!(
        auth::login(&state, creds(&disabled, STRONG_PASSWORD), &nobody())
            .await
            .err(),
        Some(AuthError::AccountDisabled),
        "disabled is checked first"
    );
    assert_eq!(count(&state, "SELECT count(*) FROM sessions", &[]).await, 0);
    let token = link(&state, &email, "verify_email").await;
    auth::verify_email(&state, &token, &nobody())
        .await
        .expect("verify");
    let tokens = login(&state, &email, STRONG_PASSWORD).await;
    let claims = claims_of(&tokens.access.token);
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["sub"], user.id.to_string());
    let next = refresh(&state, &tokens).await.expect("refresh");
    assert_eq!(claims_of(&next.access.token)["email_verified"], true);
}

#[tokio::test]
async fn an_unverified_accounts_access_token_says_so() {
    let state = mail_on(&[]).await;
    let (email, _) = account(&state).await;
    let tokens = login(&state, &email, STRONG_PASSWORD).await;
    assert_eq!(claims_of(&tokens.access.token)["email_verified"], false);
}

// --- The SQL's account key --------------------------------------------------------------------

#[tokio::test]
async fn the_sql_account_key_is_the_stores() {
    let state = fresh_state(&[]).await;
    let client = psql(&state).await;
    for raw in [
        "ann@example.com",
        "  Ann.Lee+Tag@Example.COM ",
        "a@münchen.de",
        "o'neil@xn--bcher-kva.example",
        "x@bücher.example",
    ] {
        let email = Email::parse(raw).expect("a valid address");
        // What auth_reauth_attempt computes from the stored address.
        let sql: Vec<u8> = client
            .query_one(
                "SELECT sha256(convert_to($1::text, 'UTF8'))",
                &[&email.as_str()],
            )
            .await
            .expect("sha256")
            .get(0);
        assert_eq!(sql, store::account_key(Some(&email), raw), "{raw}");
    }
    assert_eq!(
        Email::parse("a@münchen.de").expect("idn").as_str(),
        "a@xn--mnchen-3ya.de"
    );
}

// --- Races, and what else a careful client expects --------------------------------------------

#[tokio::test]
async fn two_resets_with_one_link_at_once_change_the_password_once() {
    let state = mail_on(&[]).await;
    let (email, _) = account(&state).await;
    forgot(&state, &email).await.expect("forgot");
    let token = link(&state, &email, "password_reset").await;
    const OTHER: &str = "marmalade lighthouse bicycle 58";
    let origin = nobody();
    let (one, two) = tokio::join!(
        auth::reset_password(&state, &token, NEW_PASSWORD, &origin),
        auth::reset_password(&state, &token, OTHER, &origin),
    );
    let outcomes = [one.clone(), two.clone()];
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&Err(AuthError::LinkInvalid)),
        "{outcomes:?}"
    );
    assert_eq!(events(&state, "password.reset").await, 1);
    let winner = if one.is_ok() { NEW_PASSWORD } else { OTHER };
    let loser = if one.is_ok() { OTHER } else { NEW_PASSWORD };
    login(&state, &email, winner).await;
    assert_eq!(
        auth::login(&state, creds(&email, loser), &nobody())
            .await
            .err(),
        Some(AuthError::InvalidCredentials)
    );
}

#[tokio::test]
async fn two_verifications_with_one_link_at_once_verify_once() {
    let state = mail_on(&[]).await;
    let (email, _) = account(&state).await;
    let token = link(&state, &email, "verify_email").await;
    let origin = nobody();
    let (one, two) = tokio::join!(
        auth::verify_email(&state, &token, &origin),
        auth::verify_email(&state, &token, &origin),
    );
    let outcomes = [one.map(|u| u.email_verified), two.map(|u| u.email_verified)];
    assert_eq!(
        outcomes.iter().filter(|o| **o == Ok(true)).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&Err(AuthError::LinkInvalid)),
        "{outcomes:?}"
    );
    assert_eq!(events(&state, "email.verified").await, 1);
}

#[tokio::test]
async fn two_requests_for_one_recipient_at_once_queue_one_mail() {
    let state = mail_on(&[("MAIL_RESEND_INTERVAL_SECONDS", "60")]).await;
    let (email, user) = account(&state).await;
    let (one, two) = tokio::join!(forgot(&state, &email), forgot(&state, &email));
    let outcomes = [one, two];
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Err(AuthError::TooManyRequests { .. }))),
        "{outcomes:?}"
    );
    assert_eq!(
        count(
            &state,
            "SELECT count(*) FROM outbox WHERE user_id = $1 AND kind = 'password_reset'",
            &[&user.id]
        )
        .await,
        1
    );
    assert_eq!(events(&state, "password.reset_requested").await, 1);
}

#[tokio::test]
async fn the_recipient_limit_is_keyed_by_the_normalized_address() {
    let state = mail_on(&[]).await;
    let limited =
        |result: Result<(), AuthError>| matches!(result, Err(AuthError::TooManyRequests { .. }));
    let (email, _) = account(&state).await;
    forgot(&state, &email).await.expect("forgot");
    assert!(limited(
        forgot(&state, &format!("  {}\u{a0}", email.to_uppercase())).await
    ));
    // An internationalized domain and its punycode form are one recipient, account or not.
    resend(&state, "someone@münchen.de").await.expect("resend");
    assert!(limited(resend(&state, "Someone@xn--mnchen-3ya.de").await));
    // Malformed input is keyed by its trimmed, lower-cased form.
    forgot(&state, " Not An Address ").await.expect("forgot");
    assert!(limited(forgot(&state, "not an address").await));
}

#[tokio::test]
async fn forgot_and_resend_audit_only_what_they_sent() {
    let state = mail_on(&[]).await;
    let (email, user) = account(&state).await;
    let registered = count(
        &state,
        "SELECT count(*) FROM auth_events WHERE event = 'email.verification_sent' AND user_id = $1",
        &[&user.id],
    )
    .await;
    assert_eq!(registered, 1, "the registration's mail");
    forgot(&state, &email).await.expect("forgot");
    forgot(&state, &unique_email()).await.expect("forgot");
    resend(&state, &unique_email()).await.expect("resend");
    assert_eq!(events(&state, "password.reset_requested").await, 1);
    assert_eq!(events(&state, "email.verification_sent").await, 1);
}

#[tokio::test]
async fn ending_ones_own_session_refuses_its_token_at_once() {
    let state = fresh_state(&[]).await;
    let (email, _) = account(&state).await;
    let tokens = login(&state, &email, STRONG_PASSWORD).await;
    auth::revoke_session(
        &state,
        &tokens.access.token,
        &session_id(&tokens).to_string(),
        &nobody(),
    )
    .await
    .expect("revoked");
    assert_eq!(
        me(&state, &tokens).await.err(),
        Some(AuthError::InvalidToken)
    );
    assert_eq!(
        refresh(&state, &tokens).await.err(),
        Some(AuthError::InvalidToken)
    );
}

#[tokio::test]
async fn an_idle_session_is_no_longer_listed_or_allowed_to_list() {
    let mut state = fresh_state(&[("SESSION_IDLE_SECONDS", "3600")]).await;
    let clock = hand_clock(&mut state);
    let (email, _) = account(&state).await;
    let idle = login(&state, &email, STRONG_PASSWORD).await;
    advance(&clock, Duration::minutes(30));
    let fresh = login(&state, &email, STRONG_PASSWORD).await;
    advance(&clock, Duration::minutes(31));
    let listed = auth::list_sessions(&state, &fresh.access.token, &nobody())
        .await
        .expect("list");
    assert_eq!(
        listed.iter().map(|s| s.id).collect::<Vec<_>>(),
        [session_id(&fresh)]
    );
    assert_eq!(
        auth::list_sessions(&state, &idle.access.token, &nobody())
            .await
            .err(),
        Some(AuthError::InvalidToken)
    );
}

#[tokio::test]
async fn change_and_delete_from_an_ended_session_are_invalid_tokens_and_change_nothing() {
    let state = mail_on(&[]).await;
    let (email, _) = account(&state).await;
    let ended = login(&state, &email, STRONG_PASSWORD).await;
    auth::logout(&state, &ended.access.token, false, &nobody())
        .await
        .expect("logout");
    let before = snapshot(&state).await;
    assert_eq!(
        auth::change_password(
            &state,
            &ended.access.token,
            STRONG_PASSWORD,
            NEW_PASSWORD,
            &nobody()
        )
        .await
        .err(),
        Some(AuthError::InvalidToken)
    );
    assert_eq!(
        auth::delete_account(&state, &ended.access.token, STRONG_PASSWORD, &nobody())
            .await
            .err(),
        Some(AuthError::InvalidToken)
    );
    assert_eq!(snapshot(&state).await, before);
    login(&state, &email, STRONG_PASSWORD).await;
}

#[tokio::test]
async fn a_refresh_after_verification_carries_the_proven_address() {
    let state = mail_on(&[]).await;
    let (email, _) = account(&state).await;
    let tokens = login(&state, &email, STRONG_PASSWORD).await;
    assert_eq!(claims_of(&tokens.access.token)["email_verified"], false);
    let token = link(&state, &email, "verify_email").await;
    auth::verify_email(&state, &token, &nobody())
        .await
        .expect("verify");
    let next = refresh(&state, &tokens).await.expect("refresh");
    assert_eq!(claims_of(&next.access.token)["email_verified"], true);
}

#[tokio::test]
async fn a_registrations_verification_mail_is_not_held_back_by_the_recipient_limit() {
    let state = mail_on(&[("MAIL_MAX_PER_HOUR", "1")]).await;
    let email = unique_email();
    forgot(&state, &email)
        .await
        .expect("forgot, no account yet");
    assert!(matches!(
        forgot(&state, &email).await,
        Err(AuthError::TooManyRequests { .. })
    ));
    auth::register(&state, creds(&email, STRONG_PASSWORD), &nobody())
        .await
        .expect("register");
    let token = link(&state, &email, "verify_email").await;
    auth::verify_email(&state, &token, &nobody())
        .await
        .expect("the registration's link arrived and works");
}

#[tokio::test]
async fn a_limited_requests_retry_after_is_when_the_next_one_is_allowed() {
    let mut state = mail_on(&[
        ("MAIL_RESEND_INTERVAL_SECONDS", "60"),
        ("MAIL_MAX_PER_HOUR", "1"),
    ])
    .await;
    let clock = hand_clock(&mut state);
    let email = unique_email();
    forgot(&state, &email).await.expect("forgot");
    advance(&clock, Duration::seconds(30));
    // Both limits hold: the interval ends in 30 s, the hour's one request leaves it in 3570 s.
    assert_eq!(
        forgot(&state, &email).await,
        Err(AuthError::TooManyRequests {
            retry_after_secs: 3570
        })
    );
    advance(&clock, Duration::seconds(3570));
    forgot(&state, &email)
        .await
        .expect("allowed when Retry-After said");
}

#[tokio::test]
async fn with_verification_required_a_right_password_is_never_counted_as_a_failure() {
    let state = mail_on(&[
        ("REQUIRE_VERIFIED_EMAIL", "true"),
        ("LOGIN_BACKOFF_AFTER", "3"),
    ])
    .await;
    let (email, _) = account(&state).await;
    // The documented answer to the right password of an unverified account, every time.
    for attempt in 1..=5 {
        assert_eq!(
            auth::login(&state, creds(&email, STRONG_PASSWORD), &nobody())
                .await
                .err(),
            Some(AuthError::EmailNotVerified),
            "attempt {attempt}"
        );
    }
    let token = link(&state, &email, "verify_email").await;
    auth::verify_email(&state, &token, &nobody())
        .await
        .expect("verify");
    login(&state, &email, STRONG_PASSWORD).await;
}

/// Over the address window, the account routes that take no bearer token do none of their
/// work: no link used or stored, no message queued, no recipient counted; the refusal is the
/// window's (`rate_limit.exceeded`), never the per-recipient limit's.
#[tokio::test]
async fn the_account_routes_over_the_window_change_nothing_but_the_windows_audit() {
    let state = mail_on(&[("IP_RATE_LIMIT_PER_MINUTE", "2")]).await;
    let (email, _) = account(&state).await;
    let verify = link(&state, &email, "verify_email").await;
    let from = common::from("203.0.113.20");
    for _ in 0..2 {
        auth::check_source_address(&state, &from, "login")
            .await
            .expect("counted");
    }
    let before = snapshot(&state).await;
    let fresh = || {
        sibling(
            &state,
            &[("SMTP_URL", CLOSED_SMTP), ("IP_RATE_LIMIT_PER_MINUTE", "2")],
        )
    };
    let started = tokio::time::Instant::now();
    let answers = [
        auth::request_mail(&fresh(), MailAsk::PasswordReset, &email, &from, started).await,
        auth::request_mail(&fresh(), MailAsk::Verification, &email, &from, started).await,
        auth::verify_email(&fresh(), &verify, &from).await.map(drop),
        auth::verify_email(&fresh(), "not a token", &from)
            .await
            .map(drop),
        auth::reset_password(&fresh(), "not a token", STRONG_PASSWORD, &from).await,
    ];
    for (i, answer) in answers.into_iter().enumerate() {
        assert!(
            matches!(answer, Err(AuthError::TooManyRequests { .. })),
            "request {i}: {answer:?}"
        );
    }
    assert_eq!(snapshot(&state).await, before, "nothing changed");
    assert_eq!(events(&state, "mail.limited").await, 0);
    let refusals = count(
        &state,
        "SELECT coalesce(sum(count), 0)::bigint FROM auth_events WHERE event = 'rate_limit.exceeded'",
        &[],
    )
    .await;
    assert_eq!(refusals, 5);
    // The verification link was left alone: it still works from elsewhere.
    auth::verify_email(&state, &verify, &nobody())
        .await
        .expect("the link is still usable");
}
