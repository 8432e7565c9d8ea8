//! `authctl` as an operator runs it, against a fresh database on the real Postgres named by
//! `TEST_DATABASE_URL` (`make test` starts one): every subcommand, with the exact output its
//! documentation (the head of `cli/src/main.rs`) promises. The accounts, sessions and audit rows
//! they work on are made by the real operations in `shared::auth`.

#[path = "../../shared/tests/common/mod.rs"]
mod common;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use common::{STRONG_PASSWORD, from};
use shared::{
    AppState,
    auth::{self, Credentials},
    db::DbError,
    email::Email,
    error::AuthError,
    store,
};
use std::process::{Command, Output};
use tokio_postgres::{NoTls, error::SqlState};

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

async fn fresh_database() -> String {
    common::create_database().await
}

async fn migrated_database() -> String {
    let url = fresh_database().await;
    let out = authctl(&url, &["migrate"]);
    assert!(out.status.success(), "{}", text(&out));
    url
}

fn authctl(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_authctl"))
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("AUDIT_RETENTION_DAYS")
        .env_remove("PGSSLROOTCERT")
        .output()
        .expect("authctl runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn text(out: &Output) -> String {
    format!("{}{}", stdout(out), stderr(out))
}

/// The migrations in `migrations/`, `V{n}__{name}`, in order: what migrate and status list.
fn migration_names() -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
    let mut names: Vec<(u32, String)> = std::fs::read_dir(dir)
        .expect("migrations/")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".sql")?.to_owned();
            let version = stem.strip_prefix('V')?.split("__").next()?.parse().ok()?;
            Some((version, stem))
        })
        .collect();
    names.sort();
    assert!(names.len() >= 3, "{names:?}");
    names.into_iter().map(|(_, n)| n).collect()
}

fn state(url: &str, overrides: &[(&str, &str)], now: DateTime<Utc>) -> AppState {
    let mut state = AppState::new(common::config(url, overrides)).expect("state");
    state.clock = std::sync::Arc::new(move || now);
    state
}

fn credentials(email: &str, password: &str) -> Credentials {
    Credentials {
        email: email.to_owned(),
        password: password.to_owned(),
    }
}

