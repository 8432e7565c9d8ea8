//! Sessions, rotating refresh tokens, logout, the limits against guessing and the audit log,
//! against a real Postgres, with a hand-set clock instead of sleeps.

mod common;

use chrono::Duration;
use common::{STRONG_PASSWORD, advance, fresh_state, hand_clock, psql, unique_email};
use shared::{
    AppState,
    auth::{self, Credentials, Tokens},
    error::AuthError,
    origin::Origin,
};

fn creds(email: &str, password: &str) -> Credentials {
    Credentials {
        email: email.to_owned(),
        password: password.to_owned(),
    }
}

fn nobody() -> Origin {
    Origin::default()
}

async fn account(state: &AppState) -> String {
    let email = unique_email();
    auth::register(state, creds(&email, STRONG_PASSWORD), &nobody())
        .await
        .expect("register");
    email
}

async fn login(state: &AppState, email: &str) -> Tokens {
    auth::login(state, creds(email, STRONG_PASSWORD), &nobody())
        .await
        .expect("login")
}

async fn me(state: &AppState, tokens: &Tokens) -> Result<shared::store::User, AuthError> {
    auth::current_user(state, &tokens.access.token, &nobody()).await
}

#[tokio::test]
async fn login_returns_an_opaque_refresh_token_stored_only_as_a_hash() {
    let state = fresh_state(&[]).await;
    let email = account(&state).await;
    let tokens = login(&state, &email).await;
    assert_eq!(tokens.refresh_token.len(), 43, "256 bits, base64url");
    let rows = psql(&state)
        .await
        .query("SELECT hash FROM refresh_tokens", &[])
        .await
        .expect("q");
    assert_eq!(rows.len(), 1);
    let stored: Vec<u8> = rows[0].get(0);
    assert_eq!(stored.len(), 32);
    assert!(!String::from_utf8_lossy(&stored).contains(&tokens.refresh_token));
    let claims =
        jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(&tokens.access.token)
            .expect("jwt");
    assert!(uuid::Uuid::parse_str(claims.claims["sid"].as_str().expect("sid")).is_ok());
}

#[tokio::test]
async fn a_refresh_rotates_and_a_race_inside_the_grace_window_gets_the_same_successor() {
    let mut state = fresh_state(&[]).await;
    let clock = hand_clock(&mut state);
    let email = account(&state).await;
    let first = login(&state, &email).await;
    let second = auth::refresh(&state, &first.refresh_token, &nobody())
        .await
        .expect("refresh");
    assert_ne!(second.refresh_token, first.refresh_token);
    assert!(me(&state, &second).await.is_ok());
    advance(&clock, Duration::seconds(9));
    let racing = auth::refresh(&state, &first.refresh_token, &nobody())
        .await
        .expect("inside the grace window");
    assert_eq!(
        racing.refresh_token, second.refresh_token,
        "the same successor"
    );
    assert_ne!(
        racing.access.token, second.access.token,
        "a fresh access token"
    );
    // The successor keeps working and rotates on.
    let third = auth::refresh(&state, &second.refresh_token, &nobody())
        .await
        .expect("successor rotates");
    assert!(me(&state, &third).await.is_ok());
}

#[tokio::test]
async fn two_clients_racing_with_one_refresh_token_both_succeed_with_one_successor() {
    let state = fresh_state(&[("DATABASE_POOL_MAX_SIZE", "4")]).await;
    let email = account(&state).await;
    let tokens = login(&state, &email).await;
    let client = nobody();
    let (a, b) = tokio::join!(
        auth::refresh(&state, &tokens.refresh_token, &client),
        auth::refresh(&state, &tokens.refresh_token, &client)
    );
    let (a, b) = (a.expect("first client"), b.expect("second client"));
    assert_eq!(a.refresh_token, b.refresh_token);
}

#[tokio::test]
async fn reuse_after_the_grace_window_ends_that_session_only() {
    let mut state = fresh_state(&[]).await;
    let clock = hand_clock(&mut state);
    let email = account(&state).await;
    let stolen = login(&state, &email).await;
    let other_device = login(&state, &email).await;
    let rotated = auth::refresh(&state, &stolen.refresh_token, &nobody())
        .await
        .expect("rotate");
    advance(&clock, Duration::seconds(11));
    assert_eq!(
        auth::refresh(&state, &stolen.refresh_token, &nobody())
            .await
            .err(),
        Some(AuthError::InvalidToken)
    );
    // The whole session ended: its newest refresh and access tokens too.
    assert_eq!(
        auth::refresh(&state, &rotated.refresh_token, &nobody())
            .await
            .err(),
        Some(AuthError::InvalidToken)
    );
    assert_eq!(
        me(&state, &rotated).await.err(),
        Some(AuthError::InvalidToken)
    );
    assert!(
        me(&state, &other_device).await.is_ok(),
        "the user's other sessions live on"
    );
    let events = psql(&state)
        .await
        .query(
            "SELECT count(*) FROM auth_events WHERE event = 'refresh.reuse_detected'",
            &[],
        )
        .await
        .expect("q");
    assert_eq!(events[0].get::<_, i64>(0), 1);
}

