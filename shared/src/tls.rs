//! TLS to the database over OpenSSL, built so that a cold start parses no certificate it does
//! not need.
//!
//! native-tls (and `SslConnector::builder`) load OpenSSL's default verify paths, which reads and
//! parses the whole system bundle (about 150 roots, twice under native-tls): 60–100 ms of every
//! cold start, even when `sslrootcert` names the one root that will ever be used. Here the trust
//! store is either exactly the configured roots, or the system's hashed certificate directory
//! (`/etc/ssl/certs`, the one `c_rehash` keeps), which OpenSSL reads lazily during the
//! handshake: it opens the one file named after the issuer's subject hash. Only when a system
//! has no hashed directory is its bundle parsed, as before.
//!
//! The checks are those of `SslConnector`: the peer's chain verified, the host name (or IP
//! address) checked against the certificate unless `sslmode=verify-ca`, SNI sent for names,
//! TLS 1.2 or later, and `tls-server-end-point` channel binding offered to SCRAM.

use openssl::{
    hash::MessageDigest,
    nid::Nid,
    ssl::{
        Ssl, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslMode, SslOptions, SslRef,
        SslVerifyMode, SslVersion,
    },
    x509::{X509, X509VerifyResult, store::X509Lookup, verify::X509CheckFlags},
};
use std::{
    future::Future,
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    pin::Pin,
    task::{Context, Poll},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{self, ChannelBinding, MakeTlsConnect, TlsConnect};

/// The ALPN protocol a PostgreSQL 17 server (or Neon's proxy) requires with
/// `sslnegotiation=direct`, in wire format (length-prefixed).
const POSTGRESQL_ALPN: &[u8] = b"\x0apostgresql";

/// The cipher list `SslConnector` uses (TLS 1.2; TLS 1.3 suites are OpenSSL's defaults).
const CIPHERS: &str = "DEFAULT:!aNULL:!eNULL:!MD5:!3DES:!DES:!RC4:!IDEA:!SEED:!aDSS:!SRP:!PSK";

/// Hashed directories on systems whose `openssl-probe` candidates are bundles only: where
/// Fedora-family `update-ca-trust` extracts one.
const EXTRA_HASHED_DIRS: &[&str] = &["/etc/pki/ca-trust/extracted/pem/directory-hash"];

/// Why TLS could not be set up; each names what to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupError {
    /// The root certificate file could not be read.
    RootUnreadable,
    /// The root certificate file holds a block that is not a certificate.
    RootUnparsable,
    /// The root certificate file holds no PEM certificate.
    RootEmpty,
    /// OpenSSL refused the settings (never expected).
    Library,
}

/// How the server's certificate is checked and the handshake is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// PEM roots to trust instead of the system's.
    pub root_cert: Option<PathBuf>,
    /// `false` only for `sslmode=verify-ca`: the chain is checked, the host name is not.
    pub verify_hostname: bool,
    /// `sslnegotiation=direct`: offer the `postgresql` ALPN protocol and insist on it.
    pub direct: bool,
}

/// A tokio-postgres TLS connector; cheap to clone (the context is reference-counted).
#[derive(Clone)]
pub struct MakeConnector {
    context: SslContext,
    verify_hostname: bool,
    direct: bool,
}

impl std::fmt::Debug for MakeConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MakeConnector")
            .field("verify_hostname", &self.verify_hostname)
            .field("direct", &self.direct)
            .finish_non_exhaustive()
    }
}

