//! Two-step login (API.md "Two-step login (TOTP)") against a real Postgres with a hand-set
//! clock: enrolment and its confirmation, login's second step with codes at the window's edges,
//! the replay rule, recovery codes, the mfa_token's lifetime and its five wrong codes, the
//! backoff counting wrong codes, the claims, turning it off, a reset keeping it on, the
//! operator's reset. Codes are computed from the secret the enrolment showed, as an app would.

mod common;

use chrono::{DateTime, Duration, TimeZone, Utc};
use common::{CLOSED_SMTP, STRONG_PASSWORD, advance, fresh_state, hand_clock, psql, sealed_mail};
use shared::{
    AppState,
    auth::{self, Credentials, SecondStep, Tokens, TurnOff},
    email::Email,
    error::AuthError,
    mail::Notice,
    origin::Origin,
    store,
    token::Claims,
    totp::{self, Code, RecoveryCode},
};
use std::sync::{Arc, Mutex};

type Clock = Arc<Mutex<DateTime<Utc>>>;

fn nobody() -> Origin {
    Origin::default()
}

fn creds(email: &str, password: &str) -> Credentials {
    Credentials {
        email: email.to_owned(),
        password: password.to_owned(),
    }
}

/// A state with mail on (every delivery failing at once, so notices stay sealed) and a clock
/// set by hand to the first second of a time step.
async fn state(extra: &[(&str, &str)]) -> (AppState, Clock) {
    let mut overrides = vec![("SMTP_URL", CLOSED_SMTP), ("SMTP_TIMEOUT_MS", "1000")];
    overrides.extend_from_slice(extra);
    let mut state = fresh_state(&overrides).await;
    let clock = hand_clock(&mut state);
    let now = Utc::now().timestamp();
    set(&clock, now - now % 30 + 30);
    (state, clock)
}

fn set(clock: &Clock, unix_secs: i64) {
    *clock.lock().expect("clock") = Utc.timestamp_opt(unix_secs, 0).single().expect("time");
}

fn now(clock: &Clock) -> i64 {
    clock.lock().expect("clock").timestamp()
}

/// An account, signed in: its address and tokens.
async fn signed_in(state: &AppState) -> (String, Tokens) {
    let email = common::unique_email();
    auth::register(state, creds(&email, STRONG_PASSWORD), &nobody())
        .await
        .expect("register");
    let tokens = auth::login(state, creds(&email, STRONG_PASSWORD), &nobody())
        .await
        .expect("login");
    (email, tokens)
}

/// The code of `secret` for the step `offset` steps from the clock's.
fn code(secret: &totp::TotpSecret, clock: &Clock, offset: i64) -> Code {
    let step = u64::try_from(now(clock) / 30 + offset).expect("a step");
    Code::parse(&totp::code_at_step(secret, step)).expect("six digits")
}

/// A code that no step of the window around the clock has.
fn wrong_code(secret: &totp::TotpSecret, clock: &Clock) -> Code {
    let window: Vec<Code> = (-1..=1).map(|offset| code(secret, clock, offset)).collect();
    (0..4)
        .map(|n| Code::parse(&format!("{n:06}")).expect("six digits"))
        .find(|c| !window.contains(c))
        .expect("three steps have at most three codes")
}

/// Enrols and confirms with the current code: the secret and the recovery codes.
async fn turn_on(
    state: &AppState,
    clock: &Clock,
    tokens: &Tokens,
) -> (totp::TotpSecret, Vec<String>) {
    let bearer = &tokens.access.token;
    let enrolment = auth::enrol_totp(state, bearer, STRONG_PASSWORD, &nobody())
        .await
        .expect("enrol");
    let secret = totp::from_base32(&enrolment.secret).expect("base32");
    let codes = auth::confirm_totp(state, bearer, &code(&secret, clock, 0), &nobody())
        .await
        .expect("confirm");
    (secret, codes)
}

/// Logs in with TOTP on: the mfa_token.
async fn challenged(state: &AppState, email: &str) -> String {
    match auth::login(state, creds(email, STRONG_PASSWORD), &nobody()).await {
        Err(AuthError::MfaRequired(token)) => token.0,
        other => panic!("expected mfa_required, got {:?}", other.map(|_| "tokens")),
    }
}

