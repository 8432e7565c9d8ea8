//! Secret settings read at init from Secrets Manager, through the AWS Parameters and Secrets
//! Lambda Extension: plain HTTP on localhost, no SDK. A secret in an environment variable is
//! readable by anyone allowed `lambda:GetFunctionConfiguration`; its secret's id is not.
//!
//! For each secret setting `X` a function uses ([`secret_settings`]): `X` itself in the
//! environment wins (local use, `make dev`, tests); else `X_SECRET_ARN` (an ARN or name) means
//! "fetch the secret's `SecretString` from the extension" with
//! `GET http://localhost:2773/secretsmanager/get?secretId=…` and the header
//! `X-Aws-Parameters-Secrets-Token: $AWS_SESSION_TOKEN`. Values never reach a log; errors name
//! the setting and the status, never the value.

use crate::config::{Config, ConfigError, KeyUse, Secret, Uses};
use std::{collections::HashMap, net::SocketAddr, time::Duration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The extension's default port (`PARAMETERS_SECRETS_EXTENSION_HTTP_PORT` overrides it).
pub const DEFAULT_PORT: u16 = 2773;
/// The bound on one fetch, connecting included: the extension answers from its cache or after
/// one Secrets Manager call; past this, init fails with the setting's name.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest answer read: a secret is at most 64 KiB, plus the JSON around it.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// The secret settings a function with `uses` reads.
pub fn secret_settings(uses: Uses) -> Vec<&'static str> {
    let mut names = Vec::new();
    if uses.database {
        names.push("DATABASE_URL");
    }
    match uses.signing {
        KeyUse::Sign => names.extend(["JWT_PRIVATE_KEY", "JWT_SECRET"]),
        // Under RS256 a verifier reads public keys, which are no secret; HS256 has one key.
        KeyUse::Verify => names.push("JWT_SECRET"),
    }
    if uses.data_key {
        names.push("DATA_ENCRYPTION_KEY");
    }
    if uses.mail {
        names.push("SMTP_URL");
    }
    names
}

/// Where the extension listens and the token it requires.
#[derive(Debug, Clone)]
pub struct Extension {
    /// `127.0.0.1:<port>`.
    pub address: SocketAddr,
    /// `AWS_SESSION_TOKEN`, the extension's guard against server-side request forgery.
    pub token: Secret<String>,
    /// Bound on one fetch.
    pub timeout: Duration,
}

impl Extension {
    /// The extension as Lambda runs it, from `lookup` (the environment).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let port = match lookup("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT") {
            None => DEFAULT_PORT,
            Some(raw) => raw.trim().parse().map_err(|_| ConfigError {
                variable: "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT",
                problem: "must be a port number".into(),
            })?,
        };
        let token = lookup("AWS_SESSION_TOKEN")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ConfigError {
                variable: "AWS_SESSION_TOKEN",
                problem: "is required to read secrets through the extension (set by Lambda)".into(),
            })?;
        Ok(Self {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            token: Secret::new(token),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The `SecretString` of `secret_id`, for the setting `variable` (named in errors).
    pub async fn fetch(
        &self,
        variable: &'static str,
        secret_id: &str,
    ) -> Result<Secret<String>, ConfigError> {
        let fail = |problem: String| ConfigError {
            variable,
            problem: format!("could not be read from Secrets Manager: {problem}"),
        };
        let body = tokio::time::timeout(self.timeout, self.get(secret_id))
            .await
            .map_err(|_| {
                fail(format!(
                    "the extension did not answer within {} ms",
                    self.timeout.as_millis()
                ))
            })?
            .map_err(fail)?;
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(rename = "SecretString")]
            secret_string: Option<String>,
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|_| fail("the extension's answer is not JSON".into()))?;
        answer
            .secret_string
            .filter(|s| !s.is_empty())
            .map(Secret::new)
            .ok_or_else(|| fail("the secret has no SecretString (a binary secret?)".into()))
    }

    /// One HTTP/1.1 exchange; the error says what went wrong without any of the answer's body,
    /// which could echo the secret.
    async fn get(&self, secret_id: &str) -> Result<Vec<u8>, String> {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("secretId", secret_id)
            .finish();
        let request = format!(
            "GET /secretsmanager/get?{query} HTTP/1.1\r\nHost: localhost\r\n\
             X-Aws-Parameters-Secrets-Token: {}\r\nAccept: application/json\r\n\
             Connection: close\r\n\r\n",
            self.token.expose()
        );
        let mut stream = tokio::net::TcpStream::connect(self.address)
            .await
            .map_err(|e| format!("cannot connect to the extension on {}: {e}", self.address))?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("sending the request failed: {e}"))?;
        let mut response = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE_BYTES as u64 + 1)
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("reading the answer failed: {e}"))?;
        if response.len() > MAX_RESPONSE_BYTES {
            return Err("the answer is too large".into());
        }
        parse_response(&response)
    }
}

