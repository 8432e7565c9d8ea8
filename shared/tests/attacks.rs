//! What an attacker tries against the limits and the storage, and the review's defects in
//! them, against a real Postgres with a hand-set clock: no stranger can lock an owner out,
//! storage stays bounded under a flood, the backoff cannot overflow, concurrent global logouts
//! cannot deadlock, and the grace window never hands out a dead successor.

mod common;

use chrono::Duration;
use common::{STRONG_PASSWORD, advance, fresh_state, from, hand_clock, psql, unique_email};
use shared::{
    AppState,
    auth::{self, Credentials},
    error::AuthError,
    origin::Origin,
    store,
};

fn creds(email: &str, password: &str) -> Credentials {
    Credentials {
        email: email.to_owned(),
        password: password.to_owned(),
    }
}

const WRONG: &str = "not the password at all 1";

async fn account(state: &AppState) -> String {
    let email = unique_email();
    auth::register(state, creds(&email, STRONG_PASSWORD), &Origin::default())
        .await
        .expect("register");
    email
}

async fn count(state: &AppState, sql: &str) -> i64 {
    psql(state)
        .await
        .query_one(sql, &[])
        .await
        .expect(sql)
        .get(0)
}

#[tokio::test]
async fn a_stranger_s_guesses_do_not_delay_the_owner_s_network() {
    let state = fresh_state(&[]).await;
    let email = account(&state).await;
    let stranger = from("203.0.113.9");
    for _ in 0..5 {
        assert_eq!(
            auth::login(&state, creds(&email, WRONG), &stranger)
                .await
                .err(),
            Some(AuthError::InvalidCredentials)
        );
    }
    assert!(matches!(
        auth::login(&state, creds(&email, WRONG), &stranger)
            .await
            .err(),
        Some(AuthError::TooManyRequests { .. })
    ));
    // Another address in the stranger's IPv6 /64 is the same network; the owner's is not.
    let owner = from("198.51.100.20");
    auth::login(&state, creds(&email, STRONG_PASSWORD), &owner)
        .await
        .expect("the owner logs in from home at once");
    assert!(
        matches!(
            auth::login(&state, creds(&email, STRONG_PASSWORD), &stranger)
                .await
                .err(),
            Some(AuthError::TooManyRequests { .. })
        ),
        "the stranger's network stays in its backoff"
    );
}

#[tokio::test]
async fn one_ipv6_64_is_one_network_for_the_backoff() {
    let state = fresh_state(&[]).await;
    let email = account(&state).await;
    for i in 1..=5 {
        let rotating = from(&format!("2001:db8:7:7::{i:x}"));
        assert_eq!(
            auth::login(&state, creds(&email, WRONG), &rotating)
                .await
                .err(),
            Some(AuthError::InvalidCredentials)
        );
    }
    assert!(matches!(
        auth::login(&state, creds(&email, WRONG), &from("2001:db8:7:7:ffff::1"))
            .await
            .err(),
        Some(AuthError::TooManyRequests { .. })
    ));
    auth::login(
        &state,
        creds(&email, STRONG_PASSWORD),
        &from("2001:db8:7:8::1"),
    )
    .await
    .expect("the next /64 is another network");
}

#[tokio::test]
async fn the_account_wide_ceiling_holds_across_networks() {
    let state = fresh_state(&[("LOGIN_ACCOUNT_BACKOFF_AFTER", "10")]).await;
    let email = account(&state).await;
    for i in 0..10 {
        assert_eq!(
            auth::login(&state, creds(&email, WRONG), &from(&format!("192.0.2.{i}")))
                .await
                .err(),
            Some(AuthError::InvalidCredentials)
        );
    }
    assert!(matches!(
        auth::login(&state, creds(&email, WRONG), &from("192.0.2.200"))
            .await
            .err(),
        Some(AuthError::TooManyRequests {
            retry_after_secs: 1
        })
    ));
}