#[tokio::test]
async fn sessions_end_after_the_idle_limit_and_at_the_absolute_limit() {
    let mut state = fresh_state(&[]).await;
    let clock = hand_clock(&mut state);
    let email = account(&state).await;
    let idle = login(&state, &email).await;
    advance(&clock, Duration::days(7) + Duration::seconds(1));
    assert_eq!(
        me(&state, &idle).await.err(),
        Some(AuthError::InvalidToken),
        "idle access token"
    );
    assert_eq!(
        auth::refresh(&state, &idle.refresh_token, &nobody())
            .await
            .err(),
        Some(AuthError::InvalidToken)
    );

    // Refreshing every 6 days keeps a session from idling, but not past 30 days.
    let mut tokens = login(&state, &email).await;
    for _ in 0..4 {
        advance(&clock, Duration::days(6));
        tokens = auth::refresh(&state, &tokens.refresh_token, &nobody())
            .await
            .expect("still live");
    }
    advance(&clock, Duration::days(6) + Duration::seconds(1));
    assert_eq!(
        auth::refresh(&state, &tokens.refresh_token, &nobody())
            .await
            .err(),
        Some(AuthError::InvalidToken)
    );
}

#[tokio::test]
async fn logout_ends_one_session_at_once_or_all_with_global_scope() {
    let state = fresh_state(&[]).await;
    let email = account(&state).await;
    let (a, b, c) = (
        login(&state, &email).await,
        login(&state, &email).await,
        login(&state, &email).await,
    );
    auth::logout(&state, &a.access.token, false, &nobody())
        .await
        .expect("logout");
    assert_eq!(
        me(&state, &a).await.err(),
        Some(AuthError::InvalidToken),
        "before the token expires"
    );
    assert_eq!(
        auth::logout(&state, &a.access.token, false, &nobody())
            .await
            .err(),
        Some(AuthError::InvalidToken)
    );
    assert_eq!(
        auth::refresh(&state, &a.refresh_token, &nobody())
            .await
            .err(),
        Some(AuthError::InvalidToken)
    );
    assert!(me(&state, &b).await.is_ok());
    auth::logout(&state, &b.access.token, true, &nobody())
        .await
        .expect("global logout");
    assert_eq!(me(&state, &b).await.err(), Some(AuthError::InvalidToken));
    assert_eq!(me(&state, &c).await.err(), Some(AuthError::InvalidToken));
}

#[tokio::test]
async fn refresh_tokens_and_access_tokens_cannot_pass_for_each_other() {
    let state = fresh_state(&[]).await;
    let email = account(&state).await;
    let tokens = login(&state, &email).await;
    assert_eq!(
        auth::current_user(&state, &tokens.refresh_token, &nobody())
            .await
            .err(),
        Some(AuthError::InvalidToken)
    );
    assert_eq!(
        auth::refresh(&state, &tokens.access.token, &nobody())
            .await
            .err(),
        Some(AuthError::InvalidToken)
    );
}

fn retry_after(err: Option<AuthError>) -> u64 {
    match err {
        Some(AuthError::TooManyRequests { retry_after_secs }) => retry_after_secs,
        other => panic!("expected 429, got {other:?}"),
    }
}

