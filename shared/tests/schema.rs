//! The embedded migrations and the schema check against a real Postgres.

mod common;

use common::{config, create_database};
use shared::{AppState, schema};

async fn fresh() -> (AppState, deadpool_postgres::Object) {
    let state = AppState::new(config(&create_database().await, &[])).expect("state");
    let client = state.db.connection().await.expect("connection");
    (state, client)
}

#[tokio::test]
async fn migrations_apply_once_and_status_lists_them() {
    let (_state, mut client) = fresh().await;
    let before = schema::status(&mut client).await.expect("status");
    assert!(before.iter().all(|m| m.applied_on.is_none()));
    assert_eq!(
        before.first().map(|m| (m.version, m.name.as_str())),
        Some((1, "create_users"))
    );
    let applied = schema::migrate(&mut client).await.expect("migrate");
    assert_eq!(applied.len(), before.len());
    assert!(
        schema::migrate(&mut client)
            .await
            .expect("again")
            .is_empty()
    );
    assert!(
        schema::status(&mut client)
            .await
            .expect("status")
            .iter()
            .all(|m| m.applied_on.is_some())
    );
}

#[tokio::test]
async fn verify_accepts_the_migrated_schema_and_names_each_difference() {
    let (_state, mut client) = fresh().await;
    assert_eq!(
        schema::verify(&client).await.expect("verify"),
        vec!["table users: missing (run `authctl migrate`)"]
    );
    schema::migrate(&mut client).await.expect("migrate");
    assert_eq!(
        schema::verify(&client).await.expect("verify"),
        Vec::<String>::new()
    );
    client
        .batch_execute(
            "ALTER TABLE users DROP CONSTRAINT users_email_key; \
             ALTER TABLE users ALTER COLUMN is_active DROP NOT NULL; \
             ALTER TABLE users ALTER COLUMN email TYPE varchar(300); \
             ALTER TABLE users ADD COLUMN nickname text NOT NULL",
        )
        .await
        .expect("alter");
    let differences = schema::verify(&client).await.expect("verify");
    let text = differences.join("\n");
    assert!(
        text.contains("column users.is_active: expected boolean NOT NULL, found boolean NULL"),
        "{text}"
    );
    assert!(
        text.contains(
            "column users.email: expected text NOT NULL, found character varying NOT NULL"
        ),
        "{text}"
    );
    assert!(text.contains("unique constraint on users(email)"), "{text}");
    assert!(
        text.contains("index: missing valid unique index on users(email)"),
        "{text}"
    );
    assert!(text.contains("column users.nickname"), "{text}");
}
