//! The schema: the migrations in `migrations/`, embedded at compile time and applied with
//! refinery, and a check that the live `users` table is what the code expects. Only the CLI
//! and the tests compile this (feature `migrations`); the Lambdas never migrate.

use tokio_postgres::{Client, GenericClient};

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
    ("email_verified_at", "timestamp with time zone", true),
    ("mfa_enabled_at", "timestamp with time zone", true),
];

/// Columns the code reads or writes in the other tables, by (table, column).
const OTHER_COLUMNS: &[(&str, &str)] = &[
    ("sessions", "user_agent"),
    ("sessions", "source_ip"),
    ("sessions", "ended_by"),
    ("link_tokens", "used_by"),
    ("outbox", "sealed"),
    ("outbox", "next_attempt_at"),
    ("mail_requests", "request_id"),
    ("sessions", "amr"),
    ("user_totp", "last_step"),
    ("mfa_challenges", "password_fingerprint"),
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

    // The session, limit and audit tables (V2, V3), the mail and account tables (V4), the
    // two-step login tables (V6), and the functions that work on them.
    for table in [
        "sessions",
        "refresh_tokens",
        "login_throttle",
        "ip_requests",
        "auth_events",
        "link_tokens",
        "outbox",
        "mail_requests",
        "user_totp",
        "recovery_codes",
        "mfa_challenges",
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
        "auth_mail_request",
        "auth_link_state",
        "auth_use_link",
        "auth_verify_email",
        "auth_reset_password",
        "auth_reauth_attempt",
        "auth_change_password",
        "auth_delete_user",
        "auth_revoke_session",
        "auth_mail_claim",
        "auth_window",
        "auth_session_state",
        "auth_totp_attempt",
        "auth_totp_enrol",
        "auth_totp_confirm",
        "auth_totp_disable",
        "auth_mfa_attempt",
        "auth_mfa_finish",
        "auth_mfa_reset",
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
    for (table, column) in OTHER_COLUMNS {
        let found = client
            .query_one(
                "SELECT count(*) > 0 FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1::text AND column_name = $2::text",
                &[table, column],
            )
            .await?;
        if !found.get::<_, bool>(0) {
            differences.push(format!(
                "column {table}.{column}: missing (run `authctl migrate`)"
            ));
        }
    }
    Ok(differences)
}

fn describe(data_type: &str, nullable: bool) -> String {
    format!("{data_type} {}", if nullable { "NULL" } else { "NOT NULL" })
}

/// The audit table: the functions' role may read and append to it, never change or delete a row.
pub const AUDIT_TABLE: &str = "auth_events";

/// refinery's bookkeeping, which the functions never touch.
const HISTORY_TABLE: &str = "refinery_schema_history";

/// A database role name `authctl grants` accepts: what an unquoted SQL identifier may be (lower
/// case, so the name typed here is the one `CREATE ROLE name` made), no reserved name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleName(String);

impl RoleName {
    /// Checks `name`; the error says what a valid name looks like.
    pub fn parse(name: &str) -> Result<Self, String> {
        let mut chars = name.chars();
        let well_formed = name.len() <= 63
            && chars
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !well_formed {
            return Err(format!(
                "--role {name:?} is not a role name: 1 to 63 characters a-z, 0-9 and _, not starting with a digit"
            ));
        }
        if name.starts_with("pg_")
            || [
                "public",
                "none",
                "current_role",
                "current_user",
                "session_user",
            ]
            .contains(&name)
        {
            return Err(format!("--role {name:?} is a reserved role name"));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a quoted SQL identifier (it holds no quote: see [`RoleName::parse`]).
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

/// The statements that give `role` what the functions need on this database and nothing more:
/// CONNECT, USAGE on schema public, read and write on every table the migrations made but
/// only read and append on the audit table, USAGE on the sequences, EXECUTE on the functions;
/// no CREATE anywhere, no ownership. Revokes first, so applying them again leaves exactly these
/// grants. The tables, sequences and functions are read from the catalog (schema public,
/// without refinery's table and without extensions' objects), so a new migration's objects are
/// covered without a list to keep in step; run it after `authctl migrate`.
pub async fn grants(
    client: &impl GenericClient,
    role: &RoleName,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let names = |rows: Vec<tokio_postgres::Row>| -> Vec<String> {
        rows.iter().map(|r| r.get::<_, String>(0)).collect()
    };
    // Extensions' objects (pgcrypto's functions, say) are no part of what the migrations made.
    let not_extension = |catalog: &str| {
        format!(
            "NOT EXISTS (SELECT 1 FROM pg_depend d \
             WHERE d.objid = o.oid AND d.classid = '{catalog}'::regclass AND d.deptype = 'e')"
        )
    };
    let tables = names(
        client
            .query(
                &format!(
                    "SELECT format('%I', o.relname) FROM pg_class o \
                     WHERE o.relnamespace = 'public'::regnamespace AND o.relkind IN ('r', 'p') \
                       AND o.relname <> ALL ($1::text[]) AND {} ORDER BY o.relname",
                    not_extension("pg_class")
                ),
                &[&vec![HISTORY_TABLE, AUDIT_TABLE]],
            )
            .await?,
    );
    let sequences = names(
        client
            .query(
                &format!(
                    "SELECT format('%I', o.relname) FROM pg_class o \
                     WHERE o.relnamespace = 'public'::regnamespace AND o.relkind = 'S' \
                       AND {} ORDER BY o.relname",
                    not_extension("pg_class")
                ),
                &[],
            )
            .await?,
    );
    // regprocedure prints the signature, so every overload is named exactly.
    let functions = names(
        client
            .query(
                &format!(
                    "SELECT o.oid::regprocedure::text FROM pg_proc o \
                     WHERE o.pronamespace = 'public'::regnamespace AND o.prokind = 'f' \
                       AND {} ORDER BY o.proname, o.oid",
                    not_extension("pg_proc")
                ),
                &[],
            )
            .await?,
    );
    let database: String = client
        .query_one("SELECT format('%I', current_database())", &[])
        .await?
        .get(0);

    let to = role.quoted();
    let mut sql = vec![
        format!("REVOKE ALL ON DATABASE {database} FROM {to}"),
        format!("REVOKE ALL ON SCHEMA public FROM {to}"),
        format!("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {to}"),
        format!("REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {to}"),
        format!("REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM {to}"),
        // Before PostgreSQL 15 every role may create tables in public; 15 and later revoke it
        // by default, where this changes nothing.
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC".to_owned(),
        format!("GRANT CONNECT ON DATABASE {database} TO {to}"),
        format!("GRANT USAGE ON SCHEMA public TO {to}"),
    ];
    if !tables.is_empty() {
        sql.push(format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {} TO {to}",
            tables.join(", ")
        ));
    }
    sql.push(format!(
        "GRANT SELECT, INSERT ON TABLE {AUDIT_TABLE} TO {to}"
    ));
    if !sequences.is_empty() {
        sql.push(format!(
            "GRANT USAGE ON SEQUENCE {} TO {to}",
            sequences.join(", ")
        ));
    }
    if !functions.is_empty() {
        sql.push(format!(
            "GRANT EXECUTE ON FUNCTION {} TO {to}",
            functions.join(", ")
        ));
    }
    Ok(sql)
}

/// What `role` could still do that the grants mean to rule out, one readable line each: being
/// a superuser or able to create roles, owning (or being able to become the owner of) the
/// database, schema public or a table, creating in the database or the schema, changing or
/// deleting audit rows. Membership counts (a Neon Console role is a member of
/// `neon_superuser`). Empty means the grants hold. `None` when the role does not exist.
pub async fn grant_problems(
    client: &impl GenericClient,
    role: &RoleName,
) -> Result<Option<Vec<String>>, tokio_postgres::Error> {
    let audit = format!("public.{AUDIT_TABLE}");
    let Some(row) = client
        .query_opt(
            "SELECT r.rolsuper, r.rolcreaterole, \
                    pg_has_role(r.oid, d.datdba, 'MEMBER'), \
                    pg_has_role(r.oid, n.nspowner, 'MEMBER'), \
                    coalesce((SELECT string_agg(format('%I', c.relname), ', ' ORDER BY c.relname) \
                              FROM pg_class c \
                              WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p') \
                                AND pg_has_role(r.oid, c.relowner, 'MEMBER')), ''), \
                    has_database_privilege(r.oid, d.oid, 'CREATE'), \
                    has_schema_privilege(r.oid, n.oid, 'CREATE'), \
                    coalesce((SELECT string_agg(p, ', ' ORDER BY p) \
                              FROM unnest(ARRAY['UPDATE', 'DELETE', 'TRUNCATE']) AS p \
                              WHERE has_table_privilege(r.oid, to_regclass($2::text), p)), '') \
             FROM pg_roles r, pg_database d, pg_namespace n \
             WHERE r.rolname = $1::text AND d.datname = current_database() AND n.nspname = 'public'",
            &[&role.as_str(), &audit],
        )
        .await?
    else {
        return Ok(None);
    };
    let mut problems = Vec::new();
    if row.get::<_, bool>(0) {
        problems.push("is a superuser".to_owned());
    }
    if row.get::<_, bool>(1) {
        problems.push("may create roles (CREATEROLE), and so grant itself more".to_owned());
    }
    if row.get::<_, bool>(2) {
        problems.push("owns the database, or is a member of its owner".to_owned());
    }
    if row.get::<_, bool>(3) {
        problems.push("owns schema public, or is a member of its owner".to_owned());
    }
    let owned: String = row.get(4);
    if !owned.is_empty() {
        problems.push(format!("owns, or is a member of the owner of, {owned}"));
    }
    if row.get::<_, bool>(5) {
        problems.push("may create schemas in the database".to_owned());
    }
    if row.get::<_, bool>(6) {
        problems.push("may create objects in schema public".to_owned());
    }
    let audit_rights: String = row.get(7);
    if !audit_rights.is_empty() {
        problems.push(format!("has {audit_rights} on {AUDIT_TABLE}"));
    }
    Ok(Some(problems))
}

#[cfg(test)]
mod tests {
    use super::RoleName;

    #[test]
    fn role_names_are_plain_identifiers_so_nothing_can_be_injected() {
        assert_eq!(
            RoleName::parse("auth_fn").map(|r| r.quoted()),
            Ok("\"auth_fn\"".to_owned())
        );
        assert_eq!(
            RoleName::parse("_a1").map(|r| r.quoted()),
            Ok("\"_a1\"".to_owned())
        );
        for bad in [
            "",
            "1abc",
            "Auth_Fn",
            "auth-fn",
            "auth fn",
            "x\"; DROP TABLE users; --",
            "a'b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(
                RoleName::parse(bad).is_err_and(|e| e.contains("is not a role name")),
                "{bad}"
            );
        }
        for reserved in ["public", "pg_monitor", "current_user", "none"] {
            assert!(
                RoleName::parse(reserved).is_err_and(|e| e.contains("reserved")),
                "{reserved}"
            );
        }
        assert!(RoleName::parse(&"a".repeat(63)).is_ok());
    }
}
