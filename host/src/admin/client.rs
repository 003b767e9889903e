//! A minimal HTTP/1.1 client for the admin API (loopback, one request per connection): what
//! `weir status` and `weir plugin list|swap|rollback` use.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::Context as _;

/// A response: status code, content type and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("the admin API answered: {}", self.body))
    }
}

/// `GET path` from the admin API at `addr` (`host:port`).
pub fn get(addr: &str, path: &str) -> anyhow::Result<Response> {
    request(addr, "GET", path, None, None)
}

/// `POST path` with a JSON body, and the token (as `Authorization: Bearer`) if given.
pub fn post(
    addr: &str,
    path: &str,
    token: Option<&str>,
    body: &serde_json::Value,
) -> anyhow::Result<Response> {
    request(addr, "POST", path, token, Some(body.to_string()))
}

fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> anyhow::Result<Response> {
    let unreachable = || {
        format!(
            "cannot reach weir's admin API at {addr}: is weir running, and is [admin] listen this \
             address (--admin)?"
        )
    };
    let mut error = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    let mut stream = None;
    for a in addr.to_socket_addrs().with_context(unreachable)? {
        match TcpStream::connect_timeout(&a, Duration::from_secs(5)) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => error = e,
        }
    }
    let mut stream = stream.ok_or(error).with_context(unreachable)?;
    // A swap may take a few seconds (loading and compiling the new version).
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("a malformed HTTP response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("a malformed HTTP status line")?;
    let content_type = head.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-type")
            .then(|| value.trim().to_owned())
    });
    Ok(Response {
        status,
        content_type,
        body: body.to_owned(),
    })
}
