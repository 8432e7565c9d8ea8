//! A TCP proxy in front of Postgres (plain TCP: the functions connect with `sslmode=disable`,
//! which loopback allows) that counts round trips: every `Sync` (the extended protocol, as
//! `query_typed` sends it) and every simple `Query` after a connection is ready, each timed to
//! its `ReadyForQuery` — the database's share of a request as the function sees it. A
//! connection's set-up (the startup packet and each authentication message, up to the first
//! `ReadyForQuery`) is counted apart, so a request that has to connect shows as such.
//! [`WaitProxy`] times SMTP to MailDev the same way: each wait for the server's reply.

use crate::Result;
use std::{
    collections::VecDeque,
    io::{self, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// The proxy; it runs until the process ends.
pub struct CountingProxy {
    /// Where it listens (127.0.0.1).
    pub port: u16,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    queries: AtomicU64,
    waited_ns: AtomicU64,
    connects: AtomicU64,
    connect_trips: AtomicU64,
}

/// The counters at one moment; subtract two for what happened in between.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Round trips of ready connections (`Sync` and `Query` messages).
    pub queries: u64,
    /// Time those waited for their `ReadyForQuery`, in all.
    pub waited: Duration,
    /// Connections opened.
    pub connects: u64,
    /// Client messages of the connections' set-up (startup and authentication).
    pub connect_trips: u64,
}

impl std::ops::Sub for Totals {
    type Output = Totals;

    fn sub(self, earlier: Totals) -> Totals {
        Totals {
            queries: self.queries - earlier.queries,
            waited: self.waited.saturating_sub(earlier.waited),
            connects: self.connects - earlier.connects,
            connect_trips: self.connect_trips - earlier.connect_trips,
        }
    }
}

impl CountingProxy {
    /// Listens on a free loopback port and forwards each connection to `upstream` (`host:port`).
    pub fn start(upstream: String) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stats = Arc::new(Stats::default());
        let shared = stats.clone();
        thread::Builder::new()
            .name("pg-proxy".into())
            .spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        continue;
                    };
                    shared.connects.fetch_add(1, Ordering::SeqCst);
                    let stats = shared.clone();
                    let _ = thread::Builder::new()
                        .name("pg-proxy-conn".into())
                        .spawn(move || {
                            let _ = proxy_connection(client, server, &stats);
                        });
                }
            })?;
        Ok(Self { port, stats })
    }

    /// The counters now.
    pub fn totals(&self) -> Totals {
        Totals {
            queries: self.stats.queries.load(Ordering::SeqCst),
            waited: Duration::from_nanos(self.stats.waited_ns.load(Ordering::SeqCst)),
            connects: self.stats.connects.load(Ordering::SeqCst),
            connect_trips: self.stats.connect_trips.load(Ordering::SeqCst),
        }
    }

    /// `url` (a `postgres://` URL) pointed at this proxy instead of its own host and port, in
    /// plain TCP.
    pub fn url_for(&self, url: &str) -> Result<String> {
        let mut url = url::Url::parse(url)?;
        url.set_host(Some("127.0.0.1"))?;
        url.set_port(Some(self.port))
            .map_err(|()| "cannot set the proxy's port")?;
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| !k.starts_with("ssl") && k != "channel_binding")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(kept)
            .append_pair("sslmode", "disable");
        Ok(url.to_string())
    }
}

/// `host:port` of a `postgres://` URL.
pub fn upstream_of(url: &str) -> Result<String> {
    let url = url::Url::parse(url)?;
    Ok(format!(
        "{}:{}",
        url.host_str().ok_or("the database URL has no host")?,
        url.port().unwrap_or(5432)
    ))
}