fn secs(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The clock the tests' operations run at: whole seconds, so the printed times are exact.
fn at(offset: Duration) -> DateTime<Utc> {
    let now = Utc::now() + offset;
    DateTime::from_timestamp(now.timestamp(), 0).expect("a time")
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_is_idempotent_and_status_and_verify_report_the_schema() {
    let url = fresh_database().await;
    let names = migration_names();

    let out = authctl(&url, &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    let pending: String = names.iter().map(|n| format!("{n}\tpending\n")).collect();
    assert_eq!(stdout(&out), pending);

    let out = authctl(&url, &["verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        stderr(&out),
        "verify: 1 difference(s) from the expected schema:\n  - table users: missing (run `authctl migrate`)\n"
    );

    let out = authctl(&url, &["migrate"]);
    assert!(out.status.success(), "{}", text(&out));
    let applied: String = names
        .iter()
        .map(|n| format!("migrate: applied {n}\n"))
        .collect();
    assert_eq!(stdout(&out), applied);

    let out = authctl(&url, &["migrate"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout(&out),
        "migrate: nothing to apply, the schema is up to date\n"
    );

    let before = Utc::now() - Duration::seconds(1);
    let out = authctl(&url, &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), names.len(), "{lines:?}");
    for (line, name) in lines.iter().zip(&names) {
        let when = line
            .strip_prefix(&format!("{name}\tapplied "))
            .unwrap_or_else(|| panic!("{line}"));
        let when = DateTime::parse_from_rfc3339(when).unwrap_or_else(|_| panic!("{line}"));
        assert!(
            when.to_utc() >= before - Duration::minutes(5) && when.to_utc() <= Utc::now(),
            "{line}"
        );
    }

    let out = authctl(&url, &["verify"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stdout(&out), "verify: the users table is as expected\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_exits_non_zero_with_a_readable_difference() {
    let url = migrated_database().await;
    psql(&url, "ALTER TABLE users DROP CONSTRAINT users_email_key");
    let out = authctl(&url, &["verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        stderr(&out),
        "verify: 2 difference(s) from the expected schema:\n\
         \x20 - constraint: missing unique constraint on users(email) (registration would not be race-safe)\n\
         \x20 - index: missing valid unique index on users(email)\n"
    );
}

#[test]
fn an_unreachable_database_is_an_error_that_does_not_print_the_password() {
    for command in ["status", "events --user ann@example.com", "prune"] {
        let args: Vec<&str> = command.split(' ').collect();
        let out = authctl(
            "postgres://admin:s3cret-pass@127.0.0.1:9/db?sslmode=disable",
            &args,
        );
        assert_eq!(out.status.code(), Some(1), "{command}");
        let report = text(&out);
        assert!(report.starts_with("authctl: could not "), "{report}");
        assert!(report.contains("could not connect"), "{report}");
        assert!(!report.contains("s3cret-pass"), "{report}");
    }
}

/// Before the fix, `events` held the pool's one connection while the store call waited for
/// another: it failed after 30 s with "could not read the audit log".
#[tokio::test(flavor = "multi_thread")]
async fn events_lists_an_accounts_audit_rows_newest_first() {
    let url = migrated_database().await;
    let now = at(Duration::zero());
    let state = state(&url, &[], now);
    let origin = from("203.0.113.7");
    auth::register(
        &state,
        credentials("ann.lee@example.com", STRONG_PASSWORD),
        &origin,
    )
    .await
    .expect("register");
    let wrong = auth::login(
        &state,
        credentials("ann.lee@example.com", "not the password at all"),
        &origin,
    )
    .await;
    assert_eq!(wrong.err(), Some(AuthError::InvalidCredentials));
    let tokens = auth::login(
        &state,
        credentials("ANN.LEE@example.com", STRONG_PASSWORD),
        &origin,
    )
    .await
    .expect("login");
    let session = psql(
        &url,
        "SELECT id FROM sessions WHERE user_id = (SELECT id FROM users WHERE email = 'ann.lee@example.com')",
    );
    assert!(!tokens.refresh_token.is_empty());

    let t = secs(now);
    let out = authctl(&url, &["events", "--user", "Ann.Lee@Example.com"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "{t}\tlogin.succeeded\t-\tsession={session}\tip=203.0.113.7\tua=tests\n\
             {t}\tlogin.failed\tbad_password\tsession=-\tip=203.0.113.7\tua=tests\n\
             {t}\tuser.registered\t-\tsession=-\tip=203.0.113.7\tua=tests\n"
        )
    );

    let out = authctl(
        &url,
        &["events", "--user", "ann.lee@example.com", "--limit", "1"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout(&out),
        format!("{t}\tlogin.succeeded\t-\tsession={session}\tip=203.0.113.7\tua=tests\n")
    );

    let out = authctl(&url, &["events", "--user", "nobody@example.com"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stdout(&out), "events: none for nobody@example.com\n");

    let out = authctl(&url, &["events", "--user", "not an email"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).starts_with("authctl: "), "{}", text(&out));
    assert_eq!(stdout(&out), "");
}

/// Before the fix, `prune` held the pool's one connection while the store call waited for
/// another: it failed after 30 s with "could not prune".
#[tokio::test(flavor = "multi_thread")]
async fn prune_deletes_what_has_expired_and_keeps_the_rest() {
    let url = migrated_database().await;
    let origin = from("203.0.113.7");
    // 200 days ago: an account, a failed and a good login (a session that expired 170 days
    // ago), a counted request, and a stranger's failure that left backoff rows.
    let old = state(&url, &[], at(-Duration::days(200)));
    auth::check_source_address(&old, &origin, "login")
        .await
        .expect("counted");
    auth::register(
        &old,
        credentials("ann@example.com", STRONG_PASSWORD),
        &origin,
    )
    .await
    .expect("register");
    let wrong = auth::login(
        &old,
        credentials("ann@example.com", "wrong wrong wrong"),
        &origin,
    )
    .await;
    assert_eq!(wrong.err(), Some(AuthError::InvalidCredentials));
    auth::login(
        &old,
        credentials("ann@example.com", STRONG_PASSWORD),
        &origin,
    )
    .await
    .expect("login");
    let stranger = auth::login(
        &old,
        credentials("nobody@example.com", "wrong wrong wrong"),
        &origin,
    )
    .await;
    assert_eq!(stranger.err(), Some(AuthError::InvalidCredentials));
    // Now: a live session and its audit row, which prune must keep (from another network, so
    // that its window leaves the old one's rows to prune).
    let recent = state(&url, &[], at(Duration::zero()));
    auth::login(
        &recent,
        credentials("ann@example.com", STRONG_PASSWORD),
        &from("198.51.100.7"),
    )
    .await
    .expect("login");
    let count = |table: &str| psql(&url, &format!("SELECT count(*) FROM {table}"));
    let (events, sessions, windows, backoffs) = (
        count("auth_events"),
        count("sessions"),
        count("ip_requests"),
        count("login_throttle"),
    );
    assert_eq!(
        (sessions.as_str(), windows.as_str()),
        ("2", "6"),
        "arranged: the old network's check, register and three logins; the recent login"
    );
    let backoffs: u64 = backoffs.parse().expect("a count");
    assert!(backoffs >= 2, "the stranger's backoff rows: {backoffs}");
    assert_eq!(events, "5", "arranged");

    // A longer retention keeps the old audit rows and sessions; expired windows and quiet
    // backoffs go whatever the retention.
    let out = authctl(&url, &["prune", "--retention-days", "365"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "prune: deleted 0 audit events, 0 sessions and 0 finished messages older than 365 days, 5 address-window rows, {backoffs} backoff rows, 0 expired links, 0 mail-request counts and 0 expired login challenges\n"
        )
    );
    let out = authctl(&url, &["prune"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout(&out),
        "prune: deleted 4 audit events, 1 sessions and 0 finished messages older than 90 days, 0 address-window rows, 0 backoff rows, 0 expired links, 0 mail-request counts and 0 expired login challenges\n"
    );
    assert_eq!(count("sessions"), "1");
    let out = authctl(&url, &["events", "--user", "ann@example.com"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stdout(&out).lines().count(), 1, "{}", text(&out));
    assert!(
        stdout(&out).contains("\tlogin.succeeded\t"),
        "{}",
        text(&out)
    );

    let out = Command::new(env!("CARGO_BIN_EXE_authctl"))
        .args(["prune"])
        .env("DATABASE_URL", &url)
        .env("AUDIT_RETENTION_DAYS", "1")
        .output()
        .expect("authctl runs");
    assert_eq!(
        stdout(&out),
        "prune: deleted 0 audit events, 0 sessions and 0 finished messages older than 1 days, 0 address-window rows, 0 backoff rows, 0 expired links, 0 mail-request counts and 0 expired login challenges\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unlock_lifts_the_lock_and_the_backoffs_and_is_audited() {
    let url = migrated_database().await;
    let limits = [
        ("LOGIN_LOCK_AFTER", "3"),
        ("LOGIN_BACKOFF_AFTER", "1000"),
        ("LOGIN_ACCOUNT_BACKOFF_AFTER", "1000"),
    ];
    let state = state(&url, &limits, at(Duration::zero()));
    let origin = from("198.51.100.4");
    auth::register(
        &state,
        credentials("bob@example.com", STRONG_PASSWORD),
        &origin,
    )
    .await
    .expect("register");
    for _ in 0..3 {
        let wrong = auth::login(
            &state,
            credentials("bob@example.com", "wrong wrong wrong"),
            &origin,
        )
        .await;
        assert_eq!(wrong.err(), Some(AuthError::InvalidCredentials));
    }
    let locked = auth::login(
        &state,
        credentials("bob@example.com", STRONG_PASSWORD),
        &origin,
    )
    .await;
    assert_eq!(locked.err(), Some(AuthError::AccountLocked));

    let out = authctl(&url, &["unlock", "--user", "Bob@Example.com"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout(&out),
        "unlock: bob@example.com: lock and backoffs cleared\n"
    );
    auth::login(
        &state,
        credentials("bob@example.com", STRONG_PASSWORD),
        &origin,
    )
    .await
    .expect("the owner logs in again");

    let out = authctl(&url, &["events", "--user", "bob@example.com"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = stdout(&out);
    let unlocked: Vec<&str> = listed
        .lines()
        .filter(|l| l.contains("\taccount.unlocked\t"))
        .collect();
    assert_eq!(unlocked.len(), 1, "{listed}");
    let unlocked = unlocked[0];
    let (when, rest) = unlocked
        .split_once('\t')
        .unwrap_or_else(|| panic!("{unlocked}"));
    assert!(DateTime::parse_from_rfc3339(when).is_ok(), "{unlocked}");
    assert_eq!(
        rest,
        format!(
            "account.unlocked\toperator\tsession=-\tip=-\tua=authctl/{}",
            env!("CARGO_PKG_VERSION")
        )
    );

    let out = authctl(&url, &["unlock", "--user", "nobody@example.com"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(stderr(&out), "unlock: no account nobody@example.com\n");
    assert_eq!(stdout(&out), "");
}

#[tokio::test(flavor = "multi_thread")]
async fn mfa_reset_turns_two_step_login_off_ends_every_session_and_is_audited() {
    let url = migrated_database().await;
    let state = state(&url, &[], Utc::now());
    let origin = from("198.51.100.5");
    auth::register(
        &state,
        credentials("cy@example.com", STRONG_PASSWORD),
        &origin,
    )
    .await
    .expect("register");
    let tokens = auth::login(
        &state,
        credentials("cy@example.com", STRONG_PASSWORD),
        &origin,
    )
    .await
    .expect("login");
    let enrolment = auth::enrol_totp(&state, &tokens.access.token, STRONG_PASSWORD, &origin)
        .await
        .expect("enrol");
    let secret = shared::totp::from_base32(&enrolment.secret).expect("base32");
    let step = shared::totp::step_of(state.now().timestamp());
    let code = shared::totp::Code::parse(&shared::totp::code_at_step(&secret, step)).expect("code");
    auth::confirm_totp(&state, &tokens.access.token, &code, &origin)
        .await
        .expect("confirm");
    assert!(matches!(
        auth::login(
            &state,
            credentials("cy@example.com", STRONG_PASSWORD),
            &origin
        )
        .await,
        Err(AuthError::MfaRequired(_))
    ));

    let out = authctl(&url, &["mfa", "reset", "--user", "Cy@Example.com"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout(&out),
        "mfa reset: cy@example.com: two-step login is off, every session ended\n"
    );
    assert_eq!(
        auth::current_user(&state, &tokens.access.token, &origin)
            .await
            .err(),
        Some(AuthError::InvalidToken),
        "every session ended"
    );
    auth::login(
        &state,
        credentials("cy@example.com", STRONG_PASSWORD),
        &origin,
    )
    .await
    .expect("the password alone logs in again");
    let out = authctl(&url, &["events", "--user", "cy@example.com"]);
    let listed = stdout(&out);
    assert!(
        listed
            .lines()
            .any(|l| l.contains("\tmfa.disabled\toperator\tsession=-\tip=-\tua=authctl/")),
        "{listed}"
    );

    let out = authctl(&url, &["mfa", "reset", "--user", "nobody@example.com"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(stderr(&out), "mfa reset: no account nobody@example.com\n");
}

fn url_as(url: &str, user: &str, password: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("url");
    parsed.set_username(user).expect("user");
    parsed.set_password(Some(password)).expect("password");
    parsed.to_string()
}

fn database_name(url: &str) -> String {
    url::Url::parse(url)
        .expect("url")
        .path()
        .trim_start_matches('/')
        .to_owned()
}

/// Lines of the printed SQL that start with `prefix`, without it and the `TO "role";` tail.
fn granted<'a>(sql: &'a str, prefix: &str, role: &str) -> Vec<&'a str> {
    let tail = format!(" TO \"{role}\";");
    sql.lines()
        .filter_map(|l| l.strip_prefix(prefix)?.strip_suffix(tail.as_str()))
        .collect()
}

fn sorted(list: &str) -> Vec<String> {
    let mut v: Vec<String> = list.split(", ").map(str::to_owned).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_prints_what_the_functions_need_for_every_table_and_function_the_migrations_made() {
    let url = fresh_database().await;
    let out = authctl(&url, &["grants", "--role", "auth_fn"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "authctl: {} migration(s) pending: run `authctl migrate` first, so that the grants cover every table\n",
            migration_names().len()
        )
    );
    assert!(authctl(&url, &["migrate"]).status.success());

    let out = authctl(&url, &["grants", "--role", "auth_fn"]);
    assert!(out.status.success(), "{}", text(&out));
    let sql = stdout(&out);
    let db = database_name(&url);
    let lines: Vec<&str> = sql.lines().collect();
    assert_eq!(
        lines[..5],
        [
            "-- authctl grants: what the functions need as role \"auth_fn\", and nothing more.",
            "-- Run as the tables' owner; it revokes first, so running it again changes nothing.",
            "BEGIN;",
            &format!("REVOKE ALL ON DATABASE {db} FROM \"auth_fn\";"),
            "REVOKE ALL ON SCHEMA public FROM \"auth_fn\";",
        ]
    );
    assert_eq!(lines.last(), Some(&"COMMIT;"));
    assert_eq!(
        granted(&sql, "GRANT CONNECT ON DATABASE ", "auth_fn"),
        [db.as_str()]
    );
    assert_eq!(
        granted(&sql, "GRANT USAGE ON SCHEMA ", "auth_fn"),
        ["public"]
    );
    assert_eq!(
        granted(&sql, "GRANT SELECT, INSERT ON TABLE ", "auth_fn"),
        ["auth_events"]
    );
    // Every table the migrations made, read from the catalog independently of authctl's query.
    let tables = psql(
        &url,
        "SELECT string_agg(tablename, ', ') FROM pg_tables WHERE schemaname = 'public' \
         AND tablename NOT IN ('auth_events', 'refinery_schema_history')",
    );
    let dml = granted(
        &sql,
        "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE ",
        "auth_fn",
    );
    assert_eq!(dml.len(), 1, "{sql}");
    assert_eq!(sorted(dml[0]), sorted(&tables));
    for table in [
        "users",
        "sessions",
        "refresh_tokens",
        "login_throttle",
        "ip_requests",
    ] {
        assert!(sorted(dml[0]).contains(&table.to_owned()), "{table}: {sql}");
    }
    let functions = psql(
        &url,
        "SELECT string_agg(oid::regprocedure::text, ', ') FROM pg_proc \
         WHERE pronamespace = 'public'::regnamespace",
    );
    let execute = granted(&sql, "GRANT EXECUTE ON FUNCTION ", "auth_fn");
    assert_eq!(execute.len(), 1, "{sql}");
    assert_eq!(sorted(execute[0]), sorted(&functions));
    for function in [
        "auth_refresh(",
        "auth_ip_allow(",
        "auth_login_attempt(",
        "auth_refusal(",
    ] {
        assert!(execute[0].contains(function), "{function}: {sql}");
    }
    assert_eq!(
        granted(&sql, "GRANT USAGE ON SEQUENCE ", "auth_fn"),
        ["auth_events_id_seq"]
    );
    // Nothing else is granted: no CREATE, no ALL, nothing on refinery's table.
    let grants: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("GRANT"))
        .collect();
    assert_eq!(grants.len(), 6, "{sql}");
    assert!(!sql.contains("refinery"), "{sql}");

    for bad in ["x\"; DROP TABLE users; --", "Auth_Fn", "public", ""] {
        let out = authctl(&url, &["grants", "--role", bad, "--apply"]);
        assert_eq!(out.status.code(), Some(1), "{bad}: {}", text(&out));
        assert!(
            stderr(&out).starts_with(&format!("authctl: --role {bad:?} is ")),
            "{}",
            text(&out)
        );
        assert_eq!(stdout(&out), "");
    }
    assert_eq!(psql(&url, "SELECT to_regclass('users') IS NOT NULL"), "t");

    let out = authctl(&url, &["grants", "--role", "no_such_role_here", "--apply"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        stderr(&out),
        "authctl: role \"no_such_role_here\" does not exist: create it first (CREATE ROLE no_such_role_here LOGIN PASSWORD '…')\n"
    );
}

/// The SQLSTATE a statement run as the role fails with.
async fn refused(client: &tokio_postgres::Client, sql: &str) -> Option<SqlState> {
    client
        .batch_execute(sql)
        .await
        .err()
        .and_then(|e| e.code().cloned())
}

#[tokio::test(flavor = "multi_thread")]
async fn applied_grants_let_the_functions_work_and_nothing_more() {
    let url = migrated_database().await;
    let db = database_name(&url);
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let role = format!("fn_{}", &suffix[..12]);
    let password = format!("pw-{suffix}");
    psql(
        &url,
        &format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"),
    );
    // Rights given by hand earlier are taken back: the grants are exactly what they say.
    psql(
        &url,
        &format!("GRANT ALL ON auth_events TO {role}; GRANT CREATE ON SCHEMA public TO {role}"),
    );

    let admin_password = url::Url::parse(&url)
        .expect("url")
        .password()
        .unwrap_or_default()
        .to_owned();
    for _ in 0..2 {
        let out = authctl(&url, &["grants", "--role", &role, "--apply"]);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(
            stdout(&out),
            format!("grants: applied to role \"{role}\" on database {db}\n")
        );
        assert_eq!(stderr(&out), "");
        assert!(!admin_password.is_empty() && !text(&out).contains(&admin_password));
        assert!(!text(&out).contains(&password));
    }

    // The functions' operations, all of them, as the role.
    let role_url = url_as(&url, &role, &password);
    let state = state(
        &role_url,
        &[
            ("LOGIN_LOCK_AFTER", "2"),
            ("LOGIN_BACKOFF_AFTER", "1000"),
            ("LOGIN_ACCOUNT_BACKOFF_AFTER", "1000"),
        ],
        at(Duration::zero()),
    );
    let origin = from("192.0.2.10");
    auth::check_source_address(&state, &origin, "register")
        .await
        .expect("address window");
    auth::register(
        &state,
        credentials("cy@example.com", STRONG_PASSWORD),
        &origin,
    )
    .await
    .expect("register");
    let taken = auth::register(
        &state,
        credentials("cy@example.com", STRONG_PASSWORD),
        &origin,
    )
    .await;
    assert_eq!(taken.err(), Some(AuthError::EmailTaken));
    let tokens = auth::login(
        &state,
        credentials("cy@example.com", STRONG_PASSWORD),
        &origin,
    )
    .await
    .expect("login");
    let me = auth::current_user(&state, &tokens.access.token, &origin)
        .await
        .expect("me");
    assert_eq!(me.email, "cy@example.com");
    let rotated = auth::refresh(&state, &tokens.refresh_token, &origin)
        .await
        .expect("refresh");
    // A refused refresh, twice: the second raises the count of the first one's audit row.
    for _ in 0..2 {
        let bad = auth::refresh(&state, "not-a-refresh-token", &origin).await;
        assert_eq!(bad.err(), Some(AuthError::InvalidToken));
    }
    auth::logout(&state, &rotated.access.token, true, &origin)
        .await
        .expect("logout");
    for _ in 0..2 {
        let wrong = auth::login(
            &state,
            credentials("cy@example.com", "wrong wrong wrong"),
            &origin,
        )
        .await;
        assert_eq!(wrong.err(), Some(AuthError::InvalidCredentials));
    }
    let locked = auth::login(
        &state,
        credentials("cy@example.com", STRONG_PASSWORD),
        &origin,
    )
    .await;
    assert_eq!(locked.err(), Some(AuthError::AccountLocked));
    let email = Email::parse("cy@example.com").expect("email");
    assert_eq!(
        store::unlock(&state.db, &email, state.now(), &origin)
            .await
            .ok(),
        Some(true)
    );
    let events = store::events_for(&state.db, &email, 50)
        .await
        .expect("events");
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "account.unlocked",
            "login.failed",
            "login.failed",
            "login.failed",
            "logout.succeeded",
            "refresh.succeeded",
            "login.succeeded",
            "user.registered",
        ],
        "every audit row was written as the role (audit writes fail quietly)"
    );
    // The refusals without an account were audited too, the repeat as a count.
    assert_eq!(
        psql(
            &url,
            "SELECT event || ' ' || reason || ' ' || count FROM auth_events \
             WHERE user_id IS NULL ORDER BY id"
        ),
        "register.rejected email_taken 1\nrefresh.failed malformed 2"
    );
    // Every request to a route the window guards was counted by its own statement: the check,
    // two registers, four logins and three refreshes.
    assert_eq!(psql(&url, "SELECT count(*) FROM ip_requests"), "10");

    // What the role cannot do: change the schema, change or delete audit rows, read refinery's.
    let (client, connection) = tokio_postgres::connect(&role_url, NoTls)
        .await
        .expect("connect as the role");
    tokio::spawn(connection);
    for sql in [
        "DELETE FROM auth_events",
        "UPDATE auth_events SET reason = 'forged'",
        "UPDATE auth_events SET count = count + 1",
        "TRUNCATE auth_events",
        "CREATE TABLE x ()",
        "DROP TABLE users",
        "ALTER TABLE users ADD COLUMN x integer",
        "DROP FUNCTION auth_refresh",
        "CREATE FUNCTION f() RETURNS integer LANGUAGE sql AS 'SELECT 1'",
        "CREATE SCHEMA s",
        "SELECT * FROM refinery_schema_history",
    ] {
        assert_eq!(
            refused(&client, sql).await,
            Some(SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}"
        );
    }
    // Pruning deletes audit rows, so it needs the owner's URL, not the functions' role.
    match store::prune(&state.db, state.now(), state.now()).await {
        Err(DbError::Query(e)) => assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE)),
        other => panic!("prune as the role: {other:?}"),
    }
    assert_eq!(psql(&url, "SELECT count(*) > 8 FROM auth_events"), "t");
    drop(client);
    drop(state);

    psql(&url, &format!("DROP OWNED BY {role}"));
    psql(&url, &format!("DROP ROLE {role}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_refuse_a_role_that_could_still_change_the_schema_and_change_nothing() {
    let url = migrated_database().await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let role = format!("fn_{}", &suffix[..12]);
    // A member of the tables' owner, as a Neon Console role is a member of neon_superuser.
    let owner = psql(
        &url,
        "SELECT tableowner FROM pg_tables WHERE tablename = 'users'",
    );
    psql(&url, &format!("CREATE ROLE {role} LOGIN IN ROLE {owner}"));
    let before = psql(
        &url,
        "SELECT count(*) FROM information_schema.role_table_grants",
    );

    let out = authctl(&url, &["grants", "--role", &role, "--apply"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = stderr(&out);
    assert!(
        report.starts_with(&format!(
            "grants: not applied: role \"{role}\" would still be able to change the schema or the audit log:\n"
        )),
        "{report}"
    );
    assert!(
        report.contains("\n  - owns the database, or is a member of its owner\n"),
        "{report}"
    );
    assert!(
        report.contains("\n  - owns, or is a member of the owner of, auth_events, "),
        "{report}"
    );
    assert!(
        report.contains("\n  - has DELETE, TRUNCATE, UPDATE on auth_events\n"),
        "{report}"
    );
    assert!(
        report.ends_with("(on Neon: in the SQL Editor, not the Console, whose roles are members of neon_superuser)\n"),
        "{report}"
    );
    assert_eq!(stdout(&out), "");
    assert_eq!(
        psql(
            &url,
            "SELECT count(*) FROM information_schema.role_table_grants"
        ),
        before,
        "rolled back"
    );

    let out = authctl(&url, &["grants", "--role", &owner, "--apply"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("\n  - is a superuser\n"),
        "{}",
        text(&out)
    );
    assert_eq!(
        psql(
            &url,
            "SELECT count(*) FROM information_schema.role_table_grants"
        ),
        before
    );

    psql(&url, &format!("DROP ROLE {role}"));
}

/// The system roots are looked up lazily in OpenSSL's hashed directory (`shared::tls`): a CA
/// linked there under its subject hash is trusted with no `sslrootcert`, and nothing else is;
/// `SSL_CERT_DIR` and `SSL_CERT_FILE` mean what they mean to OpenSSL.
/// Against the TLS cluster `make test` names in `FAULT_PG`.
#[test]
fn system_roots_are_found_in_a_hashed_certificate_directory() {
    let spec =
        std::env::var("FAULT_PG").expect("FAULT_PG names the TLS cluster `make test` starts");
    let (name, port) = spec.split_once(' ').expect("FAULT_PG is \"NAME PORT\"");
    let pg_sh = |args: &[&str]| {
        let out = Command::new("../scripts/pg.sh")
            .args(args)
            .output()
            .expect("pg.sh runs");
        assert!(out.status.success(), "pg.sh {args:?}: {}", stderr(&out));
        stdout(&out).trim().to_owned()
    };
    let ca = pg_sh(&["ca", name, port]);
    let mut url = url::Url::parse(&pg_sh(&["url", name, port, "postgres"])).expect("url");
    // The server's certificate names localhost.
    url.set_host(Some("localhost")).expect("host");
    url.set_query(Some("sslmode=verify-full"));
    let hash = Command::new("openssl")
        .args(["x509", "-hash", "-noout", "-in", &ca])
        .output()
        .expect("openssl runs");
    let hash = stdout(&hash).trim().to_owned();
    assert_eq!(hash.len(), 8, "subject hash {hash:?}");
    let with_ca = std::env::temp_dir().join(format!("roots-{}", uuid::Uuid::new_v4().simple()));
    let without_ca = with_ca.with_extension("other");
    std::fs::create_dir_all(&with_ca).expect("dir");
    std::fs::create_dir_all(&without_ca).expect("dir");
    std::fs::copy(&ca, with_ca.join(format!("{hash}.0"))).expect("link the CA");
    std::fs::write(without_ca.join("00000000.0"), b"").expect("a hashed directory without it");
    let status = |variable: &str, path: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_authctl"))
            .arg("status")
            .env("DATABASE_URL", url.as_str())
            .env_remove("SSL_CERT_DIR")
            .env_remove("SSL_CERT_FILE")
            .env(variable, path)
            .env_remove("PGSSLROOTCERT")
            .output()
            .expect("authctl runs")
    };
    let trusted = status("SSL_CERT_DIR", &with_ca);
    assert!(trusted.status.success(), "{}", text(&trusted));
    // SSL_CERT_DIR replaces the system's directories (as in OpenSSL), so this trusts nothing.
    let untrusted = status("SSL_CERT_DIR", &without_ca);
    assert!(!untrusted.status.success(), "{}", text(&untrusted));
    // SSL_CERT_FILE names a bundle to trust besides the system's hashed directory.
    let bundle = status("SSL_CERT_FILE", std::path::Path::new(&ca));
    assert!(bundle.status.success(), "{}", text(&bundle));
    for dir in [with_ca, without_ca] {
        std::fs::remove_dir_all(dir).expect("clean up");
    }
}