async fn verify(state: &AppState, token: &str, factor: SecondStep) -> Result<Tokens, AuthError> {
    auth::verify_mfa(state, token, &factor, &nobody()).await
}

fn claims(tokens: &Tokens) -> Claims {
    jsonwebtoken::dangerous::insecure_decode::<Claims>(&tokens.access.token)
        .expect("decode")
        .claims
}

async fn count(
    state: &AppState,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> i64 {
    psql(state)
        .await
        .query_one(sql, params)
        .await
        .expect("count")
        .get(0)
}

async fn events(state: &AppState, event: &str) -> i64 {
    count(
        state,
        "SELECT coalesce(sum(count), 0)::bigint FROM auth_events WHERE event = $1",
        &[&event],
    )
    .await
}

#[tokio::test]
async fn enrol_confirm_and_the_second_step_make_an_aal2_session_that_refresh_keeps() {
    let (state, clock) = state(&[]).await;
    let (email, first) = signed_in(&state).await;
    let other = auth::login(&state, creds(&email, STRONG_PASSWORD), &nobody())
        .await
        .expect("a second session");
    assert_eq!(claims(&first).amr, ["pwd"]);
    assert_eq!(claims(&first).aal, "aal1");

    let enrolment = auth::enrol_totp(&state, &first.access.token, STRONG_PASSWORD, &nobody())
        .await
        .expect("enrol");
    assert_eq!(enrolment.secret.len(), 32);
    assert!(enrolment.otpauth_uri.starts_with(&format!(
        "otpauth://totp/Auth:{}?secret={}&issuer=Auth",
        email, enrolment.secret
    )));
    assert!(enrolment.qr_code.starts_with("data:image/svg+xml;base64,"));
    // Pending: a login still needs the password alone.
    let pending = auth::login(&state, creds(&email, STRONG_PASSWORD), &nobody()).await;
    assert!(pending.is_ok(), "a pending enrolment asks for no code");
    let secret = totp::from_base32(&enrolment.secret).expect("base32");
    let codes = auth::confirm_totp(
        &state,
        &first.access.token,
        &code(&secret, &clock, 0),
        &nobody(),
    )
    .await
    .expect("confirm");
    assert_eq!(codes.len(), 10);
    for c in &codes {
        assert!(RecoveryCode::parse(c).is_some(), "{c}");
        assert_eq!(c.len(), 19, "XXXX-XXXX-XXXX-XXXX: {c}");
    }

    // The caller's session lives on; the other one ended.
    let me = common::current_user(&state, &first.access.token)
        .await
        .expect("me");
    assert!(me.mfa_enabled);
    assert_eq!(
        common::current_user(&state, &other.access.token).await,
        Err(AuthError::InvalidToken)
    );
    let notices = sealed_mail(&psql(&state).await, state.mailer().expect("mail"), &email).await;
    assert!(notices.iter().any(|e| e.notice == Notice::MfaEnabled));

    // The code that confirmed is used: the next login needs a later step's.
    let token = challenged(&state, &email).await;
    assert_eq!(
        verify(&state, &token, SecondStep::Code(code(&secret, &clock, 0)))
            .await
            .err(),
        Some(AuthError::InvalidCode),
        "the step that confirmed the enrolment is not accepted again"
    );
    advance(&clock, Duration::seconds(30));
    let tokens = verify(&state, &token, SecondStep::Code(code(&secret, &clock, 0)))
        .await
        .expect("the second step");
    let c = claims(&tokens);
    assert_eq!(
        (c.amr, c.aal.as_str()),
        (vec!["pwd".to_owned(), "otp".to_owned()], "aal2")
    );
    let refreshed = auth::refresh(&state, &tokens.refresh_token, &nobody())
        .await
        .expect("refresh");
    let c = claims(&refreshed);
    assert_eq!(
        (c.amr, c.aal.as_str()),
        (vec!["pwd".to_owned(), "otp".to_owned()], "aal2")
    );
    let sessions = auth::list_sessions(&state, &refreshed.access.token, &nobody())
        .await
        .expect("sessions");
    let aal: Vec<(&str, bool)> = sessions
        .iter()
        .map(|s| (s.factors.aal(), s.current))
        .collect();
    assert_eq!(aal, [("aal2", true), ("aal1", false)], "newest first");
    assert_eq!(events(&state, "mfa.enrolled").await, 1);
    assert_eq!(events(&state, "mfa.challenge_started").await, 1);
}

#[tokio::test]
async fn codes_are_accepted_one_step_either_way_and_never_twice() {
    let (state, clock) = state(&[("LOGIN_BACKOFF_AFTER", "50")]).await;
    let (email, tokens) = signed_in(&state).await;
    let (secret, _) = turn_on(&state, &clock, &tokens).await;
    let step = now(&clock) / 30;
    // From far in the future, so that every step below is later than the confirming one.
    // At a step's first and last second, each time well after the steps used before.
    for (later, second) in [(10, 0), (20, 29)] {
        set(&clock, (step + later) * 30 + second);
        let token = challenged(&state, &email).await;
        for offset in [-2, 2] {
            assert_eq!(
                verify(
                    &state,
                    &token,
                    SecondStep::Code(code(&secret, &clock, offset))
                )
                .await
                .err(),
                Some(AuthError::InvalidCode),
                "{offset:+} steps at second {second} of the step"
            );
        }
        // One step back is inside the window; then that step and every earlier one are used.
        verify(&state, &token, SecondStep::Code(code(&secret, &clock, -1)))
            .await
            .expect("one step back");
        let again = challenged(&state, &email).await;
        for offset in [-1, -2] {
            assert_eq!(
                verify(
                    &state,
                    &again,
                    SecondStep::Code(code(&secret, &clock, offset))
                )
                .await
                .err(),
                Some(AuthError::InvalidCode),
                "a replay of step {offset:+} at second {second}"
            );
        }
        verify(&state, &again, SecondStep::Code(code(&secret, &clock, 0)))
            .await
            .expect("the current step, once");
        let third = challenged(&state, &email).await;
        assert_eq!(
            verify(&state, &third, SecondStep::Code(code(&secret, &clock, 0)))
                .await
                .err(),
            Some(AuthError::InvalidCode),
            "the same code again inside its window"
        );
        verify(&state, &third, SecondStep::Code(code(&secret, &clock, 1)))
            .await
            .expect("one step ahead");
    }
    assert!(events(&state, "mfa.challenge_failed").await >= 9);
}

#[tokio::test]
async fn a_recovery_code_works_once_and_is_typed_loosely() {
    let (state, clock) = state(&[]).await;
    let (email, tokens) = signed_in(&state).await;
    let (_, codes) = turn_on(&state, &clock, &tokens).await;
    let loose = codes[3].to_lowercase().replace('-', " ");
    let token = challenged(&state, &email).await;
    let tokens = verify(
        &state,
        &token,
        SecondStep::RecoveryCode(RecoveryCode::parse(&loose).expect("loose")),
    )
    .await
    .expect("a recovery code");
    let c = claims(&tokens);
    assert_eq!(
        (c.amr, c.aal.as_str()),
        (vec!["pwd".to_owned(), "mfa".to_owned()], "aal2")
    );
    assert_eq!(events(&state, "mfa.recovery_code_used").await, 1);
    let token = challenged(&state, &email).await;
    let used = RecoveryCode::parse(&codes[3]).expect("code");
    assert_eq!(
        verify(&state, &token, SecondStep::RecoveryCode(used))
            .await
            .err(),
        Some(AuthError::InvalidCode),
        "a used recovery code"
    );
    verify(
        &state,
        &token,
        SecondStep::RecoveryCode(RecoveryCode::parse(&codes[4]).expect("code")),
    )
    .await
    .expect("another one");
    // Stored as keyed hashes: no code is in the table.
    let stored = count(
        &state,
        "SELECT count(*) FROM recovery_codes WHERE used_at IS NOT NULL",
        &[],
    )
    .await;
    assert_eq!(stored, 2);
    let raw = codes[5].replace('-', "");
    let plain = count(
        &state,
        "SELECT count(*) FROM recovery_codes WHERE position(convert_to($1, 'UTF8') IN hash) > 0",
        &[&raw],
    )
    .await;
    assert_eq!(plain, 0);
}

#[tokio::test]
async fn the_mfa_token_is_single_use_expires_and_dies_after_five_wrong_codes() {
    let (state, clock) = state(&[("LOGIN_BACKOFF_AFTER", "50")]).await;
    let (email, tokens) = signed_in(&state).await;
    let (secret, _) = turn_on(&state, &clock, &tokens).await;
    advance(&clock, Duration::seconds(60));

    // Five wrong codes, each `invalid_code`; then a right one is too late.
    let token = challenged(&state, &email).await;
    let right = code(&secret, &clock, 0);
    let wrong = wrong_code(&secret, &clock);
    for n in 1..=5 {
        assert_eq!(
            verify(&state, &token, SecondStep::Code(wrong.clone()))
                .await
                .err(),
            Some(AuthError::InvalidCode),
            "wrong code {n}"
        );
    }
    assert_eq!(
        verify(&state, &token, SecondStep::Code(right.clone()))
            .await
            .err(),
        Some(AuthError::InvalidMfaToken)
    );

    // Single use.
    let token = challenged(&state, &email).await;
    verify(&state, &token, SecondStep::Code(right))
        .await
        .expect("right code");
    assert_eq!(
        verify(&state, &token, SecondStep::Code(code(&secret, &clock, 1)))
            .await
            .err(),
        Some(AuthError::InvalidMfaToken),
        "used"
    );

    // Five minutes.
    let token = challenged(&state, &email).await;
    advance(&clock, Duration::seconds(auth::MFA_TOKEN_SECS));
    assert_eq!(
        verify(&state, &token, SecondStep::Code(code(&secret, &clock, 0)))
            .await
            .err(),
        Some(AuthError::InvalidMfaToken),
        "expired"
    );
    // Garbage, and a refresh token, are no mfa_tokens.
    for garbage in ["", "not a token", tokens.refresh_token.as_str()] {
        assert_eq!(
            verify(&state, garbage, SecondStep::Code(code(&secret, &clock, 0)))
                .await
                .err(),
            Some(AuthError::InvalidMfaToken),
            "{garbage:?}"
        );
    }
    // Nothing of it started a session but the one right code.
    let live = count(
        &state,
        "SELECT count(*) FROM sessions WHERE ended_at IS NULL",
        &[],
    )
    .await;
    assert_eq!(live, 2, "the enrolling session and the one second step");
}

#[tokio::test]
async fn wrong_codes_count_against_the_backoff_and_only_the_second_step_clears_it() {
    let (state, clock) = state(&[("LOGIN_BACKOFF_AFTER", "3")]).await;
    let (email, tokens) = signed_in(&state).await;
    let (secret, _) = turn_on(&state, &clock, &tokens).await;
    advance(&clock, Duration::seconds(60));
    // The login counts once (its password was right, yet no session started); two wrong codes
    // make three failures: the next attempt waits, unchecked.
    let token = challenged(&state, &email).await;
    for _ in 0..2 {
        assert_eq!(
            verify(
                &state,
                &token,
                SecondStep::Code(wrong_code(&secret, &clock))
            )
            .await
            .err(),
            Some(AuthError::InvalidCode)
        );
    }
    let blocked = verify(&state, &token, SecondStep::Code(code(&secret, &clock, 0))).await;
    assert!(
        matches!(blocked, Err(AuthError::TooManyRequests { .. })),
        "{blocked:?}"
    );
    let account = store::account_key(Some(&Email::parse(&email).expect("email")), &email);
    let failures: i32 = psql(&state)
        .await
        .query_one(
            "SELECT failures FROM login_throttle WHERE account = $1 AND network = '*'",
            &[&account],
        )
        .await
        .expect("the account's count")
        .get(0);
    assert_eq!(failures, 3, "the wait was not counted");
    // After the wait the right code passes, and clears the counts.
    advance(&clock, Duration::seconds(2));
    verify(&state, &token, SecondStep::Code(code(&secret, &clock, 0)))
        .await
        .expect("after the wait");
    let left = count(
        &state,
        "SELECT count(*) FROM login_throttle WHERE account = $1",
        &[&account],
    )
    .await;
    assert_eq!(left, 0);
}

#[tokio::test]
async fn enrolment_needs_the_password_and_a_second_one_is_refused_while_on() {
    let (state, clock) = state(&[]).await;
    let (_, tokens) = signed_in(&state).await;
    let bearer = &tokens.access.token;
    assert_eq!(
        auth::enrol_totp(&state, bearer, "not the password at all 1", &nobody())
            .await
            .err(),
        Some(AuthError::WrongPassword)
    );
    assert_eq!(
        count(&state, "SELECT count(*) FROM user_totp", &[]).await,
        0,
        "nothing stored"
    );
    assert_eq!(
        auth::confirm_totp(
            &state,
            bearer,
            &Code::parse("123456").expect("c"),
            &nobody()
        )
        .await
        .err(),
        Some(AuthError::MfaNotPending)
    );
    // Enrolling again before confirming replaces the pending secret: the first one's codes
    // no longer confirm.
    let first = auth::enrol_totp(&state, bearer, STRONG_PASSWORD, &nobody())
        .await
        .expect("enrol");
    let second = auth::enrol_totp(&state, bearer, STRONG_PASSWORD, &nobody())
        .await
        .expect("enrol again");
    assert_ne!(first.secret, second.secret);
    let old = totp::from_base32(&first.secret).expect("b32");
    let new = totp::from_base32(&second.secret).expect("b32");
    if code(&old, &clock, 0) != code(&new, &clock, 0) {
        assert_eq!(
            auth::confirm_totp(&state, bearer, &code(&old, &clock, 0), &nobody())
                .await
                .err(),
            Some(AuthError::InvalidCode)
        );
    }
    auth::confirm_totp(&state, bearer, &code(&new, &clock, 0), &nobody())
        .await
        .expect("the newer secret confirms");
    assert_eq!(
        auth::enrol_totp(&state, bearer, STRONG_PASSWORD, &nobody())
            .await
            .err(),
        Some(AuthError::MfaAlreadyEnabled)
    );
    assert_eq!(
        auth::confirm_totp(&state, bearer, &code(&new, &clock, 1), &nobody())
            .await
            .err(),
        Some(AuthError::MfaAlreadyEnabled)
    );
    // The secret is stored sealed: its bytes are not in the row.
    let sealed: Vec<u8> = psql(&state)
        .await
        .query_one("SELECT sealed_secret FROM user_totp", &[])
        .await
        .expect("row")
        .get(0);
    assert!(!sealed.windows(20).any(|w| w == new.expose().as_slice()));
}

#[tokio::test]
async fn turning_it_off_needs_a_fresh_code_or_the_password_and_ends_other_sessions() {
    let (state, clock) = state(&[]).await;
    let (email, tokens) = signed_in(&state).await;
    let bearer = &tokens.access.token;
    assert_eq!(
        auth::disable_totp(
            &state,
            bearer,
            &TurnOff::Password(STRONG_PASSWORD.into()),
            &nobody()
        )
        .await
        .err(),
        Some(AuthError::MfaNotEnabled)
    );
    let (secret, _) = turn_on(&state, &clock, &tokens).await;
    assert_eq!(
        auth::disable_totp(
            &state,
            bearer,
            &TurnOff::Code(code(&secret, &clock, 0)),
            &nobody()
        )
        .await
        .err(),
        Some(AuthError::InvalidCode),
        "the confirming code, replayed"
    );
    assert_eq!(
        auth::disable_totp(
            &state,
            bearer,
            &TurnOff::Password("wrong password, really 7".into()),
            &nobody()
        )
        .await
        .err(),
        Some(AuthError::WrongPassword)
    );
    let token = challenged(&state, &email).await;
    let other = verify(&state, &token, SecondStep::Code(code(&secret, &clock, 1)))
        .await
        .expect("another session");
    advance(&clock, Duration::seconds(60));
    auth::disable_totp(
        &state,
        bearer,
        &TurnOff::Code(code(&secret, &clock, 0)),
        &nobody(),
    )
    .await
    .expect("off with a fresh code");
    assert_eq!(
        common::current_user(&state, &other.access.token).await,
        Err(AuthError::InvalidToken),
        "the other session ended"
    );
    let me = common::current_user(&state, bearer)
        .await
        .expect("the caller lives");
    assert!(!me.mfa_enabled);
    for table in ["user_totp", "recovery_codes", "mfa_challenges"] {
        assert_eq!(
            count(&state, &format!("SELECT count(*) FROM {table}"), &[]).await,
            0,
            "{table}"
        );
    }
    // Off: the password alone logs in again; on again with the password proof, off again.
    auth::login(&state, creds(&email, STRONG_PASSWORD), &nobody())
        .await
        .expect("password alone");
    advance(&clock, Duration::seconds(60));
    turn_on(&state, &clock, &tokens).await;
    advance(&clock, Duration::seconds(1));
    auth::disable_totp(
        &state,
        bearer,
        &TurnOff::Password(STRONG_PASSWORD.into()),
        &nobody(),
    )
    .await
    .expect("off with the password");
    let notices: Vec<Notice> =
        sealed_mail(&psql(&state).await, state.mailer().expect("mail"), &email)
            .await
            .into_iter()
            .map(|e| e.notice)
            .filter(|n| matches!(n, Notice::MfaEnabled | Notice::MfaDisabled))
            .collect();
    assert_eq!(
        notices,
        [
            Notice::MfaEnabled,
            Notice::MfaDisabled,
            Notice::MfaEnabled,
            Notice::MfaDisabled
        ]
    );
    assert_eq!(events(&state, "mfa.disabled").await, 2);
}

#[tokio::test]
async fn a_password_reset_neither_turns_it_off_nor_lets_a_login_skip_it() {
    let (state, clock) = state(&[]).await;
    let (email, tokens) = signed_in(&state).await;
    let (secret, _) = turn_on(&state, &clock, &tokens).await;
    // A challenge made before the reset dies with the old password.
    let before = challenged(&state, &email).await;
    auth::request_mail(
        &state,
        auth::MailAsk::PasswordReset,
        &email,
        &nobody(),
        tokio::time::Instant::now(),
    )
    .await
    .expect("forgot");
    let link = common::newest_link(
        &psql(&state).await,
        state.mailer().expect("mail"),
        &email,
        "password_reset",
    )
    .await;
    let new_password = "tangerine submarine orchestra 71";
    auth::reset_password(&state, &link, new_password, &nobody())
        .await
        .expect("reset");
    assert_eq!(
        verify(&state, &before, SecondStep::Code(code(&secret, &clock, 1)))
            .await
            .err(),
        Some(AuthError::InvalidMfaToken),
        "a challenge of the old password"
    );
    let after = match auth::login(&state, creds(&email, new_password), &nobody()).await {
        Err(AuthError::MfaRequired(token)) => token.0,
        other => panic!("TOTP must survive a reset: {:?}", other.map(|_| "tokens")),
    };
    verify(&state, &after, SecondStep::Code(code(&secret, &clock, 1)))
        .await
        .expect("the second step after the reset");
}

#[tokio::test]
async fn the_operator_reset_turns_it_off_ends_every_session_and_is_audited() {
    let (state, clock) = state(&[]).await;
    let (email, tokens) = signed_in(&state).await;
    turn_on(&state, &clock, &tokens).await;
    let parsed = Email::parse(&email).expect("email");
    assert!(
        store::mfa_reset(&state.db, &parsed, state.now(), &nobody())
            .await
            .expect("reset")
    );
    assert_eq!(
        common::current_user(&state, &tokens.access.token).await,
        Err(AuthError::InvalidToken)
    );
    auth::login(&state, creds(&email, STRONG_PASSWORD), &nobody())
        .await
        .expect("the password alone again");
    let reason: String = psql(&state)
        .await
        .query_one(
            "SELECT reason FROM auth_events WHERE event = 'mfa.disabled'",
            &[],
        )
        .await
        .expect("audited")
        .get(0);
    assert_eq!(reason, "operator");
    let nobody_there = Email::parse("nobody-here@example.com").expect("email");
    assert!(
        !store::mfa_reset(&state.db, &nobody_there, state.now(), &nobody())
            .await
            .expect("reset")
    );
}
