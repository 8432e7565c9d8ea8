//! Micro benchmarks of the per-request CPU work (criterion, `cargo bench -p shared --bench micro`):
//! argon2id hash and verify at the default cost (m=19456 KiB, t=2, p=1) through
//! `Passwords` — the same `spawn_blocking` path a function takes, on a current-thread runtime
//! like the functions' — JWT issue and verify (HS256, and RS256 when `BENCH_JWT_RSA_KEY` names
//! a PEM key), email parsing, and password parsing (NFKC, checks and zxcvbn) at 16 and 128
//! characters. `scripts/bench.sh` reads the medians from
//! `target/criterion/*/*/new/estimates.json` into `target/bench/results.md`.

use criterion::{Criterion, criterion_group, criterion_main};
use shared::{
    config::{Argon2Settings, Config},
    email::Email,
    password::{NewPassword, Passwords},
    token::TokenKeys,
};
use std::{hint::black_box, time::Duration};

/// The password every benchmark account uses: strong enough for zxcvbn.
const STRONG: &str = "correct horse battery staple 93!";
/// 16 characters, strong.
const PASSWORD_16: &str = "Tr0mbone-Lantern";
/// 128 characters (the maximum), printable, mixed.
const PASSWORD_128: &str = "Vq7#mLp2!xZr9@Tb4$Nc6^Hd8&Jf1*Kg3(Ws5)Ye0-Ua2=Io4+Pl6[Mk8]Nj1{Bh3}Vg5;Cf7:Xd9'Zs2,Aq4.Wr6/Et8?Ry1<Tu3>Yi5~Oo7`Pp9|Ll2_Kk4%Jj6Hh8";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime")
}

fn argon2id(c: &mut Criterion) {
    let rt = runtime();
    let passwords = Passwords::new(Argon2Settings::default()).expect("default argon2 parameters");
    let email = Email::parse("bench@example.com").expect("a valid email");
    let password = NewPassword::parse(STRONG, &email, 12).expect("a strong password");
    let phc = rt.block_on(passwords.hash(&password)).expect("hash");
    assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");

    let mut group = c.benchmark_group("argon2id");
    // ~20-40 ms per run: few samples, enough time for criterion's 1+2+…+n iterations.
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("hash", |b| {
        b.iter(|| rt.block_on(passwords.hash(black_box(&password))))
    });
    group.bench_function("verify", |b| {
        b.iter(|| rt.block_on(passwords.verify(black_box(STRONG), Some(&phc))))
    });
    group.finish();
}

fn jwt(c: &mut Criterion) {
    // HS256 with JWT_SECRET (the default), and RS256 when scripts/bench.sh hands over a PEM key
    // (BENCH_JWT_RSA_KEY, made with openssl), since JWT_PRIVATE_KEY switches the service to it.
    let mut keys = vec![(
        "hs256",
        keys_from(&[("JWT_SECRET", "a-benchmark-jwt-secret-of-at-least-32-bytes")]),
    )];
    if let Some(pem) =
        std::env::var_os("BENCH_JWT_RSA_KEY").and_then(|p| std::fs::read_to_string(p).ok())
    {
        keys.push(("rs256", keys_from(&[("JWT_PRIVATE_KEY", &pem)])));
    }
    let mut group = c.benchmark_group("jwt");
    for (name, keys) in &keys {
        let user_id = uuid::Uuid::new_v4();
        let session_id = uuid::Uuid::new_v4();
        let now = chrono::Utc::now().timestamp();
        let token = keys
            .issue(
                user_id,
                session_id,
                false,
                shared::token::Factors::Password,
                now,
            )
            .expect("issue")
            .token;
        assert_eq!(keys.verify(&token).map(|t| t.user_id), Ok(user_id));
        group.bench_function(format!("{name}_issue"), |b| {
            b.iter(|| {
                keys.issue(
                    black_box(user_id),
                    session_id,
                    false,
                    shared::token::Factors::Password,
                    now,
                )
            })
        });
        group.bench_function(format!("{name}_verify"), |b| {
            b.iter(|| keys.verify(black_box(&token)))
        });
    }
    group.finish();
}

fn keys_from(settings: &[(&str, &str)]) -> TokenKeys {
    let config = Config::from_lookup_for(
        shared::config::Uses {
            data_key: false,
            ..shared::config::Uses::ALL
        },
        |name| {
            if name == "DATABASE_URL" {
                return Some("postgres://u:p@127.0.0.1/db?sslmode=disable".into());
            }
            settings
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        },
    )
    .expect("config");
    TokenKeys::from_config(&config).expect("token keys")
}

fn email(c: &mut Criterion) {
    const ASCII: &str = "  Someone.Special@Example.COM ";
    const IDN: &str = "Joerg.Mueller@Bücher.Example";
    // Both valid: the benchmark measures the whole parse, not an early refusal.
    assert_eq!(
        Email::parse(ASCII).expect("valid").as_str(),
        "someone.special@example.com"
    );
    assert_eq!(
        Email::parse(IDN).expect("valid").as_str(),
        "joerg.mueller@xn--bcher-kva.example"
    );
    let mut group = c.benchmark_group("email_parse");
    group.bench_function("ascii", |b| b.iter(|| Email::parse(black_box(ASCII))));
    group.bench_function("idn", |b| b.iter(|| Email::parse(black_box(IDN))));
    group.finish();
}

fn password(c: &mut Criterion) {
    assert_eq!(PASSWORD_16.chars().count(), 16);
    assert_eq!(PASSWORD_128.chars().count(), 128);
    let email = Email::parse("bench@example.com").expect("a valid email");
    // Whatever the verdict, the work is the same: NFKC, the checks and zxcvbn.
    let mut group = c.benchmark_group("password_parse");
    group.bench_function("16_chars", |b| {
        b.iter(|| NewPassword::parse(black_box(PASSWORD_16), &email, 12))
    });
    // The password every runtime-harness registration uses.
    group.bench_function("32_chars", |b| {
        b.iter(|| NewPassword::parse(black_box(STRONG), &email, 12))
    });
    group.sample_size(20);
    group.bench_function("64_chars", |b| {
        b.iter(|| NewPassword::parse(black_box(&PASSWORD_128[..64]), &email, 12))
    });
    group.sample_size(10);
    group.bench_function("128_chars", |b| {
        b.iter(|| NewPassword::parse(black_box(PASSWORD_128), &email, 12))
    });
    group.finish();
}

criterion_group!(benches, argon2id, jwt, email, password);
criterion_main!(benches);