impl MakeConnector {
    /// Builds the context: the configured roots, else the system's (see the module docs).
    pub fn new(settings: &Settings) -> Result<Self, SetupError> {
        let library = |_| SetupError::Library;
        let mut context = SslContextBuilder::new(SslMethod::tls_client()).map_err(library)?;
        // SslConnector's options and modes (RELEASE_BUFFERS: an idle pooled connection keeps
        // no 32 KiB of buffers).
        context.set_options(
            (SslOptions::ALL | SslOptions::NO_COMPRESSION)
                - SslOptions::DONT_INSERT_EMPTY_FRAGMENTS,
        );
        context.set_mode(
            SslMode::AUTO_RETRY
                | SslMode::ACCEPT_MOVING_WRITE_BUFFER
                | SslMode::ENABLE_PARTIAL_WRITE
                | SslMode::RELEASE_BUFFERS,
        );
        context
            .set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(library)?;
        context.set_cipher_list(CIPHERS).map_err(library)?;
        context.set_verify(SslVerifyMode::PEER);
        if settings.direct {
            context.set_alpn_protos(POSTGRESQL_ALPN).map_err(library)?;
        }
        match &settings.root_cert {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|_| SetupError::RootUnreadable)?;
                let roots = X509::stack_from_pem(&pem).map_err(|_| SetupError::RootUnparsable)?;
                if roots.is_empty() {
                    return Err(SetupError::RootEmpty);
                }
                for root in roots {
                    context.cert_store_mut().add_cert(root).map_err(library)?;
                }
            }
            None => add_system_roots(&mut context).map_err(library)?,
        }
        Ok(Self {
            context: context.build(),
            verify_hostname: settings.verify_hostname,
            direct: settings.direct,
        })
    }
}

/// The system roots, as OpenSSL's default paths name them, but lazily: `SSL_CERT_DIR` (a
/// `:`-separated list) replaces the system's directories and `SSL_CERT_FILE` adds a bundle,
/// as in OpenSSL; otherwise every hashed system directory found, and the system bundle only
/// where there is none.
fn add_system_roots(context: &mut SslContextBuilder) -> Result<(), openssl::error::ErrorStack> {
    let dirs: Vec<PathBuf> = match std::env::var_os("SSL_CERT_DIR") {
        Some(list) => std::env::split_paths(&list).collect(),
        None => openssl_probe::candidate_cert_dirs()
            .map(Path::to_path_buf)
            .chain(EXTRA_HASHED_DIRS.iter().map(PathBuf::from))
            .filter(|dir| is_hashed_directory(dir))
            .collect(),
    };
    let bundle = match std::env::var_os("SSL_CERT_FILE") {
        Some(file) => Some(PathBuf::from(file)),
        None if dirs.is_empty() => openssl_probe::probe().cert_file,
        None => None,
    };
    if let Some(bundle) = bundle {
        // A bundle that cannot be read trusts nothing, as in OpenSSL: the handshake says so.
        let _ = context
            .cert_store_mut()
            .add_lookup(X509Lookup::file())?
            .load_cert_file(bundle, SslFiletype::PEM);
    }
    if !dirs.is_empty() {
        let lookup = context
            .cert_store_mut()
            .add_lookup(X509Lookup::hash_dir())?;
        for dir in dirs.iter().filter_map(|dir| dir.to_str()) {
            lookup.add_dir(dir, SslFiletype::PEM)?;
        }
    }
    Ok(())
}

/// A directory OpenSSL can look roots up in: it holds `c_rehash` links, named `XXXXXXXX.N`
/// (the subject hash in hex, then a sequence number).
fn is_hashed_directory(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        name.split_once('.').is_some_and(|(hash, seq)| {
            hash.len() == 8
                && hash.bytes().all(|b| b.is_ascii_hexdigit())
                && !seq.is_empty()
                && seq.bytes().all(|b| b.is_ascii_digit())
        })
    })
}

