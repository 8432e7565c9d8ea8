//! `authctl`: the operator's tool for the auth database. What each subcommand prints:
//!
//! - `migrate` applies the migrations embedded from `migrations/` (idempotent): one line
//!   `migrate: applied V{n}__{name}` per migration, or `migrate: nothing to apply, the schema is
//!   up to date`;
//! - `verify` checks that the tables and functions are what the code expects: `verify: the
//!   users table is as expected`, or exit 1 with `verify: {n} difference(s) from the expected
//!   schema:` and one `  - {difference}` line each (on stderr);
//! - `status` lists the migrations, `V{n}__{name}\tapplied {RFC 3339}` or `\tpending`;
//! - `events --user EMAIL [--limit N]` lists an account's recent audit events, newest first, one
//!   `{time}\t{event}\t{reason}\tsession={id}\tip={address}\tua={agent}` line each (`-` for
//!   none), or `events: none for {email}`;
//! - `prune` deletes what has expired and prints `prune: deleted {a} audit events, {s} sessions
//!   and {m} finished messages older than {d} days, {i} address-window rows, {t} backoff rows,
//!   {l} expired links, {r} mail-request counts and {c} expired login challenges`;
//! - `unlock --user EMAIL` lifts the account's lock (`403 account_locked`) and its backoffs,
//!   audited as `account.unlocked`: `unlock: {email}: lock and backoffs cleared`, or exit 1
//!   with `unlock: no account {email}` (its backoff rows are cleared all the same);
//! - `mfa reset --user EMAIL` turns two-step login off for a user who lost both the device and
//!   the recovery codes: the secret, the codes and pending login challenges go and every session
//!   ends, audited as `mfa.disabled` with the reason `operator`: `mfa reset: {email}: two-step
//!   login is off, every session ended`, or exit 1 with `mfa reset: no account {email}`. Check
//!   who is asking first: this hands the account to whoever knows its password;
//! - `grants --role NAME` prints the SQL that gives a database role what the functions need and
//!   nothing more (see `shared::schema::grants`); with `--apply` it runs it in one transaction,
//!   checks that the role can neither change the schema nor change or delete audit rows, and
//!   prints `grants: applied to role "{name}" on database {db}`; exit 1 without a change when
//!   the check fails, naming what the role could still do.
//!
//! It reads `DATABASE_URL` (and `PGSSLROOTCERT`) like the functions do, Neon URLs included, and
//! never prints the URL or its password.

use clap::{Parser, Subcommand};
use shared::{
    config::Secret,
    db::{Db, DbError},
    email::Email,
    origin::Origin,
    schema::{self, RoleName},
    store,
};
use std::{path::PathBuf, process::ExitCode, time::Duration};

