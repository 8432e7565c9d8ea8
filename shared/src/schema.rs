//! The schema: the migrations in `migrations/`, embedded at compile time and applied with
//! refinery, and a check that the live `users` table is what the code expects. Only the CLI
//! and the tests compile this (feature `migrations`); the Lambdas never migrate.

use tokio_postgres::Client;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// One migration and whether it has been applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// `V{version}`.
    pub version: i32,
    /// The file's name after the version.
    pub name: String,
    /// When it was applied, RFC 3339, if it was.
    pub applied_on: Option<String>,
}

/// Applies every migration not yet applied, each in its own transaction; idempotent.
/// Returns the ones applied now.
pub async fn migrate(client: &mut Client) -> Result<Vec<MigrationStatus>, refinery::Error> {
    let report = embedded::migrations::runner().run_async(client).await?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| MigrationStatus {
            version: m.version() as i32,
            name: m.name().to_owned(),
            applied_on: None,
        })
        .collect())
}

/// Every embedded migration with its state in this database.
pub async fn status(client: &mut Client) -> Result<Vec<MigrationStatus>, refinery::Error> {
    let runner = embedded::migrations::runner();
    let has_history = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await
        .is_ok_and(|row| row.get::<_, bool>(0));
    let applied = if has_history {
        runner.get_applied_migrations_async(client).await?
    } else {
        Vec::new()
    };
    let mut migrations = runner.get_migrations().clone();
    migrations.sort_by_key(|m| m.version());
    Ok(migrations
        .iter()
        .map(|m| MigrationStatus {
            version: m.version() as i32,
            name: m.name().to_owned(),
            applied_on: applied
                .iter()
                .find(|a| a.version() == m.version())
                .and_then(|a| a.applied_on())
                .map(|t| {
                    let zone = if t.offset().is_utc() { "Z" } else { "" };
                    format!(
                        "{}T{:02}:{:02}:{:02}{zone}",
                        t.date(),
                        t.hour(),
                        t.minute(),
                        t.second()
                    )
                }),
        })
        .collect())
}

/// (column, data type, nullable) as `information_schema.columns` reports them.
const USERS_COLUMNS: &[(&str, &str, bool)] = &[
    ("id", "uuid", false),
    ("email", "text", false),
    ("hashed_password", "text", false),
    ("is_active", "boolean", false),
    ("created_at", "timestamp with time zone", false),
    ("updated_at", "timestamp with time zone", false),
];

/// Compares the live `users` table with what the code expects: columns, types, nullability,
/// the primary key, the unique constraint and index on `email`, and the check constraints.
/// Returns one readable line per difference; empty means the schema is as expected.
pub async fn verify(client: &Client) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut differences = Vec::new();

    let columns = client
        .query(
            "SELECT column_name::text, data_type::text, is_nullable = 'YES', column_default IS NOT NULL \
             FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = 'users'",
            &[],
        )
        .await?;
    if columns.is_empty() {
        differences.push("table users: missing (run `authctl migrate`)".to_owned());
        return Ok(differences);
    }
    let found: Vec<(String, String, bool, bool)> = columns
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    for (name, data_type, nullable) in USERS_COLUMNS {
        match found.iter().find(|(n, ..)| n == name) {
            None => differences.push(format!(
                "column users.{name}: missing, expected {}",
                describe(data_type, *nullable)
            )),
            Some((_, t, n, _)) if t != data_type || n != nullable => differences.push(format!(
                "column users.{name}: expected {}, found {}",
                describe(data_type, *nullable),
                describe(t, *n)
            )),
            Some(_) => {}
        }
    }
    for (name, t, n, has_default) in &found {
        if !USERS_COLUMNS.iter().any(|(c, _, _)| c == name) && !n && !has_default {
            differences.push(format!(
                "column users.{name}: unexpected {} without a default (inserts by this code would fail)",
                describe(t, *n)
            ));
        }
    }

    // contype: p = primary key, u = unique, c = check; columns sorted for comparison.
    let constraints = client
        .query(
            "SELECT c.conname::text, c.contype::text, \
                    coalesce(array_agg(a.attname::text ORDER BY a.attname) FILTER (WHERE a.attname IS NOT NULL), '{}') \
             FROM pg_constraint c \
             JOIN pg_class t ON t.oid = c.conrelid \
             LEFT JOIN LATERAL unnest(c.conkey) AS k(attnum) ON true \
             LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum \
             WHERE t.oid = to_regclass('users') \
             GROUP BY c.conname, c.contype",
            &[],
        )
        .await?;
    let has = |kind: &str, cols: &[&str]| {
        constraints
            .iter()
            .any(|r| r.get::<_, String>(1) == kind && r.get::<_, Vec<String>>(2) == cols)
    };
    if !has("p", &["id"]) {
        differences.push("constraint: missing primary key on users(id)".to_owned());
    }
    if !has("u", &["email"]) {
        differences.push("constraint: missing unique constraint on users(email) (registration would not be race-safe)".to_owned());
    }
    for check in ["users_email_normalized", "users_hashed_password_phc"] {
        if !constraints
            .iter()
            .any(|r| r.get::<_, String>(0) == check && r.get::<_, String>(1) == "c")
        {
            differences.push(format!("constraint: missing check {check}"));
        }
    }

    let unique_email_index = client
        .query(
            "SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
             WHERE i.indrelid = to_regclass('users') AND i.indisunique AND i.indisvalid \
               AND i.indnatts = 1 AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname = 'email'",
            &[],
        )
        .await?;
    if unique_email_index.is_empty() {
        differences.push("index: missing valid unique index on users(email)".to_owned());
    }

    // The session, limit and audit tables and the functions that work on them (V2).
    for table in [
        "sessions",
        "refresh_tokens",
        "login_throttle",
        "ip_requests",
        "auth_events",
    ] {
        let found = client
            .query_one("SELECT to_regclass($1::text) IS NOT NULL", &[&table])
            .await?;
        if !found.get::<_, bool>(0) {
            differences.push(format!("table {table}: missing (run `authctl migrate`)"));
        }
    }
    for function in [
        "auth_refresh",
        "auth_ip_allow",
        "auth_login_attempt",
        "auth_end_sessions",
        "auth_refusal",
        "auth_backoff",
    ] {
        let found = client
            .query_one(
                "SELECT count(*) > 0 FROM pg_proc WHERE proname = $1::text",
                &[&function],
            )
            .await?;
        if !found.get::<_, bool>(0) {
            differences.push(format!(
                "function {function}: missing (run `authctl migrate`)"
            ));
        }
    }
    Ok(differences)
}

fn describe(data_type: &str, nullable: bool) -> String {
    format!("{data_type} {}", if nullable { "NULL" } else { "NOT NULL" })
}