/// The body of a complete HTTP/1.1 answer with status 200 (`Content-Length`, chunked, or
/// up to the connection's end).
fn parse_response(response: &[u8]) -> Result<Vec<u8>, String> {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer is not HTTP")?;
    let head = std::str::from_utf8(&response[..split]).map_err(|_| "the answer is not HTTP")?;
    let body = &response[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1."))
        .and_then(|l| l.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("the answer is not HTTP")?;
    if status != 200 {
        return Err(format!(
            "the extension answered {status}{}",
            match status {
                400 => " (not ready, or the request was refused)",
                401 | 403 => " (token refused, or no secretsmanager:GetSecretValue on the secret)",
                404 => " (no such secret)",
                _ => "",
            }
        ));
    }
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if headers
        .get("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        return dechunk(body).ok_or_else(|| "the chunked answer is cut short".into());
    }
    match headers.get("content-length") {
        Some(len) => {
            let len: usize = len.parse().map_err(|_| "bad Content-Length")?;
            body.get(..len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| "the answer is cut short".into())
        }
        None => Ok(body.to_vec()),
    }
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = body.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&body[..end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        body = &body[end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// The settings of a function with `uses`, from `lookup` (the environment), each secret it
/// uses taken from `X` or else fetched by `X_SECRET_ARN` through the extension.
pub async fn config_for(
    uses: Uses,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let set = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    let mut fetched: HashMap<&'static str, Secret<String>> = HashMap::new();
    let mut extension = None;
    for name in secret_settings(uses) {
        if set(name).is_some() {
            continue;
        }
        let Some(secret_id) = set(&format!("{name}_SECRET_ARN")) else {
            continue;
        };
        let extension = match &extension {
            Some(e) => e,
            None => extension.insert(Extension::from_lookup(&set)?),
        };
        fetched.insert(name, extension.fetch(name, secret_id.trim()).await?);
    }
    Config::from_lookup_for(uses, |name| match fetched.get(name) {
        Some(secret) => Some(secret.expose().clone()),
        None => lookup(name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_in_every_framing() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).as_deref(), Ok(&b"{}"[..]));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n3\r\n\":1\r\n1\r\n}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).as_deref(), Ok(&b"{\"a\":1}"[..]));
        let to_close = b"HTTP/1.1 200 OK\r\n\r\n{}";
        assert_eq!(parse_response(to_close).as_deref(), Ok(&b"{}"[..]));
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}";
        assert!(parse_response(short).is_err());
        let refused = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_response(refused),
            Err(
                "the extension answered 403 (token refused, or no secretsmanager:GetSecretValue on the secret)"
                    .into()
            )
        );
    }

    #[test]
    fn each_function_reads_only_its_secrets() {
        let keys = Uses {
            database: false,
            signing: KeyUse::Verify,
            data_key: false,
            mail: false,
        };
        assert_eq!(secret_settings(keys), ["JWT_SECRET"]);
        assert_eq!(
            secret_settings(Uses::ALL),
            [
                "DATABASE_URL",
                "JWT_PRIVATE_KEY",
                "JWT_SECRET",
                "DATA_ENCRYPTION_KEY",
                "SMTP_URL"
            ]
        );
    }
}
