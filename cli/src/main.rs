//! `authctl`: the operator's tool for the auth database.
//!
//! - `migrate` applies the migrations embedded from `migrations/` (idempotent);
//! - `verify` checks that the `users` table is what the code expects, and exits 1 with the
//!   differences otherwise;
//! - `status` lists the migrations and when each was applied;
//! - `events --user EMAIL` lists an account's recent audit events;
//! - `prune` deletes audit rows and finished sessions older than the retention.
//!
//! It reads `DATABASE_URL` (and `PGSSLROOTCERT`) like the functions do, Neon URLs included.

use clap::{Parser, Subcommand};
use shared::{config::Secret, db::Db, email::Email, schema, store};
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
    /// Delete audit events and ended or expired sessions older than the retention.
    Prune {
        /// Keep this many days.
        #[arg(long, env = "AUDIT_RETENTION_DAYS", default_value_t = 90)]
        retention_days: u32,
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

async fn run(
    url: &Secret<String>,
    root: Option<PathBuf>,
    command: Command,
) -> Result<ExitCode, String> {
    // Migrations may wait on locks; give them longer than a request gets.
    let db = Db::new(url.expose(), root.as_deref(), 1, Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let mut client = db.connection().await.map_err(|e| match e {
        shared::db::DbError::Query(e) => format!("could not connect to the database: {e}"),
        _ => "could not connect to the database in time".to_owned(),
    })?;
    match command {
        Command::Migrate => {
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
        Command::Events { user, limit } => {
            let email = Email::parse(&user).map_err(|e| e.detail())?;
            let events = store::events_for(&db, &email, limit)
                .await
                .map_err(|_| "could not read the audit log".to_owned())?;
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
                .map_err(|_| "could not prune".to_owned())?;
            println!(
                "prune: deleted {} audit events and {} sessions older than {retention_days} days",
                pruned.events, pruned.sessions
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => {
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
    }
}
