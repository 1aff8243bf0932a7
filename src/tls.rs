//! TLS: HTTPS on the server's one port, with rustls (ring provider) over
//! each core's glommio sockets through futures-rustls.
//!
//! * [`TlsFiles::load`] reads the PEM certificate chain, private key and
//!   (for mutual TLS) CA file with rustls-pki-types, checks that the key
//!   matches the certificate and that the certificate is in its validity
//!   period, and builds the rustls configuration: TLS 1.3 and 1.2, ALPN
//!   `http/1.1`, and with `tls_ca` a verifier that requires a client
//!   certificate signed by that CA.
//! * [`TlsState`] holds the current configuration as a [`Published`]
//!   value: SIGHUP loads the files again and publishes the result, each
//!   core picks it up for its next handshake, and open connections keep
//!   the configuration they started with. Files that do not load are
//!   refused with a log line and the previous configuration stays.
//! * [`accept`] runs one handshake under a deadline, after a peek that
//!   answers plaintext HTTP with a readable 400 instead of a TLS alert.
//!   Every refusal is counted and logged (a few lines a second at most per
//!   core), and none affects other connections.
//! * [`TlsConn`] is the [`Transport`] a connection then runs over: the
//!   connection loop, pipelining, limits and SSE streams are the same code
//!   as for plain TCP. Its [`PeerIdentity`] carries the verified client
//!   certificate's subject.

use crate::published::{LocalCopy, Published};
use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::cell::Cell;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use themis_io::{PeerIdentity, Transport};

/// Why certificate files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Config(String),
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// The server certificate's facts, for logs and `--validate`.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub subject: String,
    /// `notAfter`, ISO 8601 UTC (`2027-01-31T12:00:00Z`).
    pub not_after: String,
    /// Whole days until `notAfter` (negative: expired).
    pub days_left: i64,
}

fn parse_cert(der: &[u8]) -> Result<x509_cert::Certificate, x509_cert::der::Error> {
    use x509_cert::der::Decode;
    x509_cert::Certificate::from_der(der)
}

/// What a certificate's DER says: subject and validity.
fn describe(der: &[u8], path: &Path) -> Result<CertInfo, TlsError> {
    let cert =
        parse_cert(der).map_err(|e| file_error(path, format!("not an X.509 certificate: {e}")))?;
    let validity = &cert.tbs_certificate.validity;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let not_before = validity.not_before.to_unix_duration().as_secs() as i64;
    let not_after = validity.not_after.to_unix_duration().as_secs() as i64;
    if not_before > now {
        return Err(file_error(
            path,
            format!(
                "the certificate is not valid before {}",
                validity.not_before.to_date_time()
            ),
        ));
    }
    Ok(CertInfo {
        subject: cert.tbs_certificate.subject.to_string(),
        not_after: validity.not_after.to_date_time().to_string(),
        days_left: (not_after - now).div_euclid(86_400),
    })
}

/// The subject of a DER certificate in RFC 4514 form (`CN=client-a,O=Acme`,
/// as `openssl x509 -noout -subject -nameopt RFC2253` prints it), or `None`
/// when it cannot be parsed.
pub fn subject_of(der: &[u8]) -> Option<String> {
    Some(parse_cert(der).ok()?.tbs_certificate.subject.to_string())
}

/// The certificate, key and CA files of `server.*`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

/// A loaded configuration and its certificate's facts.
pub struct Loaded {
    pub config: Arc<ServerConfig>,
    pub cert: CertInfo,
}

impl TlsFiles {
    /// The files of a configuration with TLS on.
    pub fn from_config(s: &crate::config::ServerConfig) -> Option<TlsFiles> {
        if !s.enable_tls {
            return None;
        }
        Some(TlsFiles {
            cert: s.tls_cert.clone()?,
            key: s.tls_key.clone()?,
            ca: s.tls_ca.clone(),
        })
    }

