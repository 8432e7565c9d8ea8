//! A minimal HTTP/1.1 reader and a keep-alive client: enough for the Runtime API stand-in,
//! MailDev's REST API and the end-to-end mode, with no HTTP stack to build.

use crate::Result;
use serde_json::Value;
use std::{
    io::{self, BufRead, BufReader, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

/// One request or response.
pub struct Message {
    /// The request line or the status line.
    pub start: String,
    /// Header names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// When the whole message had been read.
    pub at: Instant,
}

impl Message {
    /// The first header called `name`, ignoring case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one message (request or response); `None` at a clean end of stream.
pub fn read_message(reader: &mut impl BufRead) -> io::Result<Option<Message>> {
    let mut start = String::new();
    loop {
        if reader.read_line(&mut start)? == 0 {
            return Ok(None);
        }
        if !start.trim().is_empty() {
            break;
        }
        start.clear();
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let mut message = Message {
        start: start.trim_end().to_owned(),
        headers,
        body: Vec::new(),
        at: Instant::now(),
    };
    let chunked = message
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; size];
            reader.read_exact(&mut chunk)?;
            message.body.extend_from_slice(&chunk);
            let mut crlf = String::new();
            reader.read_line(&mut crlf)?;
        }
    } else if let Some(len) = message.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
        message.body = vec![0; len];
        reader.read_exact(&mut message.body)?;
    }
    message.at = Instant::now();
    Ok(Some(message))
}

/// Writes a JSON response with `extra` header lines (each ending in CRLF).
pub fn write_response(
    out: &mut impl Write,
    status: &str,
    extra: &str,
    body: &[u8],
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()
}

/// A keep-alive HTTP/1.1 client for one host.
pub struct HttpClient {
    addr: String,
    /// Reuse the connection; otherwise `Connection: close` and a new connection each time
    /// (whose set-up then counts in the time).
    keep_alive: bool,
    conn: Option<(BufReader<TcpStream>, TcpStream)>,
}

impl HttpClient {
    /// A client of `addr` (`host:port`, or an `http://` URL).
    pub fn new(addr: &str, keep_alive: bool) -> Self {
        Self {
            addr: addr
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned(),
            keep_alive,
            conn: None,
        }
    }

    /// One request: status, body as JSON (null when it is none), time to the whole response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, Value, Duration)> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: bench/1\r\nAccept: application/json\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if let Some(token) = bearer {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if !self.keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        // One retry on a fresh connection if the kept-alive one was closed.
        let mut last = None;
        for _ in 0..2 {
            let start = Instant::now();
            if self.conn.is_none() {
                let stream = TcpStream::connect(&self.addr)?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(Duration::from_secs(120)))?;
                self.conn = Some((BufReader::new(stream.try_clone()?), stream));
            }
            let (reader, writer) = self.conn.as_mut().ok_or("no connection")?;
            let sent = writer
                .write_all(head.as_bytes())
                .and_then(|()| writer.write_all(body.as_bytes()))
                .and_then(|()| writer.flush());
            match sent.and_then(|()| read_message(reader)) {
                Ok(Some(response)) => {
                    let elapsed = response.at.saturating_duration_since(start);
                    let status = response
                        .start
                        .split_whitespace()
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .ok_or("a response without a status")?;
                    if !self.keep_alive
                        || response
                            .header("connection")
                            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                    {
                        self.conn = None;
                    }
                    let json = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
                    return Ok((status, json, elapsed));
                }
                Ok(None) => {
                    self.conn = None;
                    last = Some(io::Error::from(io::ErrorKind::UnexpectedEof));
                }
                Err(error) => {
                    self.conn = None;
                    last = Some(error);
                }
            }
        }
        Err(format!(
            "{method} {path}: {}",
            last.map(|e| e.to_string()).unwrap_or_default()
        )
        .into())
    }

    /// One request that must answer `expected`.
    pub fn expect(
        &mut self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
        expected: u16,
    ) -> Result<(Value, Duration)> {
        let (status, json, elapsed) = self.request(method, path, bearer, body)?;
        if status != expected {
            return Err(
                format!("{method} {path} answered {status} (expected {expected}): {json}").into(),
            );
        }
        Ok((json, elapsed))
    }
}