#[tokio::test]
async fn failed_logins_back_off_exponentially_and_a_success_resets() {
    let mut state = fresh_state(&[]).await;
    let clock = hand_clock(&mut state);
    let email = account(&state).await;
    let wrong = || creds(&email, "a wrong password here");
    for _ in 0..5 {
        assert_eq!(
            auth::login(&state, wrong(), &nobody()).await.err(),
            Some(AuthError::InvalidCredentials)
        );
    }
    // After the 5th failure: wait 1 s. Attempts during the wait are refused unchecked and do not count.
    assert_eq!(
        retry_after(
            auth::login(&state, creds(&email, STRONG_PASSWORD), &nobody())
                .await
                .err()
        ),
        1
    );
    assert_eq!(
        retry_after(auth::login(&state, wrong(), &nobody()).await.err()),
        1
    );
    for expected in [2, 4, 8] {
        advance(&clock, Duration::seconds(expected / 2));
        assert_eq!(
            auth::login(&state, wrong(), &nobody()).await.err(),
            Some(AuthError::InvalidCredentials)
        );
        assert_eq!(
            retry_after(auth::login(&state, wrong(), &nobody()).await.err()),
            expected as u64
        );
    }
    advance(&clock, Duration::seconds(8));
    assert!(
        auth::login(&state, creds(&email, STRONG_PASSWORD), &nobody())
            .await
            .is_ok(),
        "the right password after the wait"
    );
    // The success reset the count: one failure is just a failure again.
    assert_eq!(
        auth::login(&state, wrong(), &nobody()).await.err(),
        Some(AuthError::InvalidCredentials)
    );
    assert!(
        auth::login(&state, creds(&email, STRONG_PASSWORD), &nobody())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn the_backoff_is_capped_and_unknown_emails_are_limited_alike() {
    let mut state = fresh_state(&[("LOGIN_BACKOFF_MAX_SECONDS", "900")]).await;
    let clock = hand_clock(&mut state);
    let unknown = "Nobody.Here@Example.com ";
    let mut last = 0;
    for _ in 0..40 {
        match auth::login(&state, creds(unknown, "whatever it is"), &nobody())
            .await
            .err()
        {
            Some(AuthError::InvalidCredentials) => {}
            Some(AuthError::TooManyRequests { retry_after_secs }) => {
                last = retry_after_secs;
                advance(&clock, Duration::seconds(retry_after_secs as i64));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(last, 900, "capped at LOGIN_BACKOFF_MAX_SECONDS");
    // Keyed by the normalized form: another spelling is the same key, so right after its
    // counted failure the first spelling has to wait.
    advance(&clock, Duration::seconds(900));
    assert_eq!(
        auth::login(&state, creds("nobody.here@example.com", "x"), &nobody())
            .await
            .err(),
        Some(AuthError::InvalidCredentials)
    );
    assert!(matches!(
        auth::login(&state, creds(unknown, "x"), &nobody())
            .await
            .err(),
        Some(AuthError::TooManyRequests { .. })
    ));
    let rows = psql(&state)
        .await
        .query(
            "SELECT account, network FROM login_throttle ORDER BY network",
            &[],
        )
        .await
        .expect("q");
    let accounts: std::collections::HashSet<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
    let networks: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(
        accounts.len(),
        1,
        "one key for both spellings, and no raw input stored"
    );
    assert_eq!(
        networks,
        ["*", "unknown"],
        "the account-wide row and the network's"
    );
}

#[tokio::test]
async fn the_source_address_window_is_shared_by_all_instances_and_refused_requests_do_not_count() {
    let state = fresh_state(&[("IP_RATE_LIMIT_PER_MINUTE", "5")]).await;
    // A second function instance (another Lambda) on the same database.
    let other = AppState::new(state.config.clone()).expect("second instance");
    let from = Origin {
        source_ip: Some("203.0.113.7".into()),
        user_agent: None,
    };
    let elsewhere = Origin {
        source_ip: Some("198.51.100.1".into()),
        user_agent: None,
    };
    for i in 0..5 {
        let s = if i % 2 == 0 { &state } else { &other };
        auth::check_source_address(s, &from, "login")
            .await
            .expect("within the limit");
    }
    for s in [&state, &other, &state] {
        assert!(matches!(
            auth::check_source_address(s, &from, "register").await,
            Err(AuthError::TooManyRequests { .. })
        ));
    }
    auth::check_source_address(&other, &elsewhere, "refresh")
        .await
        .expect("another address is not limited");
    let count: i64 = psql(&state)
        .await
        .query_one(
            "SELECT count(*) FROM ip_requests WHERE source_ip = '203.0.113.7'",
            &[],
        )
        .await
        .expect("q")
        .get(0);
    assert_eq!(count, 5, "refused requests were not counted");
}

#[tokio::test]
async fn every_action_leaves_an_audit_row_without_secrets() {
    let state = fresh_state(&[]).await;
    let client = Origin {
        source_ip: Some("192.0.2.10".into()),
        user_agent: Some("tests/1.0".into()),
    };
    let email = unique_email();
    auth::register(&state, creds(&email, STRONG_PASSWORD), &client)
        .await
        .expect("register");
    let _ = auth::register(&state, creds(&email, STRONG_PASSWORD), &client).await;
    let _ = auth::login(&state, creds(&email, "a wrong password here"), &client).await;
    let tokens = auth::login(&state, creds(&email, STRONG_PASSWORD), &client)
        .await
        .expect("login");
    let next = auth::refresh(&state, &tokens.refresh_token, &client)
        .await
        .expect("refresh");
    let _ = auth::current_user(&state, "not-a-token", &client).await;
    auth::logout(&state, &next.access.token, false, &client)
        .await
        .expect("logout");
    let _ = auth::current_user(&state, &next.access.token, &client).await;

    let rows = psql(&state).await
        .query("SELECT event, coalesce(reason, ''), source_ip, user_agent, user_id IS NOT NULL FROM auth_events ORDER BY id", &[])
        .await
        .expect("q");
    let seen: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let expected = [
        ("user.registered", ""),
        ("register.rejected", "email_taken"),
        ("login.failed", "bad_password"),
        ("login.succeeded", ""),
        ("refresh.succeeded", ""),
        ("token.rejected", "malformed"),
        ("logout.succeeded", "session"),
        ("token.rejected", "session_ended"),
    ];
    assert_eq!(
        seen,
        expected.map(|(e, r)| (e.to_owned(), r.to_owned())).to_vec()
    );
    assert!(
        rows.iter()
            .all(|r| r.get::<_, Option<String>>(2).as_deref() == Some("192.0.2.10"))
    );
    assert!(
        rows.iter()
            .all(|r| r.get::<_, Option<String>>(3).as_deref() == Some("tests/1.0"))
    );
    let dump: String = psql(&state)
        .await
        .query_one("SELECT string_agg(t::text, ' ') FROM auth_events t", &[])
        .await
        .expect("q")
        .get(0);
    for secret in [
        STRONG_PASSWORD,
        &tokens.refresh_token,
        &tokens.access.token,
        &next.refresh_token,
    ] {
        assert!(!dump.contains(secret));
    }
}

#[tokio::test]
async fn the_source_address_window_slides_exactly_over_the_last_minute() {
    let mut state = fresh_state(&[("IP_RATE_LIMIT_PER_MINUTE", "5")]).await;
    let clock = hand_clock(&mut state);
    let from = Origin {
        source_ip: Some("203.0.113.9".into()),
        user_agent: None,
    };
    for _ in 0..3 {
        auth::check_source_address(&state, &from, "login")
            .await
            .expect("allowed");
    }
    advance(&clock, Duration::seconds(30));
    for _ in 0..2 {
        auth::check_source_address(&state, &from, "login")
            .await
            .expect("allowed");
    }
    advance(&clock, Duration::seconds(29));
    // 59 s after the first three: all five are still inside the window; a slot frees in 1 s.
    assert_eq!(
        auth::check_source_address(&state, &from, "login")
            .await
            .err(),
        Some(AuthError::TooManyRequests {
            retry_after_secs: 1
        })
    );
    advance(&clock, Duration::milliseconds(1_500));
    for _ in 0..3 {
        auth::check_source_address(&state, &from, "login")
            .await
            .expect("the first three slid out");
    }
    // Full again until the two from second 30 slide out, 29.5 s from now.
    assert_eq!(
        auth::check_source_address(&state, &from, "login")
            .await
            .err(),
        Some(AuthError::TooManyRequests {
            retry_after_secs: 30
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_guesses_cannot_slip_past_the_backoff() {
    // Twenty instances guessing one account's password at the same moment. They open twenty
    // connections at once and queue on one backoff row: on a busy machine that takes longer
    // than the default 3 s deadline (a 503 once), so the deadline is the longest allowed: it
    // is there to end a hang, not to time the machine.
    let state = fresh_state(&[
        ("DATABASE_POOL_MAX_SIZE", "20"),
        ("DATABASE_TIMEOUT_MS", "20000"),
    ])
    .await;
    let email = account(&state).await;
    let guesses: Vec<_> = (0..20)
        .map(|i| {
            let (state, email) = (state.clone(), email.clone());
            tokio::spawn(async move {
                auth::login(
                    &state,
                    creds(&email, &format!("guess number {i} is wrong")),
                    &nobody(),
                )
                .await
            })
        })
        .collect();
    let (mut checked, mut refused) = (0, 0);
    for guess in guesses {
        match guess.await.expect("task").err() {
            Some(AuthError::InvalidCredentials) => checked += 1,
            Some(AuthError::TooManyRequests { .. }) => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        (checked, refused),
        (5, 15),
        "only LOGIN_BACKOFF_AFTER guesses were checked"
    );
}

/// The window's refusals of 203.0.113.9, as its audit rows count them.
async fn window_refusals(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT coalesce(sum(count), 0)::bigint FROM auth_events \
         WHERE event = 'rate_limit.exceeded' AND source_ip = '203.0.113.9'",
        &[],
    )
    .await
    .expect("q")
    .get(0)
}

/// Everything a request could change, but the window's own rows and audit.
async fn counts(db: &tokio_postgres::Client) -> Vec<i64> {
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM users), \
                    (SELECT coalesce(sum(failures), 0)::bigint FROM login_throttle), \
                    (SELECT count(*) FROM login_throttle), \
                    (SELECT count(*) FROM sessions), \
                    (SELECT count(*) FROM refresh_tokens), \
                    (SELECT count(*) FROM refresh_tokens WHERE rotated_at IS NOT NULL), \
                    (SELECT count(*) FROM auth_events WHERE event <> 'rate_limit.exceeded')",
            &[],
        )
        .await
        .expect("counts");
    (0..7).map(|i| row.get(i)).collect()
}

/// The window is checked by the statement that does each route's work: over it, that work is
/// not done at all (no user, no counted guess, no rotation, no audit row but the window's).
#[tokio::test]
async fn a_request_over_the_window_changes_nothing_but_the_windows_audit() {
    let state = fresh_state(&[("IP_RATE_LIMIT_PER_MINUTE", "3")]).await;
    let db = psql(&state).await;
    let from = Origin {
        source_ip: Some("203.0.113.9".into()),
        user_agent: None,
    };
    let email = unique_email();
    auth::register(&state, creds(&email, STRONG_PASSWORD), &from)
        .await
        .expect("register, counted");
    let tokens = auth::login(&state, creds(&email, STRONG_PASSWORD), &from)
        .await
        .expect("login, counted");
    auth::check_source_address(&state, &from, "login")
        .await
        .expect("the third, counted");
    let before = counts(&db).await;
    let over = |result: Result<(), AuthError>, what: &str| match result {
        Err(AuthError::TooManyRequests { retry_after_secs }) => {
            assert!(
                (1..=60).contains(&retry_after_secs),
                "{what}: {retry_after_secs}"
            )
        }
        other => panic!("{what}: {other:?}"),
    };
    // Each from an instance of its own, so that each reaches the database (an instance
    // remembers a refusal; see below).
    let fresh = || AppState::new(state.config.clone()).expect("another instance");
    over(
        auth::register(&fresh(), creds(&unique_email(), STRONG_PASSWORD), &from)
            .await
            .map(drop),
        "register",
    );
    over(
        auth::register(&fresh(), creds("not an email", STRONG_PASSWORD), &from)
            .await
            .map(drop),
        "register, refused before the insert",
    );
    over(
        auth::login(&fresh(), creds(&email, "wrong password, uncounted"), &from)
            .await
            .map(drop),
        "login",
    );
    over(
        auth::refresh(&fresh(), &tokens.refresh_token, &from)
            .await
            .map(drop),
        "refresh",
    );
    over(
        auth::refresh(&fresh(), "garbage", &from).await.map(drop),
        "refresh of a malformed token",
    );
    assert_eq!(counts(&db).await, before, "nothing changed");
    let refusals = window_refusals(&db).await;
    assert_eq!(refusals, 5, "each refusal audited once, by the window");
    // An instance that saw the window refuse a network checks that network's window first at
    // register, before argon2 (this instance has none: reaching it would be an internal error).
    let mut instance = fresh();
    over(
        auth::login(&instance, creds(&email, STRONG_PASSWORD), &from)
            .await
            .map(drop),
        "login, refused by the window",
    );
    instance.passwords = None;
    over(
        auth::register(&instance, creds(&unique_email(), STRONG_PASSWORD), &from)
            .await
            .map(drop),
        "register, its window checked before argon2",
    );
    let refusals = window_refusals(&db).await;
    assert_eq!(refusals, 7, "both refusals audited");
    assert_eq!(counts(&db).await, before, "nothing changed");
    let elsewhere = Origin {
        source_ip: Some("198.51.100.9".into()),
        user_agent: None,
    };
    assert_eq!(
        auth::register(
            &instance,
            creds(&unique_email(), STRONG_PASSWORD),
            &elsewhere
        )
        .await
        .err(),
        Some(AuthError::Internal),
        "another network is not remembered: it goes on to argon2"
    );
    // The refresh token was not rotated by the refused refresh: it still works elsewhere.
    auth::refresh(&state, &tokens.refresh_token, &nobody())
        .await
        .expect("the token was left alone");
}
