//! The optional breached-password check (docs/api.md "Limits against guessing"): the SHA-1 of
//! the NFKC password is looked up in the Have I Been Pwned range API with k-anonymity. Only the
//! first 5 hex characters leave the process, padding is requested so the answer's size tells an
//! observer nothing either, and the remaining 35 characters are matched here.
//!
//! The lookup is bounded by `PASSWORD_BREACH_TIMEOUT_MS` (connecting, TLS and the answer
//! together) and fails open: a third party's outage or a confused answer must not stop
//! registrations, so it lets the password through with a warning that names the failure only —
//! never the password, the hash or its prefix.
//!
//! HTTP/1.1 is hyper's low-level client and TLS is native-tls: both are already in every
//! function's build (lambda_runtime; native-tls over the OpenSSL of shared::tls), so this adds no second stack.

use crate::{
    config::{BreachCheck, BreachSettings},
    password::NewPassword,
};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::{Request, StatusCode, body::Bytes, header};
use hyper_util::rt::TokioIo;
use std::{
    net::{SocketAddr, ToSocketAddrs},
    sync::OnceLock,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

/// HIBP refuses requests without a User-Agent; this one names the service, not the user.
pub const USER_AGENT: &str = concat!("auth-lambda-breach-check/", env!("CARGO_PKG_VERSION"));

/// A padded range answer has 800 to 1,000 lines of about 40 bytes; this leaves room for growth
/// and still bounds what a misbehaving server can make the function buffer.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Characters of the hash that are sent (k-anonymity: about a million prefixes, each shared by
/// hundreds of breached hashes).
pub const PREFIX_LEN: usize = 5;

/// Why a lookup gave no answer. The messages never hold the password, the hash or its prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// No complete answer within `PASSWORD_BREACH_TIMEOUT_MS`.
    #[error("no answer within the timeout")]
    Timeout,
    /// The API's host name did not resolve.
    #[error("the host name did not resolve")]
    Resolve,
    /// No TCP connection.
    #[error("could not connect: {0}")]
    Connect(String),
    /// TLS could not be set up or verified.
    #[error("TLS failed: {0}")]
    Tls(String),
    /// The HTTP exchange failed.
    #[error("HTTP failed: {0}")]
    Http(String),
    /// An answer other than `200 OK`.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// The answer was longer than [`MAX_RESPONSE_BYTES`].
    #[error("the answer exceeds {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    /// The answer was not a list of `SUFFIX:COUNT` lines.
    #[error("the answer is not a range list")]
    Malformed,
}

/// The uppercase hex SHA-1 of `normalized` (the NFKC form [`NewPassword`] holds), the form the
/// range API indexes.
pub fn sha1_hex(normalized: &str) -> String {
    use std::fmt::Write;
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        normalized.as_bytes(),
    );
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(40), |mut hex, byte| {
            let _ = write!(hex, "{byte:02X}");
            hex
        })
}

/// Registration's question: is this password known breached? `false` when the check is off
/// (no request at all), when the API does not list it, and when the lookup fails (fail-open,
/// with a warning).
pub async fn is_breached(settings: &BreachSettings, password: &NewPassword) -> bool {
    if settings.check == BreachCheck::Off {
        return false;
    }
    match lookup(settings, password).await {
        Ok(found) => found.is_some(),
        Err(error) => {
            tracing::warn!(
                event = "password_breach.check_failed",
                %error,
                "breached-password check gave no answer; the password is let through"
            );
            false
        }
    }
}

/// How often the range API has seen this password in breaches: `None` when it is not listed.
pub async fn lookup(
    settings: &BreachSettings,
    password: &NewPassword,
) -> Result<Option<u64>, LookupError> {
    let hash = sha1_hex(password.expose());
    let (prefix, suffix) = hash.split_at(PREFIX_LEN);
    let body = tokio::time::timeout(settings.timeout, fetch_range(&settings.api_url, prefix))
        .await
        .map_err(|_| LookupError::Timeout)??;
    count_in(&body, suffix)
}

/// The count of `suffix` in a range answer. Padding lines (count 0) never match; any line that
/// is not `SUFFIX:COUNT`, or an empty answer (a real one always lists hundreds), makes the
/// whole answer untrusted rather than "not found".
fn count_in(body: &[u8], suffix: &str) -> Result<Option<u64>, LookupError> {
    let body = std::str::from_utf8(body).map_err(|_| LookupError::Malformed)?;
    let mut lines = 0usize;
    let mut found = None;
    for line in body.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let (listed, count) = line.split_once(':').ok_or(LookupError::Malformed)?;
        let count: u64 = count.trim().parse().map_err(|_| LookupError::Malformed)?;
        if listed.len() != 40 - PREFIX_LEN || !listed.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(LookupError::Malformed);
        }
        lines += 1;
        if count > 0 && listed.eq_ignore_ascii_case(suffix) {
            found = Some(count);
        }
    }
    if lines == 0 {
        return Err(LookupError::Malformed);
    }
    Ok(found)
}

