//! The operations of `auth` and the SQL of `users` against a real Postgres.

mod common;

use common::{STRONG_PASSWORD, fresh_state, psql, unique_email};
use shared::{
    auth::Credentials,
    config::Argon2Settings,
    email::Email,
    error::AuthError,
    password::{NewPassword, Passwords},
    store,
};

fn creds(email: &str, password: &str) -> Credentials {
    Credentials {
        email: email.to_owned(),
        password: password.to_owned(),
    }
}

#[tokio::test]
async fn a_registered_user_logs_in_and_the_token_opens_me() {
    let state = fresh_state(&[]).await;
    let email = unique_email();
    let user = common::register(
        &state,
        creds(&format!("  {}  ", email.to_uppercase()), STRONG_PASSWORD),
    )
    .await
    .expect("register");
    assert_eq!(user.email, email);
    assert!(user.is_active);
    let token = common::login(&state, creds(&email, STRONG_PASSWORD))
        .await
        .expect("login");
    assert_eq!(token.access.expires_in, 900);
    let me = common::current_user(&state, &token.access.token)
        .await
        .expect("me");
    assert_eq!(me, user);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_registrations_of_one_email_create_exactly_one_account() {
    // Twenty connections opened at once, and nineteen inserts waiting on the first one's
    // unique key: the longest deadline allowed, so a busy machine cannot turn one into a 503.
    let state = fresh_state(&[
        ("DATABASE_POOL_MAX_SIZE", "20"),
        ("DATABASE_TIMEOUT_MS", "20000"),
    ])
    .await;
    let email = unique_email();
    let attempts: Vec<_> = (0..20)
        .map(|i| {
            let state = state.clone();
            // Case and whitespace variants normalize to one address.
            let raw = if i % 2 == 0 {
                email.to_uppercase()
            } else {
                format!(" {email}")
            };
            tokio::spawn(
                async move { common::register(&state, creds(&raw, STRONG_PASSWORD)).await },
            )
        })
        .collect();
    let mut created = 0;
    let mut taken = 0;
    for attempt in attempts {
        match attempt.await.expect("task") {
            Ok(_) => created += 1,
            Err(AuthError::EmailTaken) => taken += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((created, taken), (1, 19));
    let rows = psql(&state)
        .await
        .query("SELECT 1 FROM users WHERE email = $1", &[&email])
        .await
        .expect("q");
    assert_eq!(rows.len(), 1);
}

#[tokio::test]
async fn unknown_email_wrong_password_and_malformed_email_fail_alike() {
    let state = fresh_state(&[]).await;
    let email = unique_email();
    common::register(&state, creds(&email, STRONG_PASSWORD))
        .await
        .expect("register");
    for (e, p) in [
        (email.as_str(), "wrong password entirely"),
        ("nobody@example.com", STRONG_PASSWORD),
        ("not an email", STRONG_PASSWORD),
        (email.as_str(), ""),
        ("", ""),
    ] {
        assert_eq!(
            common::login(&state, creds(e, p)).await.err(),
            Some(AuthError::InvalidCredentials),
            "{e:?}"
        );
    }
}

#[tokio::test]
async fn an_invalid_registration_changes_nothing() {
    let state = fresh_state(&[]).await;
    for (e, p, code) in [
        ("bad@", STRONG_PASSWORD, "invalid_email"),
        (&*unique_email(), "short", "invalid_password"),
        (&*unique_email(), "password1234", "weak_password"),
    ] {
        let err = common::register(&state, creds(e, p))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), code);
    }
    let rows = psql(&state)
        .await
        .query("SELECT 1 FROM users", &[])
        .await
        .expect("q");
    assert!(rows.is_empty());
}

#[tokio::test]
async fn the_same_address_in_another_case_or_as_an_idn_is_taken() {
    let state = fresh_state(&[]).await;
    common::register(&state, creds("Ann@München.de", STRONG_PASSWORD))
        .await
        .expect("register");
    for variant in [
        "ann@xn--mnchen-3ya.de",
        "ANN@MÜNCHEN.DE",
        " ann@münchen.de\u{a0}",
    ] {
        assert_eq!(
            common::register(&state, creds(variant, STRONG_PASSWORD))
                .await
                .err(),
            Some(AuthError::EmailTaken)
        );
    }
    assert!(
        common::login(&state, creds("ann@xn--mnchen-3ya.de", STRONG_PASSWORD))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_password_is_verified_in_its_nfkc_form() {
    let state = fresh_state(&[]).await;
    let email = unique_email();
    common::register(
        &state,
        creds(&email, "Ｔｒｏｍｂｏｎｅ－Ｌａｎｔｅｒｎ－９２７"),
    )
    .await
    .expect("register");
    assert!(
        common::login(&state, creds(&email, "Trombone-Lantern-927"))
            .await
            .is_ok()
    );
    let stored: String = psql(&state)
        .await
        .query_one(
            "SELECT hashed_password FROM users WHERE email = $1",
            &[&email],
        )
        .await
        .expect("q")
        .get(0);
    assert!(stored.starts_with("$argon2id$v=19$"));
    assert!(!stored.contains("Trombone"));
}

#[tokio::test]
async fn a_disabled_account_is_refused_after_the_password_check_and_its_tokens_stop_working() {
    let state = fresh_state(&[]).await;
    let email = unique_email();
    let user = common::register(&state, creds(&email, STRONG_PASSWORD))
        .await
        .expect("register");
    let token = common::login(&state, creds(&email, STRONG_PASSWORD))
        .await
        .expect("login");
    psql(&state)
        .await
        .execute(
            "UPDATE users SET is_active = false WHERE id = $1",
            &[&user.id],
        )
        .await
        .expect("q");
    assert_eq!(
        common::login(&state, creds(&email, STRONG_PASSWORD))
            .await
            .err(),
        Some(AuthError::AccountDisabled)
    );
    assert_eq!(
        common::login(&state, creds(&email, "not the password!"))
            .await
            .err(),
        Some(AuthError::InvalidCredentials)
    );
    assert_eq!(
        common::current_user(&state, &token.access.token)
            .await
            .err(),
        Some(AuthError::InvalidToken)
    );
}

#[tokio::test]
async fn a_deleted_user_s_token_stops_working_at_once() {
    let state = fresh_state(&[]).await;
    let email = unique_email();
    let user = common::register(&state, creds(&email, STRONG_PASSWORD))
        .await
        .expect("register");
    let token = common::login(&state, creds(&email, STRONG_PASSWORD))
        .await
        .expect("login");
    psql(&state)
        .await
        .execute("DELETE FROM users WHERE id = $1", &[&user.id])
        .await
        .expect("q");
    assert_eq!(
        common::current_user(&state, &token.access.token)
            .await
            .err(),
        Some(AuthError::InvalidToken)
    );
}

#[tokio::test]
async fn a_login_upgrades_a_hash_weaker_than_the_configured_parameters() {
    let state = fresh_state(&[("ARGON2_MEMORY_KIB", "19456"), ("ARGON2_ITERATIONS", "2")]).await;
    let email = Email::parse(&unique_email()).expect("email");
    let weak = Passwords::new(Argon2Settings {
        memory_kib: 8192,
        iterations: 1,
        parallelism: 1,
    })
    .expect("params");
    let old = weak
        .hash(&NewPassword::parse(STRONG_PASSWORD, &email, 12).expect("pw"))
        .await
        .expect("hash");
    let origin = shared::origin::Origin::default();
    let window = store::Window::new(&origin, 0, "register", chrono::Utc::now());
    let user = store::insert_user(
        &state.db,
        &window,
        &email,
        &old,
        &origin,
        chrono::Utc::now(),
        None,
    )
    .await
    .expect("insert");
    common::login(&state, creds(email.as_str(), STRONG_PASSWORD))
        .await
        .expect("login");
    let stored = common::stored_hash(&state, user.id).await;
    assert!(
        stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{stored}"
    );
    assert!(
        common::login(&state, creds(email.as_str(), STRONG_PASSWORD))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_connection_ended_by_the_server_is_replaced_without_failing_the_request() {
    let state = fresh_state(&[]).await;
    let email = unique_email();
    common::register(&state, creds(&email, STRONG_PASSWORD))
        .await
        .expect("register");
    // What a Neon compute suspending does to every open connection.
    psql(&state).await
        .execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()", &[])
        .await
        .expect("terminate");
    assert!(
        common::login(&state, creds(&email, STRONG_PASSWORD))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn an_unreachable_database_is_a_503_not_a_500_or_a_hang() {
    // Port 9 on loopback: nothing listens, the connection is refused at once.
    let state = shared::AppState::new(common::config(
        "postgres://u:p@127.0.0.1:9/db?sslmode=disable",
        &[],
    ))
    .expect("state");
    let started = std::time::Instant::now();
    let err = common::login(&state, creds(&unique_email(), STRONG_PASSWORD))
        .await
        .expect_err("down");
    assert_eq!(
        err,
        AuthError::ServiceUnavailable {
            retry_after_secs: 2
        }
    );
    let err = common::register(&state, creds(&unique_email(), STRONG_PASSWORD))
        .await
        .expect_err("down");
    assert_eq!(err.code(), "service_unavailable");
    assert!(started.elapsed() < state.config.db_timeout * 3);
}