    /// Reads and checks the files and builds the rustls configuration.
    pub fn load(&self) -> Result<Loaded, TlsError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| file_error(&self.cert, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| file_error(&self.cert, e))?;
        let Some(leaf) = chain.first() else {
            return Err(file_error(&self.cert, "no PEM certificate in the file"));
        };
        let cert = describe(leaf, &self.cert)?;
        if cert.days_left < 0 {
            return Err(file_error(
                &self.cert,
                format!("the certificate expired on {}", cert.not_after),
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| file_error(&self.key, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca).map_err(|e| file_error(ca, e))? {
                    let c = c.map_err(|e| file_error(ca, e))?;
                    roots
                        .add(c)
                        .map_err(|e| file_error(ca, format!("not a CA certificate: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(file_error(ca, "no PEM certificate in the file"));
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| file_error(ca, e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => file_error(
                &self.key,
                format!(
                    "the private key does not match the certificate {}",
                    self.cert.display()
                ),
            ),
            e => file_error(&self.key, e),
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Loaded {
            config: Arc::new(config),
            cert,
        })
    }
}

/// The node's TLS: its files and the current configuration.
pub struct TlsState {
    files: TlsFiles,
    current: Published<Arc<ServerConfig>>,
}

impl TlsState {
    /// Loads the files (start-up: a failure stops the server).
    pub fn start(files: TlsFiles) -> Result<(TlsState, CertInfo), TlsError> {
        let loaded = files.load()?;
        Ok((
            TlsState {
                files,
                current: Published::new(loaded.config),
            },
            loaded.cert,
        ))
    }

    /// SIGHUP: loads the files again; on success every core's next
    /// handshake uses them, on failure nothing changes.
    pub fn reload(&self) -> Result<CertInfo, TlsError> {
        let loaded = self.files.load()?;
        self.current.publish(loaded.config);
        Ok(loaded.cert)
    }

    /// A core's view of the current configuration.
    pub fn local(&self) -> LocalTls {
        LocalTls(LocalCopy::new(&self.current))
    }
}

/// One core's copy of the current TLS configuration.
pub struct LocalTls(LocalCopy<Arc<ServerConfig>>);

impl LocalTls {
    /// The configuration for the next handshake.
    pub fn get(&self, state: &TlsState) -> Arc<ServerConfig> {
        (*self.0.get(&state.current)).clone()
    }
}

/// A TLS connection, after its handshake.
pub struct TlsConn {
    inner: futures_rustls::server::TlsStream<TcpStream>,
    peer: PeerIdentity,
}

impl TlsConn {
    /// The negotiated protocol version (for logs and tests).
    pub fn protocol(&self) -> Option<rustls::ProtocolVersion> {
        self.inner.get_ref().1.protocol_version()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

impl Transport for TlsConn {
    fn peer(&self) -> PeerIdentity {
        self.peer.clone()
    }

    /// `close_notify`, flushed, then `shutdown(SHUT_WR)`: the client learns
    /// the stream ended cleanly and may still send (a lingering close).
    async fn close_write(&mut self) -> io::Result<()> {
        self.inner.get_mut().1.send_close_notify();
        self.inner.flush().await?;
        Ok(self
            .inner
            .get_ref()
            .0
            .shutdown(std::net::Shutdown::Write)
            .await?)
    }
}

/// Why a connection was dropped before serving HTTP.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("plaintext HTTP on the TLS port (answered 400)")]
    Plaintext,
    #[error("no TLS handshake within {0:?}")]
    Deadline(Duration),
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
}

/// The 400 a plaintext HTTP client gets on the TLS port.
const PLAINTEXT_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 115\r\n\r\n{\"error\":true,\"code\":\"tls_required\",\"message\":\"this port speaks HTTPS only: use https:// (TLS)\",\"status_code\":400}\n";

/// Whether the first bytes of a connection are an HTTP request line
/// (`GET `, `POST `...) rather than a TLS record (`0x16 0x03 ..`).
fn looks_like_http(first: &[u8]) -> bool {
    let word = first.iter().take_while(|b| b.is_ascii_uppercase()).count();
    (3..=7).contains(&word) && first.get(word) == Some(&b' ')
}

/// Runs the TLS handshake of a new connection within `deadline`.
pub async fn accept(
    config: Arc<ServerConfig>,
    stream: TcpStream,
    deadline: Duration,
) -> Result<TlsConn, Refused> {
    let addr = stream.peer_addr().ok();
    let work = async move {
        let mut first = [0u8; 8];
        let n = stream
            .peek(&mut first)
            .await
            .map_err(|e| Refused::Handshake(e.into()))?;
        if looks_like_http(&first[..n]) {
            let mut stream = stream;
            let _ = stream.write_all(PLAINTEXT_ANSWER).await;
            let _ = stream.shutdown(std::net::Shutdown::Write).await;
            // Read what the client sent (briefly, boundedly) so that closing
            // does not reset the connection before it reads the answer.
            let drain = async {
                let mut scratch = [0u8; 4096];
                let mut total = 0usize;
                while total < (64 << 10) {
                    match futures_lite::AsyncReadExt::read(&mut stream, &mut scratch).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n,
                    }
                }
            };
            futures_lite::future::or(drain, glommio::timer::sleep(Duration::from_millis(200)))
                .await;
            return Err(Refused::Plaintext);
        }
        let tls = futures_rustls::TlsAcceptor::from(config)
            .accept(stream)
            .await
            .map_err(Refused::Handshake)?;
        let mut peer = PeerIdentity::from_addr(addr);
        if let Some(subject) = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| subject_of(c))
        {
            peer = peer.with_client_cert_subject(subject);
        }
        Ok(TlsConn { inner: tls, peer })
    };
    match glommio::timer::timeout(deadline, async { Ok(work.await) }).await {
        Ok(r) => r,
        Err(_) => Err(Refused::Deadline(deadline)),
    }
}

thread_local! {
    /// This core's log budget for refused handshakes: (window start, lines).
    static REFUSAL_LOG: Cell<(Option<Instant>, u32)> = const { Cell::new((None, 0)) };
}

/// Logs a refused handshake, at most 10 lines a second per core (a flood
/// of garbage must not become a flood of logs; the counter counts all).
pub fn log_refusal(shard: usize, peer: Option<std::net::SocketAddr>, why: &Refused) {
    let now = Instant::now();
    let (start, lines) = REFUSAL_LOG.with(Cell::get);
    let (start, lines) = match start {
        Some(s) if now.duration_since(s) < Duration::from_secs(1) => (s, lines + 1),
        _ => (now, 1),
    };
    REFUSAL_LOG.with(|c| c.set((Some(start), lines)));
    if lines <= 10 {
        let peer = peer.map(|p| p.to_string()).unwrap_or_default();
        tracing::warn!(shard, %peer, "TLS connection refused: {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_told_from_tls() {
        assert!(looks_like_http(b"GET / HT"));
        assert!(looks_like_http(b"DELETE /"));
        assert!(looks_like_http(b"PUT /ent"));
        assert!(!looks_like_http(&[0x16, 0x03, 0x01, 0x02, 0, 1, 0, 0]));
        assert!(!looks_like_http(b"get / HT"));
        assert!(!looks_like_http(b"GE"));
        let body_start = PLAINTEXT_ANSWER
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap()
            + 4;
        let text = std::str::from_utf8(PLAINTEXT_ANSWER).unwrap();
        assert!(text.contains(&format!(
            "Content-Length: {}\r\n",
            PLAINTEXT_ANSWER.len() - body_start
        )));
    }

    #[test]
    fn missing_files_are_named() {
        let files = TlsFiles {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
            ca: None,
        };
        let e = files.load().err().unwrap().to_string();
        assert!(e.contains("/nonexistent/cert.pem"), "{e}");
    }
}
