//! One HTTPS request: HTTP/1.1 over TLS to a given address, the certificate checked by the
//! connector given for the host's name (MTA-STS policies, TLS reports sent over HTTPS).
//!
//! Responsible for: the connection, the TLS handshake for `host`, sending one request and
//! reading the status and a body of at most `max_body` bytes. Not responsible for: finding
//! addresses (each caller's resolver), time limits (the callers'), redirects (never
//! followed) or retries.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use std::net::SocketAddr;
use tokio_rustls::TlsConnector;

/// A request to send: method, path (with query), content type and body.
pub struct Request<'a> {
    /// GET or POST.
    pub method: hyper::Method,
    /// `/.well-known/mta-sts.txt`.
    pub path: &'a str,
    /// The body's type, if it has one.
    pub content_type: Option<&'a str>,
    /// The body (empty for GET).
    pub body: Bytes,
}

/// Sends `req` to `host` at `addr` over TLS checked by `tls`; the status and body (at most
/// `max_body` bytes), or what went wrong in words.
pub async fn send(
    tls: &TlsConnector,
    (addr, host): (SocketAddr, &str),
    req: Request<'_>,
    max_body: usize,
) -> Result<(hyper::StatusCode, Bytes), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let name =
        rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut request = hyper::Request::builder()
        .method(req.method)
        .uri(req.path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "backstop");
    if let Some(t) = req.content_type {
        request = request.header(hyper::header::CONTENT_TYPE, t);
    }
    let request = request
        .body(Full::new(req.body))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = Limited::new(response.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| format!("the answer: {e}"))?
        .to_bytes();
    Ok((status, body))
}