/// Fails logins of `email` from ever new networks, waiting out every backoff on the hand-set
/// clock, until `failures` were counted.
async fn fail_until_counted(
    state: &AppState,
    clock: &std::sync::Arc<std::sync::Mutex<chrono::DateTime<chrono::Utc>>>,
    email: &str,
    failures: usize,
) {
    let mut counted = 0;
    for i in 0..10 * failures {
        let client = from(&format!("10.{}.{}.1", i / 250, i % 250));
        match auth::login(state, creds(email, WRONG), &client).await.err() {
            Some(AuthError::InvalidCredentials) => counted += 1,
            Some(AuthError::TooManyRequests { retry_after_secs }) => {
                advance(clock, Duration::seconds(retry_after_secs as i64));
            }
            other => panic!("after {counted} failures: {other:?}"),
        }
        if counted == failures {
            return;
        }
    }
    panic!("only {counted} failures counted");
}

#[tokio::test]
async fn a_hundred_consecutive_failures_lock_the_account_until_it_is_unlocked() {
    let mut state = fresh_state(&[]).await;
    let clock = hand_clock(&mut state);
    let email = account(&state).await;
    fail_until_counted(&state, &clock, &email, 99).await;
    advance(&clock, Duration::hours(1));
    auth::login(
        &state,
        creds(&email, STRONG_PASSWORD),
        &from("198.51.100.1"),
    )
    .await
    .expect("99 failures and then the right password: no lock, and the count starts over");

    fail_until_counted(&state, &clock, &email, 100).await;
    advance(&clock, Duration::days(2));
    for password in [STRONG_PASSWORD, WRONG] {
        assert_eq!(
            auth::login(&state, creds(&email, password), &from("198.51.100.1"))
                .await
                .err(),
            Some(AuthError::AccountLocked),
            "the same answer whatever password is sent, days later"
        );
    }
    // The lock is not pruned as an expired backoff.
    let now = state.now();
    store::prune(&state.db, now - Duration::days(90), now)
        .await
        .expect("prune");
    assert_eq!(
        auth::login(
            &state,
            creds(&email, STRONG_PASSWORD),
            &from("198.51.100.1")
        )
        .await
        .err(),
        Some(AuthError::AccountLocked)
    );

    let parsed = shared::email::Email::parse(&email).expect("email");
    assert!(
        store::unlock(&state.db, &parsed, state.now(), &Origin::default())
            .await
            .expect("unlock")
    );
    auth::login(
        &state,
        creds(&email, STRONG_PASSWORD),
        &from("198.51.100.1"),
    )
    .await
    .expect("unlocked");
    assert_eq!(
        count(
            &state,
            "SELECT count(*) FROM auth_events WHERE event = 'account.unlocked'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn an_unknown_email_reaches_the_same_lock() {
    let mut state = fresh_state(&[]).await;
    let clock = hand_clock(&mut state);
    let unknown = unique_email();
    fail_until_counted(&state, &clock, &unknown, 100).await;
    assert_eq!(
        auth::login(&state, creds(&unknown, WRONG), &from("198.51.100.1"))
            .await
            .err(),
        Some(AuthError::AccountLocked)
    );
}

#[tokio::test]
async fn an_email_locked_before_it_was_registered_starts_unlocked() {
    let mut state = fresh_state(&[]).await;
    let clock = hand_clock(&mut state);
    let email = unique_email();
    fail_until_counted(&state, &clock, &email, 100).await;
    auth::register(&state, creds(&email, STRONG_PASSWORD), &Origin::default())
        .await
        .expect("register");
    auth::login(
        &state,
        creds(&email, STRONG_PASSWORD),
        &from("198.51.100.1"),
    )
    .await
    .expect("the owner's new account is not locked by a stranger's earlier guesses");
}

#[tokio::test]
async fn a_thousand_failures_cannot_overflow_the_backoff() {
    let state = fresh_state(&[]).await;
    let email = account(&state).await;
    let key = store::account_key(None, &email);
    // The counts a long-running guesser reaches; from about 1028 the old statement's
    // power(2, failures) overflowed float8 and every login of the account was a 500.
    psql(&state)
        .await
        .execute(
            "INSERT INTO login_throttle (account, network, failures, last_attempt, updated_at) \
             VALUES ($1, '*', 10, gen_random_uuid(), now()), \
                    ($1, 'unknown', 2000000, gen_random_uuid(), now())",
            &[&key],
        )
        .await
        .expect("arrange");
    assert_eq!(
        auth::login(&state, creds(&email, WRONG), &Origin::default())
            .await
            .err(),
        Some(AuthError::InvalidCredentials)
    );
    assert_eq!(
        auth::login(&state, creds(&email, STRONG_PASSWORD), &Origin::default())
            .await
            .err(),
        Some(AuthError::TooManyRequests {
            retry_after_secs: 900
        })
    );
    let capped: f64 = psql(&state)
        .await
        .query_one(
            "SELECT extract(epoch FROM auth_backoff(2147483647, 5, 900))::float8",
            &[],
        )
        .await
        .expect("q")
        .get(0);
    assert_eq!(capped, 900.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_global_logouts_of_one_user_at_once_never_deadlock() {
    let first = fresh_state(&[]).await;
    let second = AppState::new(first.config.clone()).expect("a second instance");
    let email = account(&first).await;
    let mut sessions = Vec::new();
    for _ in 0..40 {
        sessions.push(
            auth::login(&first, creds(&email, STRONG_PASSWORD), &Origin::default())
                .await
                .expect("login"),
        );
    }
    for (round, pair) in sessions.chunks(2).enumerate() {
        let (a, b) = (pair[0].access.token.clone(), pair[1].access.token.clone());
        let (one, other) = (first.clone(), second.clone());
        // Every session but these two has ended in earlier rounds; revive them so that each
        // logout has the other's sessions to end (what made the two wait for each other).
        psql(&first)
            .await
            .execute(
                "UPDATE sessions SET ended_at = NULL, ended_reason = NULL",
                &[],
            )
            .await
            .expect("revive");
        let ra =
            tokio::spawn(async move { auth::logout(&one, &a, true, &Origin::default()).await });
        let rb =
            tokio::spawn(async move { auth::logout(&other, &b, true, &Origin::default()).await });
        let mut results = [ra.await.expect("task").err(), rb.await.expect("task").err()];
        results.sort_by_key(|r| r.is_some());
        assert_eq!(
            results,
            [None, Some(AuthError::InvalidToken)],
            "round {round}: one logout ends every session, the other finds its own ended"
        );
    }
}

#[tokio::test]
async fn a_client_in_the_grace_window_never_gets_a_dead_successor() {
    let state = fresh_state(&[]).await;
    let email = account(&state).await;
    let t0 = auth::login(&state, creds(&email, STRONG_PASSWORD), &Origin::default())
        .await
        .expect("login");
    let t1 = auth::refresh(&state, &t0.refresh_token, &Origin::default())
        .await
        .expect("t0 → t1");
    let t2 = auth::refresh(&state, &t1.refresh_token, &Origin::default())
        .await
        .expect("t1 → t2, inside the window");
    // t0 again, inside its window: its successor t1 is no longer live, so a clean 401 …
    assert_eq!(
        auth::refresh(&state, &t0.refresh_token, &Origin::default())
            .await
            .err(),
        Some(AuthError::InvalidToken)
    );
    // … and the session lives on with its live token.
    let t3 = auth::refresh(&state, &t2.refresh_token, &Origin::default())
        .await
        .expect("the live token still works");
    auth::current_user(&state, &t3.access.token, &Origin::default())
        .await
        .expect("the session was not ended");
}

#[tokio::test]
async fn garbage_bearer_tokens_meet_the_address_window_but_a_valid_token_does_not() {
    let state = fresh_state(&[("IP_RATE_LIMIT_PER_MINUTE", "3")]).await;
    let email = account(&state).await;
    let tokens = auth::login(&state, creds(&email, STRONG_PASSWORD), &Origin::default())
        .await
        .expect("login");
    let flood = from("203.0.113.50");
    for _ in 0..3 {
        assert_eq!(
            auth::current_user(&state, "garbage", &flood).await.err(),
            Some(AuthError::InvalidToken)
        );
    }
    assert!(matches!(
        auth::current_user(&state, "garbage", &flood).await.err(),
        Some(AuthError::TooManyRequests { .. })
    ));
    assert!(matches!(
        auth::logout(&state, "garbage", false, &flood).await.err(),
        Some(AuthError::TooManyRequests { .. })
    ));
    auth::current_user(&state, &tokens.access.token, &flood)
        .await
        .expect("a valid token is never slowed by the window");
}

#[tokio::test]
async fn a_flood_from_many_addresses_keeps_storage_bounded() {
    const LIMIT: i64 = 5;
    let mut state = fresh_state(&[("IP_RATE_LIMIT_PER_MINUTE", "5")]).await;
    let clock = hand_clock(&mut state);
    // 30 IPv4 networks and 30 addresses rotating inside one IPv6 /64: 31 networks.
    let addresses: Vec<String> = (0..30)
        .map(|i| format!("203.0.113.{i}"))
        .chain((0..30).map(|i| format!("2001:db8:99:1::{:x}", i + 1)))
        .collect();
    let networks = 31;
    let mut requests = 0;
    for ip in &addresses {
        let client = from(ip);
        for i in 0..12 {
            let junk = format!("junk-{i}-{ip}@example.com");
            if auth::check_source_address(&state, &client, "register")
                .await
                .is_ok()
            {
                let _ = auth::register(&state, creds("not an email", "x"), &client).await;
            }
            if auth::check_source_address(&state, &client, "login")
                .await
                .is_ok()
            {
                let _ = auth::login(&state, creds(&junk, "x"), &client).await;
            }
            if auth::check_source_address(&state, &client, "refresh")
                .await
                .is_ok()
            {
                let _ = auth::refresh(&state, "garbage", &client).await;
            }
            let _ = auth::current_user(&state, "garbage", &client).await;
            let _ = auth::logout(&state, "garbage", false, &client).await;
            requests += 5;
        }
    }
    // Each network gets LIMIT counted requests a minute, each writing at most one audit row
    // and two backoff rows; a refusal adds to one counted row per (network, event, reason)
    // and minute: rate_limit.exceeded for each of the five routes, and the three kinds of
    // junk refused after the window (an invalid email, a malformed refresh token, a
    // malformed access token).
    let events = count(&state, "SELECT count(*) FROM auth_events").await;
    let windows = count(&state, "SELECT count(*) FROM ip_requests").await;
    let throttles = count(&state, "SELECT count(*) FROM login_throttle").await;
    assert!(
        events <= networks * (LIMIT + 8),
        "{events} audit rows for {requests} requests"
    );
    assert!(windows <= networks * LIMIT, "{windows} window rows");
    assert!(
        throttles <= networks * LIMIT * 2,
        "{throttles} backoff rows"
    );
    let counted = count(
        &state,
        "SELECT coalesce(sum(count), 0)::int8 FROM auth_events",
    )
    .await;
    assert_eq!(counted, requests, "every request is in the log, counted");
    assert_eq!(
        count(
            &state,
            "SELECT count(*) FROM auth_events WHERE window_start IS NOT NULL \
             AND source_ip LIKE '2001:db8:99:%' AND source_ip <> '2001:db8:99:1::/64'"
        )
        .await,
        0,
        "refusals from a rotating /64 are recorded under the /64"
    );

    // The scheduled function removes what has expired once the flood is over.
    advance(&clock, Duration::days(2));
    let pruned = shared::http::schedule::prune(&state).await.expect("prune");
    assert_eq!(pruned["ip_requests"], windows);
    assert_eq!(pruned["throttles"], throttles);
    assert_eq!(
        pruned["events"], 0,
        "audit rows stay for AUDIT_RETENTION_DAYS"
    );
    assert_eq!(count(&state, "SELECT count(*) FROM ip_requests").await, 0);
    assert_eq!(
        count(&state, "SELECT count(*) FROM login_throttle").await,
        0
    );
}