impl<S> MakeTlsConnect<S> for MakeConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Connector;
    type Error = openssl::error::ErrorStack;

    fn make_tls_connect(&mut self, host: &str) -> Result<Connector, Self::Error> {
        let mut ssl = Ssl::new(&self.context)?;
        let ip = host.parse::<IpAddr>().ok();
        if ip.is_none() {
            // SNI takes names only (RFC 6066); Neon routes to the compute by it.
            ssl.set_hostname(host)?;
        }
        if self.verify_hostname {
            let param = ssl.param_mut();
            param.set_hostflags(X509CheckFlags::NO_PARTIAL_WILDCARDS);
            match ip {
                Some(ip) => param.set_ip(ip)?,
                None => param.set_host(host)?,
            }
        }
        Ok(Connector {
            ssl,
            direct: self.direct,
        })
    }
}

/// One handshake's connector, made per connection by [`MakeConnector`].
pub struct Connector {
    ssl: Ssl,
    direct: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S> TlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream<S>, BoxError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let mut stream = tokio_openssl::SslStream::new(self.ssl, stream)?;
            if let Err(error) = Pin::new(&mut stream).connect().await {
                // The handshake error says only that verification failed; the verify result
                // says which check (an unknown issuer, a host name that does not match).
                let verify = stream.ssl().verify_result();
                return Err(match verify == X509VerifyResult::OK {
                    true => error.into(),
                    false => format!("{error}: {}", verify.error_string()).into(),
                });
            }
            // Without SSLRequest nothing else tells a PostgreSQL server from any TLS server
            // (libpq insists on the protocol too).
            if self.direct && stream.ssl().selected_alpn_protocol() != Some(b"postgresql") {
                return Err("the server did not accept the postgresql ALPN protocol".into());
            }
            Ok(Stream(stream))
        })
    }
}

/// A TLS stream to the database.
pub struct Stream<S>(tokio_openssl::SslStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tls::TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        match server_end_point(self.0.ssl()) {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

/// RFC 5929's `tls-server-end-point`: the server certificate hashed with its signature's hash,
/// SHA-256 where that is MD5 or SHA-1.
fn server_end_point(ssl: &SslRef) -> Option<Vec<u8>> {
    let cert = ssl.peer_certificate()?;
    let digest = cert
        .signature_algorithm()
        .object()
        .nid()
        .signature_algorithms()?
        .digest;
    let hash = match digest {
        Nid::MD5 | Nid::SHA1 => MessageDigest::sha256(),
        other => MessageDigest::from_nid(other)?,
    };
    cert.digest(hash).ok().map(|bytes| bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hashed_directory_is_told_from_a_bundle_directory() {
        let dir = std::env::temp_dir().join(format!("tls-hashed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("ca-bundle.crt"), b"").expect("write");
        std::fs::write(dir.join("README.0"), b"").expect("write");
        assert!(!is_hashed_directory(&dir), "no c_rehash link yet");
        std::fs::write(dir.join("5ad8a5d6.0"), b"").expect("write");
        assert!(is_hashed_directory(&dir));
        std::fs::remove_dir_all(&dir).expect("clean up");
        assert!(!is_hashed_directory(&dir), "a missing directory is not one");
    }

    #[test]
    fn a_root_file_must_hold_certificates() {
        let dir = std::env::temp_dir().join(format!("tls-roots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let settings = |path: PathBuf| Settings {
            root_cert: Some(path),
            verify_hostname: true,
            direct: false,
        };
        let missing = MakeConnector::new(&settings(dir.join("missing.pem")));
        assert_eq!(missing.err(), Some(SetupError::RootUnreadable));
        std::fs::write(dir.join("empty.pem"), b"no pem here\n").expect("write");
        let empty = MakeConnector::new(&settings(dir.join("empty.pem")));
        assert_eq!(empty.err(), Some(SetupError::RootEmpty));
        std::fs::write(
            dir.join("bad.pem"),
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let bad = MakeConnector::new(&settings(dir.join("bad.pem")));
        assert_eq!(bad.err(), Some(SetupError::RootUnparsable));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn system_roots_need_no_file_named() {
        let settings = Settings {
            root_cert: None,
            verify_hostname: true,
            direct: true,
        };
        assert!(MakeConnector::new(&settings).is_ok());
    }
}