/// Reads one typed protocol message (type byte, length, body) into `buf`.
fn read_typed(reader: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<u8> {
    let mut head = [0u8; 5];
    reader.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    buf.clear();
    buf.extend_from_slice(&head);
    buf.resize(1 + len.max(4), 0);
    reader.read_exact(&mut buf[5..])?;
    Ok(head[0])
}

fn proxy_connection(client: TcpStream, server: TcpStream, stats: &Arc<Stats>) -> io::Result<()> {
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    // When each round trip still waiting for its ReadyForQuery was sent.
    let pending = Arc::new(Mutex::new(VecDeque::<Instant>::new()));
    // Set at the first ReadyForQuery: the set-up is over.
    let ready = Arc::new(AtomicBool::new(false));
    let (from_server, to_client) = (server.try_clone()?, client.try_clone()?);
    let (down_pending, down_stats, down_ready) = (pending.clone(), stats.clone(), ready.clone());
    thread::Builder::new()
        .name("pg-proxy-down".into())
        .spawn(move || -> io::Result<()> {
            let mut reader = BufReader::new(from_server);
            let mut writer = io::BufWriter::new(to_client);
            let mut message = Vec::new();
            loop {
                // The first ReadyForQuery ends the set-up; each later one ends a round trip.
                if read_typed(&mut reader, &mut message)? == b'Z'
                    && down_ready.swap(true, Ordering::SeqCst)
                {
                    let sent = down_pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .pop_front();
                    if let Some(sent) = sent {
                        let waited = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        down_stats.waited_ns.fetch_add(waited, Ordering::SeqCst);
                    }
                }
                writer.write_all(&message)?;
                if reader.buffer().is_empty() {
                    writer.flush()?;
                }
            }
        })?;
    let mut reader = BufReader::new(client);
    let mut writer = io::BufWriter::new(server);
    // The startup packet has no type byte: length, then the body.
    let mut len = [0u8; 4];
    reader.read_exact(&mut len)?;
    let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
    reader.read_exact(&mut body)?;
    stats.connect_trips.fetch_add(1, Ordering::SeqCst);
    writer.write_all(&len)?;
    writer.write_all(&body)?;
    writer.flush()?;
    let mut message = Vec::new();
    loop {
        let kind = read_typed(&mut reader, &mut message)?;
        writer.write_all(&message)?;
        match kind {
            b'S' | b'Q' => {
                stats.queries.fetch_add(1, Ordering::SeqCst);
                pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back(Instant::now());
                writer.flush()?;
            }
            // SASL and password messages: the connection's set-up.
            b'p' => {
                stats.connect_trips.fetch_add(1, Ordering::SeqCst);
                writer.flush()?;
            }
            _ if reader.buffer().is_empty() => writer.flush()?,
            _ => {}
        }
    }
}

/// A TCP proxy for a lock-step protocol (SMTP to MailDev): it times each wait of the client for
/// the server, from the client's bytes (or its connection) to the server's next bytes. A
/// request's SMTP exchange is then the server's share of it, as the DB proxy's round trips are.
pub struct WaitProxy {
    /// Where it listens (127.0.0.1).
    pub port: u16,
    waited_ns: Arc<AtomicU64>,
}

impl WaitProxy {
    /// Listens on a free loopback port and forwards each connection to `upstream` (`host:port`).
    pub fn start(upstream: String) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let waited_ns = Arc::new(AtomicU64::new(0));
        let shared = waited_ns.clone();
        thread::Builder::new()
            .name("wait-proxy".into())
            .spawn(move || {
                for client in listener.incoming() {
                    // The connection's set-up and the server's greeting are a wait too.
                    let since = Instant::now();
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        continue;
                    };
                    let waited = shared.clone();
                    let _ =
                        thread::Builder::new()
                            .name("wait-proxy-conn".into())
                            .spawn(move || {
                                let _ = wait_connection(client, server, since, &waited);
                            });
                }
            })?;
        Ok(Self { port, waited_ns })
    }

    /// The time clients have waited for the server so far, in all.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_ns.load(Ordering::SeqCst))
    }

    /// `url` (`scheme://host:port…`) pointed at this proxy.
    pub fn url_for(&self, url: &str) -> Result<String> {
        let mut url = url::Url::parse(url)?;
        url.set_host(Some("127.0.0.1"))?;
        url.set_port(Some(self.port))
            .map_err(|()| "cannot set the proxy's port")?;
        Ok(url.to_string())
    }
}

fn wait_connection(
    client: TcpStream,
    server: TcpStream,
    since: Instant,
    waited_ns: &Arc<AtomicU64>,
) -> io::Result<()> {
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    // When the client began waiting for the server, while it waits.
    let waiting = Arc::new(Mutex::new(Some(since)));
    let (mut from_server, mut to_client) = (server.try_clone()?, client.try_clone()?);
    let (down_waiting, down_waited) = (waiting.clone(), waited_ns.clone());
    thread::Builder::new()
        .name("wait-proxy-down".into())
        .spawn(move || -> io::Result<()> {
            let mut buf = [0u8; 16384];
            loop {
                let n = from_server.read(&mut buf)?;
                if n == 0 {
                    return to_client.shutdown(std::net::Shutdown::Write);
                }
                let began = down_waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                if let Some(began) = began {
                    let waited = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    down_waited.fetch_add(waited, Ordering::SeqCst);
                }
                to_client.write_all(&buf[..n])?;
            }
        })?;
    let (mut from_client, mut to_server) = (client, server);
    let mut buf = [0u8; 16384];
    loop {
        let n = from_client.read(&mut buf)?;
        if n == 0 {
            return to_server.shutdown(std::net::Shutdown::Write);
        }
        // Set before forwarding, so an answer cannot come back before the wait began.
        waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(Instant::now);
        to_server.write_all(&buf[..n])?;
    }
}