#[derive(Parser)]
#[command(
    name = "authctl",
    version,
    about = "Migrate, verify and inspect the auth database"
)]
struct Cli {
    /// Postgres URL; Neon's console form (`?sslmode=require&channel_binding=require`) works as is.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// PEM root certificate(s) trusted for the database's TLS (system roots otherwise).
    #[arg(long, env = "PGSSLROOTCERT")]
    ssl_root_cert: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the migrations not yet applied.
    Migrate,
    /// Check the live schema against what the code expects; exit 1 on any difference.
    Verify,
    /// List the migrations and whether each is applied.
    Status,
    /// List an account's most recent audit events, newest first.
    Events {
        /// The account's email (any case; normalized like at login).
        #[arg(long)]
        user: String,
        /// How many events.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Delete audit events and ended or expired sessions older than the retention, and the
    /// address windows and backoffs that have run out.
    Prune {
        /// Keep this many days.
        #[arg(long, env = "AUDIT_RETENTION_DAYS", default_value_t = 90)]
        retention_days: u32,
    },
    /// Lift an account's lock and backoffs (audited as `account.unlocked`).
    Unlock {
        /// The account's email (any case; normalized like at login).
        #[arg(long)]
        user: String,
    },
    /// Operator actions on an account's two-step login.
    Mfa {
        #[command(subcommand)]
        action: MfaAction,
    },
    /// Print the SQL giving a database role what the functions need and nothing more.
    Grants {
        /// The role the functions connect as (create it first: `CREATE ROLE name LOGIN PASSWORD '…'`).
        #[arg(long)]
        role: String,
        /// Run the SQL against DATABASE_URL (as the tables' owner) instead of printing it.
        #[arg(long)]
        apply: bool,
    },
}

#[derive(Subcommand)]
enum MfaAction {
    /// Turn two-step login off and end every session (audited as `mfa.disabled`, reason
    /// `operator`), for a user who lost the device and the recovery codes.
    Reset {
        /// The account's email (any case; normalized like at login).
        #[arg(long)]
        user: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let url = Secret::new(cli.database_url);
    match run(&url, cli.ssl_root_cert, cli.command).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("authctl: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A failed store call as the operator needs to read it: which action, and why.
fn store_error(action: &str, error: DbError) -> String {
    match error {
        DbError::Unavailable => {
            format!("could not {action}: could not connect to the database in time")
        }
        DbError::Query(e) => format!("could not {action}: {}", shared::db::describe(&e)),
        other => format!("could not {action}: {other:?}"),
    }
}

fn connect_error(e: DbError) -> String {
    match e {
        DbError::Query(e) => format!("could not connect to the database: {e}"),
        _ => "could not connect to the database in time".to_owned(),
    }
}

async fn run(
    url: &Secret<String>,
    root: Option<PathBuf>,
    command: Command,
) -> Result<ExitCode, String> {
    // One connection is all authctl uses at a time: the store calls take theirs from the pool
    // and give it back, so no arm may hold one across a store call (it would wait for itself).
    // Migrations may wait on locks; give them longer than a request gets.
    let db = Db::new(url.expose(), root.as_deref(), 1, Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let operator = Origin {
        source_ip: None,
        user_agent: Some(format!("authctl/{}", env!("CARGO_PKG_VERSION"))),
    };
    match command {
        Command::Migrate => {
            let mut client = db.connection().await.map_err(connect_error)?;
            let applied = schema::migrate(&mut client)
                .await
                .map_err(|e| format!("migration failed: {e}"))?;
            if applied.is_empty() {
                println!("migrate: nothing to apply, the schema is up to date");
            }
            for m in applied {
                println!("migrate: applied V{}__{}", m.version, m.name);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify => {
            let client = db.connection().await.map_err(connect_error)?;
            let differences = schema::verify(&client)
                .await
                .map_err(|e| format!("could not read the schema: {e}"))?;
            if differences.is_empty() {
                println!("verify: the users table is as expected");
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!(
                "verify: {} difference(s) from the expected schema:",
                differences.len()
            );
            for d in differences {
                eprintln!("  - {d}");
            }
            Ok(ExitCode::FAILURE)
        }
        Command::Status => {
            let mut client = db.connection().await.map_err(connect_error)?;
            let migrations = schema::status(&mut client)
                .await
                .map_err(|e| format!("could not read migrations: {e}"))?;
            for m in migrations {
                let state = m
                    .applied_on
                    .map_or_else(|| "pending".to_owned(), |at| format!("applied {at}"));
                println!("V{}__{}\t{state}", m.version, m.name);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Events { user, limit } => {
            let email = Email::parse(&user).map_err(|e| e.detail())?;
            let events = store::events_for(&db, &email, limit)
                .await
                .map_err(|e| store_error("read the audit log", e))?;
            if events.is_empty() {
                println!("events: none for {email}");
            }
            for e in events {
                let field = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
                println!(
                    "{}\t{}\t{}\tsession={}\tip={}\tua={}",
                    e.occurred_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    e.event,
                    field(e.reason),
                    field(e.session_id.map(|s| s.to_string())),
                    field(e.source_ip),
                    field(e.user_agent),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Prune { retention_days } => {
            let now = chrono::Utc::now();
            let cutoff = now - chrono::Duration::days(i64::from(retention_days));
            let pruned = store::prune(&db, cutoff, now)
                .await
                .map_err(|e| store_error("prune", e))?;
            println!(
                "prune: deleted {} audit events, {} sessions and {} finished messages older than \
                 {retention_days} days, {} address-window rows, {} backoff rows, {} expired links, \
                 {} mail-request counts and {} expired login challenges",
                pruned.events,
                pruned.sessions,
                pruned.mail,
                pruned.ip_requests,
                pruned.throttles,
                pruned.links,
                pruned.mail_requests,
                pruned.challenges
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Unlock { user } => {
            let email = Email::parse(&user).map_err(|e| e.detail())?;
            let found = store::unlock(&db, &email, chrono::Utc::now(), &operator)
                .await
                .map_err(|e| store_error("unlock", e))?;
            if !found {
                eprintln!("unlock: no account {email}");
                return Ok(ExitCode::FAILURE);
            }
            println!("unlock: {email}: lock and backoffs cleared");
            Ok(ExitCode::SUCCESS)
        }
        Command::Mfa {
            action: MfaAction::Reset { user },
        } => {
            let email = Email::parse(&user).map_err(|e| e.detail())?;
            let found = store::mfa_reset(&db, &email, chrono::Utc::now(), &operator)
                .await
                .map_err(|e| store_error("mfa reset", e))?;
            if !found {
                eprintln!("mfa reset: no account {email}");
                return Ok(ExitCode::FAILURE);
            }
            println!("mfa reset: {email}: two-step login is off, every session ended");
            Ok(ExitCode::SUCCESS)
        }
        Command::Grants { role, apply } => grants(&db, &role, apply).await,
    }
}

async fn grants(db: &Db, role: &str, apply: bool) -> Result<ExitCode, String> {
    let role = RoleName::parse(role)?;
    let mut client = db.connection().await.map_err(connect_error)?;
    // The grants cover the tables that exist: all of them only once every migration ran.
    let pending = schema::status(&mut client)
        .await
        .map_err(|e| format!("could not read migrations: {e}"))?
        .into_iter()
        .filter(|m| m.applied_on.is_none())
        .count();
    if pending > 0 {
        return Err(format!(
            "{pending} migration(s) pending: run `authctl migrate` first, so that the grants cover every table"
        ));
    }
    let read = |e: tokio_postgres::Error| format!("could not read the schema: {}", describe(&e));
    let statements = schema::grants(&**client, &role).await.map_err(read)?;
    if !apply {
        println!(
            "-- authctl grants: what the functions need as role {}, and nothing more.",
            role.quoted()
        );
        println!(
            "-- Run as the tables' owner; it revokes first, so running it again changes nothing."
        );
        println!("BEGIN;");
        for s in &statements {
            println!("{s};");
        }
        println!("COMMIT;");
        return Ok(ExitCode::SUCCESS);
    }

    let tx = client
        .transaction()
        .await
        .map_err(|e| format!("could not start a transaction: {}", describe(&e)))?;
    // The check reads the role's rights as the grants left them, before anything is committed.
    let problems = schema::grant_problems(&*tx, &role).await.map_err(read)?;
    let Some(_) = problems else {
        return Err(format!(
            "role {} does not exist: create it first (CREATE ROLE {} LOGIN PASSWORD '…')",
            role.quoted(),
            role.as_str()
        ));
    };
    for s in &statements {
        tx.batch_execute(s)
            .await
            .map_err(|e| format!("could not apply the grants: {}", describe(&e)))?;
    }
    let problems = schema::grant_problems(&*tx, &role)
        .await
        .map_err(read)?
        .unwrap_or_default();
    if !problems.is_empty() {
        drop(tx);
        eprintln!(
            "grants: not applied: role {} would still be able to change the schema or the audit log:",
            role.quoted()
        );
        for p in problems {
            eprintln!("  - {p}");
        }
        eprintln!(
            "use a role made with CREATE ROLE {} LOGIN PASSWORD '…' (on Neon: in the SQL Editor, \
             not the Console, whose roles are members of neon_superuser)",
            role.as_str()
        );
        return Ok(ExitCode::FAILURE);
    }
    let database: String = tx
        .query_one("SELECT format('%I', current_database())", &[])
        .await
        .map_err(read)?
        .get(0);
    tx.commit()
        .await
        .map_err(|e| format!("could not apply the grants: {}", describe(&e)))?;
    println!(
        "grants: applied to role {} on database {database}",
        role.quoted()
    );
    Ok(ExitCode::SUCCESS)
}

fn describe(e: &tokio_postgres::Error) -> String {
    shared::db::describe(e)
}
