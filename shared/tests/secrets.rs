//! The init path that reads secrets through the AWS Parameters and Secrets Lambda Extension,
//! against a local stand-in that speaks the extension's HTTP protocol: `GET
//! /secretsmanager/get?secretId=…` with `X-Aws-Parameters-Secrets-Token`, a GetSecretValue JSON
//! answer, 400 for an unknown secret, 403 for a wrong token, and one that never answers.

use shared::{
    Function,
    config::{Config, ConfigError},
    secrets::{self, Extension},
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

const TOKEN: &str = "session-token-of-this-instance";
const DB_URL: &str = "postgres://app:db-password-from-secrets@127.0.0.1/app";
const JWT_SECRET: &str = "hs256-secret-from-secrets-manager-32b!";
const DATA_KEY: &str = "c2VjcmV0cy1tYW5hZ2VyLWRhdGEta2V5LTMyLWJ5dGU=";

/// The stand-in: known secrets by id, and every (secretId, token) it was asked for.
struct StandIn {
    port: u16,
    asked: Arc<Mutex<Vec<(String, String)>>>,
}

async fn stand_in(secrets: &[(&str, &str)]) -> StandIn {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let secrets: Arc<HashMap<String, String>> = Arc::new(
        secrets
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let (secrets, log) = (secrets.clone(), log.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head.split(' ').nth(1).unwrap_or_default().to_owned();
                let token = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("x-aws-parameters-secrets-token")
                            .then(|| value.trim().to_owned())
                    })
                    .unwrap_or_default();
                let id = url::Url::parse(&format!("http://x{target}"))
                    .ok()
                    .filter(|u| u.path() == "/secretsmanager/get")
                    .and_then(|u| {
                        u.query_pairs()
                            .find(|(k, _)| k == "secretId")
                            .map(|(_, v)| v.into_owned())
                    })
                    .unwrap_or_default();
                log.lock().expect("log").push((id.clone(), token.clone()));
                let (status, body) = if id == "never-answers" {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                } else if token != TOKEN {
                    (403, "{\"message\":\"Unauthorized\"}".to_owned())
                } else if let Some(value) = secrets.get(&id) {
                    let answer = serde_json::json!({
                        "ARN": format!("arn:aws:secretsmanager:eu-west-1:123456789012:secret:{id}"),
                        "Name": id,
                        "SecretString": value,
                        "VersionId": "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111",
                        "VersionStages": ["AWSCURRENT"],
                        "CreatedDate": "2026-12-01T00:00:00Z",
                    });
                    (200, answer.to_string())
                } else {
                    (400, "{\"__type\":\"ResourceNotFoundException\"}".to_owned())
                };
                let reason = match status {
                    200 => "OK",
                    400 => "Bad Request",
                    _ => "Forbidden",
                };
                let response = format!(
                    "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    StandIn { port, asked }
}

fn env(stand_in: &StandIn, pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let mut map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    map.insert("AWS_SESSION_TOKEN".into(), TOKEN.into());
    map.insert(
        "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT".into(),
        stand_in.port.to_string(),
    );
    move |k| map.get(k).cloned()
}

/// Every secret by id, as the template sets them (HS256 here, so no private key).
const ALL_BY_ARN: [(&str, &str); 3] = [
    ("DATABASE_URL_SECRET_ARN", "auth/database-url"),
    ("JWT_SECRET_SECRET_ARN", "auth/jwt-secret"),
    ("DATA_ENCRYPTION_KEY_SECRET_ARN", "auth/data-key"),
];

async fn standard() -> StandIn {
    stand_in(&[
        ("auth/database-url", DB_URL),
        ("auth/jwt-secret", JWT_SECRET),
        ("auth/data-key", DATA_KEY),
    ])
    .await
}

fn asked_ids(stand_in: &StandIn) -> Vec<String> {
    let mut ids: Vec<String> = stand_in
        .asked
        .lock()
        .expect("log")
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn each_function_fetches_exactly_its_secrets_with_the_session_token() {
    let server = standard().await;
    let config = secrets::config_for(Function::Refresh.uses(), env(&server, &ALL_BY_ARN))
        .await
        .expect("refresh starts from secrets");
    assert_eq!(
        config.database_url.as_ref().map(|u| u.expose().as_str()),
        Some(DB_URL)
    );
    assert!(config.data_encryption_key.is_some());
    assert!(matches!(
        config.signing,
        shared::config::SigningSettings::Hs256 { ref secret } if secret.expose() == JWT_SECRET.as_bytes()
    ));
    assert_eq!(
        asked_ids(&server),
        ["auth/data-key", "auth/database-url", "auth/jwt-secret"]
    );
    assert!(
        server
            .asked
            .lock()
            .expect("log")
            .iter()
            .all(|(_, token)| token == TOKEN)
    );

    // `me` fetches the database URL and the HS256 key, never the data key.
    let server = standard().await;
    secrets::config_for(Function::Me.uses(), env(&server, &ALL_BY_ARN))
        .await
        .expect("me starts");
    assert_eq!(asked_ids(&server), ["auth/database-url", "auth/jwt-secret"]);

    // `keys` under RS256: public keys from the environment, nothing fetched at all.
    let server = standard().await;
    let public = r#"{"k1":"-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n"}"#;
    let mut keys_env = ALL_BY_ARN.to_vec();
    keys_env.retain(|(k, _)| *k != "JWT_SECRET_SECRET_ARN");
    keys_env.push(("JWT_PUBLIC_KEYS", public));
    let config = secrets::config_for(Function::Keys.uses(), env(&server, &keys_env))
        .await
        .expect("keys starts");
    assert!(config.database_url.is_none());
    assert!(asked_ids(&server).is_empty());
}

#[tokio::test]
async fn a_value_in_the_environment_wins_and_nothing_is_fetched() {
    let server = standard().await;
    let config = secrets::config_for(
        Function::Refresh.uses(),
        env(
            &server,
            &[
                ("DATABASE_URL", "postgres://local@127.0.0.1/dev"),
                ("DATABASE_URL_SECRET_ARN", "auth/database-url"),
                ("JWT_SECRET", JWT_SECRET),
                ("DATA_ENCRYPTION_KEY", DATA_KEY),
            ],
        ),
    )
    .await
    .expect("local settings");
    assert_eq!(
        config.database_url.as_ref().map(|u| u.expose().as_str()),
        Some("postgres://local@127.0.0.1/dev")
    );
    assert!(asked_ids(&server).is_empty());
}

fn assert_names(error: &ConfigError, variable: &str, problem: &str) {
    assert_eq!(error.variable, variable, "{error}");
    assert!(error.problem.contains(problem), "{error}");
    for secret in [DB_URL, JWT_SECRET, DATA_KEY, TOKEN] {
        assert!(!error.to_string().contains(secret), "{error}");
    }
}

#[tokio::test]
async fn refusals_fail_init_naming_the_setting_and_never_the_values() {
    let server = standard().await;
    let unknown = [
        ("DATABASE_URL_SECRET_ARN", "auth/missing"),
        ("JWT_SECRET", JWT_SECRET),
    ];
    let e = secrets::config_for(Function::Me.uses(), env(&server, &unknown))
        .await
        .expect_err("unknown secret");
    assert_names(&e, "DATABASE_URL", "answered 400");

    let base = env(&server, &ALL_BY_ARN);
    let e = secrets::config_for(Function::Me.uses(), |k| match k {
        "AWS_SESSION_TOKEN" => Some("a-stolen-or-stale-token".into()),
        _ => base(k),
    })
    .await
    .expect_err("wrong token");
    assert_names(&e, "DATABASE_URL", "answered 403");

    let no_token = secrets::config_for(Function::Me.uses(), |k| match k {
        "DATABASE_URL_SECRET_ARN" => Some("auth/database-url".into()),
        _ => None,
    })
    .await
    .expect_err("no session token");
    assert_eq!(no_token.variable, "AWS_SESSION_TOKEN");

    let server = stand_in(&[("auth/data-key", "not base64!")]).await;
    let e = secrets::config_for(
        Function::Refresh.uses(),
        env(
            &server,
            &[
                ("DATABASE_URL", DB_URL),
                ("JWT_SECRET", JWT_SECRET),
                ("DATA_ENCRYPTION_KEY_SECRET_ARN", "auth/data-key"),
            ],
        ),
    )
    .await
    .expect_err("a bad secret value");
    assert_names(&e, "DATA_ENCRYPTION_KEY", "must be base64");
}

#[tokio::test]
async fn an_extension_that_does_not_answer_fails_init_at_the_deadline() {
    let server = standard().await;
    let extension = Extension {
        address: ([127, 0, 0, 1], server.port).into(),
        token: shared::config::Secret::new(TOKEN.into()),
        timeout: Duration::from_millis(300),
    };
    let started = Instant::now();
    let e = extension
        .fetch("DATABASE_URL", "never-answers")
        .await
        .expect_err("no answer");
    assert_names(&e, "DATABASE_URL", "did not answer within 300 ms");
    // Generous upper bound: this guards against a hang, not a slow machine.
    assert!(started.elapsed() < Duration::from_secs(10));

    // Nothing listening at all: refused at once, naming the setting.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let e = Extension {
        address: ([127, 0, 0, 1], port).into(),
        ..extension
    }
    .fetch("JWT_SECRET", "auth/jwt-secret")
    .await
    .expect_err("nothing listens");
    assert_names(&e, "JWT_SECRET", "cannot connect to the extension");
}

/// The init cost of reading three secrets (refresh's set) from a local extension: run with
/// `cargo test -p shared --test secrets init_cost -- --ignored --nocapture`. Not a pass/fail
/// check; BENCHMARKS.md quotes its output.
#[tokio::test]
#[ignore]
async fn init_cost() {
    let server = standard().await;
    let lookup = env(&server, &ALL_BY_ARN);
    let mut samples = Vec::new();
    for _ in 0..500 {
        let started = Instant::now();
        let config: Config = secrets::config_for(Function::Refresh.uses(), &lookup)
            .await
            .expect("config");
        samples.push(started.elapsed());
        drop(config);
    }
    samples.sort();
    let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    println!(
        "config_for(refresh: 3 secrets) against the stand-in, {} runs: median {:?}, p90 {:?}, p99 {:?}, max {:?}",
        samples.len(),
        pct(50),
        pct(90),
        pct(99),
        samples[samples.len() - 1]
    );
}