/// `GET {base}/range/{prefix}` and the answer's body.
async fn fetch_range(base: &url::Url, prefix: &str) -> Result<Vec<u8>, LookupError> {
    let port = base
        .port_or_known_default()
        .ok_or_else(|| LookupError::Connect("no port".into()))?;
    let addresses = match base.host() {
        Some(url::Host::Ipv4(ip)) => vec![SocketAddr::from((ip, port))],
        Some(url::Host::Ipv6(ip)) => vec![SocketAddr::from((ip, port))],
        Some(url::Host::Domain(name)) => resolve(name, port).await?,
        None => return Err(LookupError::Connect("no host".into())),
    };
    let tcp = connect(&addresses).await?;
    // One small request, then a wait for the answer: nothing to gain from Nagle's algorithm.
    tcp.set_nodelay(true)
        .map_err(|e| LookupError::Connect(e.kind().to_string()))?;
    let authority = &base[url::Position::BeforeHost..url::Position::AfterPort];
    let path = format!("{}/range/{prefix}", base.path().trim_end_matches('/'));
    if base.scheme() == "https" {
        // Config admits only https, or http to a loopback host (a local stand-in).
        let host = base.host_str().unwrap_or_default();
        let tls = tokio_native_tls::TlsConnector::from(tls_connector()?)
            .connect(host, tcp)
            .await
            .map_err(|e| LookupError::Tls(e.to_string()))?;
        exchange(tls, authority, &path).await
    } else {
        exchange(tcp, authority, &path).await
    }
}

/// Loading the system roots is the costly part of a TLS client: once per cold start.
fn tls_connector() -> Result<native_tls::TlsConnector, LookupError> {
    static CONNECTOR: OnceLock<Result<native_tls::TlsConnector, String>> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| native_tls::TlsConnector::new().map_err(|e| e.to_string()))
        .clone()
        .map_err(LookupError::Tls)
}

/// Resolves on a thread of its own: the runtime has a single blocking thread, argon2's, and
/// tokio's `lookup_host` would queue the password's hash behind a stalled resolver long after
/// the timeout let the registration go on. A stalled thread ends with the resolver's own
/// timeout.
async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, LookupError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = host.to_owned();
    std::thread::Builder::new()
        .name("breach-dns".into())
        .spawn(move || {
            let found = (name.as_str(), port)
                .to_socket_addrs()
                .map(Iterator::collect::<Vec<_>>);
            let _ = tx.send(found);
        })
        .map_err(|_| LookupError::Resolve)?;
    match rx.await {
        Ok(Ok(addresses)) if !addresses.is_empty() => Ok(addresses),
        _ => Err(LookupError::Resolve),
    }
}

async fn connect(addresses: &[SocketAddr]) -> Result<TcpStream, LookupError> {
    let mut last = String::from("no address");
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e.kind().to_string(),
        }
    }
    Err(LookupError::Connect(last))
}

/// Aborts the task driving the connection on every way out, the timeout's drop included, so
/// no socket outlives the lookup.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One request on a fresh connection; hyper parses the status line, headers and
/// Content-Length or chunked framing.
async fn exchange<S>(stream: S, authority: &str, path: &str) -> Result<Vec<u8>, LookupError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| LookupError::Http(e.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let _driver = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let request = Request::get(path)
        .header(header::HOST, authority)
        .header(header::USER_AGENT, USER_AGENT)
        .header("Add-Padding", "true")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| LookupError::Http(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(http)?;
    if response.status() != StatusCode::OK {
        return Err(LookupError::Status(response.status().as_u16()));
    }
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                LookupError::TooLarge
            } else {
                LookupError::Http(e.to_string())
            }
        })?;
    Ok(body.to_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_is_uppercase_hex_of_the_utf8_bytes() {
        // FIPS 180 test vector, and the range API's own documented example ("P@ssw0rd").
        assert_eq!(sha1_hex("abc"), "A9993E364706816ABA3E25717850C26C9CD0D89D");
        assert_eq!(
            sha1_hex("P@ssw0rd"),
            "21BD12DC183F740EE76F27B78EB39C8AD972A757"
        );
    }

    const SUFFIX: &str = "1D2DA4053E34E76F6576ED1DA63134B5E2A";

    #[test]
    fn a_listed_suffix_is_found_whatever_its_case_and_padding_never_is() {
        let body = format!("0018A45C4D1DEF81644B54AB7F969B88D65:1\r\n{SUFFIX}:4\r\n");
        assert_eq!(count_in(body.as_bytes(), SUFFIX), Ok(Some(4)));
        let lower = body.to_lowercase();
        assert_eq!(count_in(lower.as_bytes(), SUFFIX), Ok(Some(4)));
        let padding = format!("0018A45C4D1DEF81644B54AB7F969B88D65:1\r\n{SUFFIX}:0");
        assert_eq!(count_in(padding.as_bytes(), SUFFIX), Ok(None));
    }

    #[test]
    fn anything_but_a_range_list_is_untrusted() {
        for body in [
            "",
            "\r\n",
            "<html>busy</html>",
            "1D2DA4053E34E76F6576ED1DA63134B5E2A",
            "1D2DA4053E34E76F6576ED1DA63134B5E2A:many",
            "1D2DA4053E34E76F6576ED1DA63134B5E2:1",
            "ZZ2DA4053E34E76F6576ED1DA63134B5E2A:1",
        ] {
            assert_eq!(
                count_in(body.as_bytes(), SUFFIX),
                Err(LookupError::Malformed),
                "{body:?}"
            );
        }
        assert_eq!(count_in(&[0xff, 0xfe], SUFFIX), Err(LookupError::Malformed));
    }
}
