//! HTTPS end to end with real clients (curl, openssl s_client, a rustls
//! client): protocol versions and ALPN, mutual TLS, keys bound to client
//! certificates, hostile connections on the TLS port, and certificate
//! reload while connections stay open. Certificates are made in each test
//! with the `openssl` command (EC P-256: fast), in its temp directory.

use crate::common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn openssl(dir: &Path, args: &[&str]) {
    let out = output_within(
        Command::new("openssl").current_dir(dir).args(args),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<ca>.crt`, `<ca>.key`).
fn make_ca(dir: &Path, ca: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca}"),
        ],
    );
}

/// A certificate `<name>.crt`/`<name>.key` signed by `ca`, for a server
/// (`localhost`, 127.0.0.1) or a client.
fn make_cert(dir: &Path, ca: &str, name: &str, subject: &str, server: bool) {
    let ext = if server {
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    } else {
        "extendedKeyUsage=clientAuth\n"
    };
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// Like [`make_cert`], with the validity period given: `start` and `end`
/// as `YYYYMMDDHHMMSSZ` (UTC). `openssl ca` is the command that takes
/// both dates (`x509 -days` only counts from now).
fn make_cert_dated(
    dir: &Path,
    ca: &str,
    name: &str,
    subject: &str,
    server: bool,
    start: &str,
    end: &str,
) {
    make_cert(dir, ca, name, subject, server);
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca = dated\n[dated]\ndatabase = index.txt\nnew_certs_dir = .\n\
         serial = ca.srl\ndefault_md = sha256\npolicy = any\nunique_subject = no\n\
         [any]\ncommonName = optional\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "ca",
            "-batch",
            "-notext",
            "-preserveDN",
            "-config",
            "ca.cnf",
            "-cert",
            &format!("{ca}.crt"),
            "-keyfile",
            &format!("{ca}.key"),
            "-in",
            &format!("{name}.csr"),
            "-out",
            &format!("{name}.crt"),
            "-startdate",
            start,
            "-enddate",
            end,
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// `YYYYMMDDHHMMSSZ` for `unix` seconds (as `openssl ca` takes dates).
fn asn1_time(unix: u64) -> String {
    let out = output_within(
        Command::new("date").args(["-u", "-d", &format!("@{unix}"), "+%Y%m%d%H%M%SZ"]),
        Duration::from_secs(10),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits until the server's output holds `needle` `count` times.
fn wait_count(s: &Server, needle: &str, count: usize) {
    let end = Instant::now() + Duration::from_secs(10);
    while s.output().matches(needle).count() < count {
        assert!(Instant::now() < end, "{needle:?} x{count}: {}", s.output());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn p(dir: &Path, f: &str) -> String {
    dir.join(f).to_str().unwrap().to_string()
}

/// Starts a TLS server with `extra` YAML under `server:`.
fn start_tls(dir: &Path, extra: &str, top: &str) -> Server {
    let yaml = format!(
        "server:\n  enable_tls: true\n  tls_cert: {}\n  tls_key: {}\n  tls_handshake_timeout_ms: 300\n{extra}{top}",
        p(dir, "server.crt"),
        p(dir, "server.key")
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    start_in(
        dir,
        &Opts::threads(1).arg("--config").arg(path.to_str().unwrap()),
    )
}

fn certs(dir: &Path, pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(dir.join(pem))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// A blocking rustls client connection.
struct TlsClient {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl TlsClient {
    /// Connects and finishes the handshake; `client` is a client
    /// certificate (`name` of `name.crt`/`name.key`).
    fn connect(addr: SocketAddr, dir: &Path, client: Option<&str>) -> std::io::Result<TlsClient> {
        use rustls::pki_types::pem::PemObject;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(dir, "ca.crt") {
            roots.add(c).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match client {
            Some(name) => {
                let key = rustls::pki_types::PrivateKeyDer::from_pem_file(
                    dir.join(format!("{name}.key")),
                )
                .unwrap();
                builder
                    .with_client_auth_cert(certs(dir, &format!("{name}.crt")), key)
                    .unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let sock = TcpStream::connect(addr)?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        // TLS 1.3 reports a refused client certificate after the
        // handshake: a first read surfaces it.
        Ok(TlsClient {
            tls,
            buf: Vec::new(),
        })
    }

    /// The server certificate's subject.
    fn server_subject(&self) -> String {
        let c = self.tls.conn.peer_certificates().unwrap();
        themis::tls::subject_of(&c[0]).unwrap()
    }

    fn send(&mut self, method: &str, path: &str, headers: &str, body: &str) -> std::io::Result<()> {
        let ct = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/json\r\n"
        };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{headers}{ct}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.tls.write_all(req.as_bytes())?;
        self.tls.flush()
    }

    /// Reads until `needle` is in the buffer; returns everything read.
    fn read_until(&mut self, needle: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut chunk = [0u8; 16384];
        while !self.buf.windows(needle.len()).any(|w| w == needle) {
            let n = self.tls.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(std::mem::take(&mut self.buf))
    }

    /// One request with a Content-Length answer: (status, body).
    fn call(
        &mut self,
        method: &str,
        path: &str,
        headers: &str,
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        self.send(method, path, headers, body)?;
        self.response()
    }

    /// Reads the next response.
    fn response(&mut self) -> std::io::Result<(u16, String)> {
        let mut head = self.read_until(b"\r\n\r\n")?;
        let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        self.buf = head.split_off(end);
        let text = String::from_utf8_lossy(&head).to_lowercase();
        let status: u16 = text[9..12].parse().unwrap();
        let len: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        let mut chunk = [0u8; 16384];
        while self.buf.len() < len {
            let n = self.tls.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&self.buf[..len]).into_owned();
        self.buf.drain(..len);
        Ok((status, body))
    }
}

fn curl(args: &[&str]) -> std::process::Output {
    output_within(
        Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(args),
        Duration::from_secs(20),
    )
}

fn https(s: &Server, path: &str) -> String {
    format!("https://localhost:{}{path}", s.addr.port())
}

fn resolve(s: &Server) -> String {
    format!("localhost:{}:127.0.0.1", s.addr.port())
}

fn s_client(s: &Server, dir: &Path, extra: &[&str]) -> String {
    let out = output_within(
        Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &s.addr.to_string(),
                "-servername",
                "localhost",
            ])
            .args(["-CAfile", &p(dir, "ca.crt")])
            .args(extra),
        Duration::from_secs(20),
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn metric(c: &mut TlsClient, name: &str) -> u64 {
    let (_, text) = c.call("GET", "/metrics", "", "").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[test]
fn https_with_real_clients_and_hostile_connections() {
    let dir = tempdir();
    let d = dir.path();
    make_ca(d, "ca");
    make_cert(d, "ca", "server", "/O=one/CN=localhost", true);
    let s = start_tls(d, "", "");

    let out = curl(&[
        "--cacert",
        &p(d, "ca.crt"),
        "--resolve",
        &resolve(&s),
        &https(&s, "/health"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("healthy"));
    // Untrusted: curl without the CA refuses the self-made chain.
    let out = curl(&["--resolve", &resolve(&s), &https(&s, "/health")]);
    assert!(!out.status.success());
    // Wrong host name: the certificate is for localhost and 127.0.0.1.
    let out = curl(&[
        "--cacert",
        &p(d, "ca.crt"),
        "--resolve",
        &format!("other.example:{}:127.0.0.1", s.addr.port()),
        &format!("https://other.example:{}/health", s.addr.port()),
    ]);
    assert!(!out.status.success());

    let t13 = s_client(&s, d, &["-tls1_3", "-alpn", "http/1.1"]);
    assert!(t13.contains("ALPN protocol: http/1.1"), "{t13}");
    assert!(t13.contains("TLSv1.3"), "{t13}");
    assert!(t13.contains("Verify return code: 0 (ok)"), "{t13}");
    let t12 = s_client(&s, d, &["-tls1_2"]);
    assert!(t12.contains("TLSv1.2"), "{t12}");
    let h2 = s_client(&s, d, &["-alpn", "h2"]);
    assert!(!h2.contains("ALPN protocol: h2"), "{h2}");

    // Plaintext HTTP on the TLS port: a readable 400.
    let mut plain = TcpStream::connect(s.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = plain.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("tls_required"), "{answer}");
    // Garbage, and a handshake that never finishes: dropped, quickly.
    let mut garbage = TcpStream::connect(s.addr).unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    garbage
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 6, 7])
        .unwrap();
    let mut sink = Vec::new();
    let _ = garbage.read_to_end(&mut sink);
    let started = Instant::now();
    let mut silent = TcpStream::connect(s.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(silent.read(&mut [0u8; 16]).unwrap_or(0), 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // The core is fine; every refusal was counted and logged.
    let mut c = TlsClient::connect(s.addr, d, None).unwrap();
    assert_eq!(
        c.tls.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let (st, body) = c.call("GET", "/health", "", "").unwrap();
    assert_eq!(st, 200, "{body}");
    // Pipelining and bodies over TLS; 413 too.
    c.send("PUT", "/entities/t:1", "", r#"{"a":1}"#).unwrap();
    c.send("GET", "/entities/t:1", "", "").unwrap();
    assert_eq!(c.response().unwrap().0, 201);
    let (st, body) = c.response().unwrap();
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(r#""a":1"#), "{body}");
    let big = "x".repeat(11 << 20);
    let (st, _) = c.call("PUT", "/entities/t:2", "", &big).unwrap();
    assert_eq!(st, 413);
    let mut c = TlsClient::connect(s.addr, d, None).unwrap();
    let failures = metric(&mut c, "themis_tls_handshake_failures_total");
    assert!(failures >= 4, "{failures}");
    assert!(metric(&mut c, "themis_tls_handshakes_total") >= 3);
    let out = s.output();
    assert!(
        out.contains("TLS connection refused: plaintext HTTP"),
        "{out}"
    );
    assert!(out.contains("no TLS handshake within"), "{out}");
}

#[test]
fn mutual_tls_and_keys_bound_to_client_certificates() {
    let dir = tempdir();
    let d = dir.path();
    make_ca(d, "ca");
    make_ca(d, "other-ca");
    make_cert(d, "ca", "server", "/CN=localhost", true);
    make_cert(d, "ca", "client-a", "/O=Acme/CN=client-a", false);
    make_cert(d, "ca", "client-b", "/CN=client-b", false);
    make_cert(d, "other-ca", "stranger", "/CN=client-a", false);
    let bound = "bound-key-0123456789";
    let free = "free-key-0123456789";
    let extra = format!(
        "  tls_ca: {}\n  enable_auth: true\n  api_keys:\n    - {{key: {bound}, role: readonly, client_cert_subject: \"CN=client-a,O=Acme\"}}\n    - {{key: {free}, role: readonly}}\n",
        p(d, "ca.crt")
    );
    let s = start_tls(d, &extra, "");

    // No client certificate, or one from another CA: no connection.
    let out = curl(&[
        "--cacert",
        &p(d, "ca.crt"),
        "--resolve",
        &resolve(&s),
        &https(&s, "/health"),
    ]);
    assert!(!out.status.success(), "no client certificate");
    for who in [None, Some("stranger")] {
        let refused =
            TlsClient::connect(s.addr, d, who).and_then(|mut c| c.call("GET", "/health", "", ""));
        assert!(refused.is_err(), "{who:?}: {refused:?}");
    }
    // curl with a client certificate and the key bound to it.
    let out = curl(&[
        "--cacert",
        &p(d, "ca.crt"),
        "--cert",
        &p(d, "client-a.crt"),
        "--key",
        &p(d, "client-a.key"),
        "--resolve",
        &resolve(&s),
        "-H",
        &format!("Authorization: Bearer {bound}"),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &https(&s, "/stats"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The bound key is refused with another (valid) certificate; the
    // unbound key works with any.
    let mut b = TlsClient::connect(s.addr, d, Some("client-b")).unwrap();
    let (st, _) = b
        .call("GET", "/stats", &format!("X-API-Key: {bound}\r\n"), "")
        .unwrap();
    assert_eq!(st, 401);
    let (st, _) = b
        .call("GET", "/stats", &format!("X-API-Key: {free}\r\n"), "")
        .unwrap();
    assert_eq!(st, 200);
    let mut a = TlsClient::connect(s.addr, d, Some("client-a")).unwrap();
    let (st, _) = a
        .call("GET", "/stats", &format!("X-API-Key: {bound}\r\n"), "")
        .unwrap();
    assert_eq!(st, 200);
}

#[test]
fn certificates_reload_on_sighup_without_dropping_connections() {
    let dir = tempdir();
    let d = dir.path();
    make_ca(d, "ca");
    make_cert(d, "ca", "server", "/O=one/CN=localhost", true);
    let s = start_tls(d, "", "features: {cdc: true}\n");
    let mut keep = TlsClient::connect(s.addr, d, None).unwrap();
    assert!(keep.server_subject().contains("O=one"));
    assert_eq!(keep.call("GET", "/health", "", "").unwrap().0, 200);
    let mut sse = TlsClient::connect(s.addr, d, None).unwrap();
    sse.send("GET", "/changefeed/stream?heartbeat_ms=200", "", "")
        .unwrap();
    let head = sse.read_until(b"\r\n\r\n").unwrap();
    assert!(String::from_utf8_lossy(&head).contains("text/event-stream"));

    // A new certificate: new handshakes use it, open connections go on.
    make_cert(d, "ca", "server", "/O=two/CN=localhost", true);
    s.signal("HUP");
    s.wait_output("TLS certificate and key reloaded", Duration::from_secs(10));
    assert_eq!(keep.call("GET", "/health", "", "").unwrap().0, 200);
    let mut fresh = TlsClient::connect(s.addr, d, None).unwrap();
    assert!(
        fresh.server_subject().contains("O=two"),
        "{}",
        fresh.server_subject()
    );
    let (st, _) = fresh.call("PUT", "/entities/r:1", "", "{}").unwrap();
    assert_eq!(st, 201);
    let events = sse.read_until(b"r:1").unwrap();
    assert!(String::from_utf8_lossy(&events).contains("data: "));

    // A broken certificate is refused; the previous one stays.
    std::fs::write(
        d.join("server.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    s.signal("HUP");
    s.wait_output("TLS certificate or key refused", Duration::from_secs(10));
    let c = TlsClient::connect(s.addr, d, None).unwrap();
    assert!(c.server_subject().contains("O=two"));
    assert_eq!(keep.call("GET", "/health", "", "").unwrap().0, 200);
}

#[test]
fn bad_certificates_stop_the_start_and_validate_reports_them() {
    let dir = tempdir();
    let d = dir.path();
    make_ca(d, "ca");
    make_cert(d, "ca", "server", "/CN=localhost", true);
    make_cert(d, "ca", "other", "/CN=other", true);
    let config = |cert: &str, key: &str| -> PathBuf {
        let path = d.join(format!("{cert}-{key}.yaml"));
        std::fs::write(
            &path,
            format!(
                "server: {{enable_tls: true, tls_cert: {}, tls_key: {}}}\n",
                p(d, cert),
                p(d, key)
            ),
        )
        .unwrap();
        path
    };
    let validate = |cfg: &Path| {
        let out = output_within(
            command(d).args([
                "--validate",
                "--port",
                "0",
                "--config",
                cfg.to_str().unwrap(),
            ]),
            Duration::from_secs(30),
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, text) = validate(&config("server.crt", "server.key"));
    assert!(ok, "{text}");
    assert!(
        text.contains("load and match: CN=localhost, expires"),
        "{text}"
    );
    assert!(text.contains("! TLS certificate expires in"), "{text}");
    let (ok, text) = validate(&config("server.crt", "other.key"));
    assert!(!ok);
    assert!(text.contains("does not match the certificate"), "{text}");
    let (ok, text) = validate(&config("missing.crt", "server.key"));
    assert!(!ok);
    assert!(text.contains("missing.crt"), "{text}");
    // The server refuses to start with a key that does not match.
    let out = output_within(
        command(d).args([
            "--port",
            "0",
            "--db",
            &p(d, "data"),
            "--config",
            config("server.crt", "other.key").to_str().unwrap(),
        ]),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match"));
}

/// The issue's bad certificates on the client side of the server: a
/// client certificate that expired or that another CA signed, with mutual
/// TLS on. Each is refused in the handshake, counted and logged; the core
/// goes on serving.
#[test]
fn expired_or_foreign_client_certificates_are_refused_counted_and_logged() {
    let dir = tempdir();
    let d = dir.path();
    make_ca(d, "ca");
    make_ca(d, "other-ca");
    make_cert(d, "ca", "server", "/CN=localhost", true);
    make_cert(d, "ca", "client", "/CN=client", false);
    make_cert(d, "other-ca", "stranger", "/CN=client", false);
    make_cert_dated(
        d,
        "ca",
        "expired",
        "/CN=client",
        false,
        "20200101000000Z",
        "20200201000000Z",
    );
    let s = start_tls(d, &format!("  tls_ca: {}\n", p(d, "ca.crt")), "");
    let mut ok = TlsClient::connect(s.addr, d, Some("client")).unwrap();
    let before = metric(&mut ok, "themis_tls_handshake_failures_total");
    for who in ["expired", "stranger", "expired"] {
        let refused = TlsClient::connect(s.addr, d, Some(who))
            .and_then(|mut c| c.call("GET", "/health", "", ""));
        assert!(refused.is_err(), "{who}: {refused:?}");
        // curl too.
        let out = curl(&[
            "--cacert",
            &p(d, "ca.crt"),
            "--cert",
            &p(d, &format!("{who}.crt")),
            "--key",
            &p(d, &format!("{who}.key")),
            "--resolve",
            &resolve(&s),
            &https(&s, "/health"),
        ]);
        assert!(!out.status.success(), "{who}: curl got through");
    }
    // The open connection and new ones with a good certificate are served.
    assert_eq!(ok.call("GET", "/health", "", "").unwrap().0, 200);
    let mut again = TlsClient::connect(s.addr, d, Some("client")).unwrap();
    assert_eq!(again.call("PUT", "/entities/t:1", "", "{}").unwrap().0, 201);
    let after = metric(&mut again, "themis_tls_handshake_failures_total");
    assert_eq!(after - before, 6, "three rustls and three curl refusals");
    wait_count(&s, "TLS connection refused: TLS handshake failed", 6);
    let out = s.output();
    assert!(out.contains("certificate expired"), "{out}");
    assert!(out.contains("UnknownIssuer"), "{out}");
}

/// The issue's bad certificates on the server's side: an expired one (the
/// server refuses to load it; one that expires while served is refused by
/// clients), a self-signed one no client trusts, and a name that is not
/// the host's. The core survives each and serves a good certificate again.
#[test]
fn expired_self_signed_and_wrong_host_server_certificates_are_refused() {
    let dir = tempdir();
    let d = dir.path();
    make_ca(d, "ca");
    make_cert(d, "ca", "server", "/O=good/CN=localhost", true);
    std::fs::copy(d.join("server.crt"), d.join("good.crt")).unwrap();
    std::fs::copy(d.join("server.key"), d.join("good.key")).unwrap();
    let s = start_tls(d, "", "");
    let use_cert = |name: &str| {
        std::fs::copy(d.join(format!("{name}.crt")), d.join("server.crt")).unwrap();
        std::fs::copy(d.join(format!("{name}.key")), d.join("server.key")).unwrap();
    };
    let curl_health = |s: &Server| {
        curl(&[
            "--cacert",
            &p(d, "ca.crt"),
            "--resolve",
            &resolve(s),
            &https(s, "/health"),
        ])
    };

    // Already expired: the server refuses it and keeps the good one.
    make_cert_dated(
        d,
        "ca",
        "old",
        "/O=old/CN=localhost",
        true,
        "20200101000000Z",
        "20200201000000Z",
    );
    use_cert("old");
    s.signal("HUP");
    s.wait_output("TLS certificate or key refused", Duration::from_secs(10));
    assert!(
        s.output().contains("the certificate expired on"),
        "{}",
        s.output()
    );
    let c = TlsClient::connect(s.addr, d, None).unwrap();
    assert!(c.server_subject().contains("O=good"));
    // `--validate` and start-up refuse it too.
    std::fs::write(
        d.join("old.yaml"),
        format!(
            "server: {{enable_tls: true, tls_cert: {}, tls_key: {}}}\n",
            p(d, "old.crt"),
            p(d, "old.key")
        ),
    )
    .unwrap();
    let out = output_within(
        command(d).args(["--validate", "--port", "0", "--config", &p(d, "old.yaml")]),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("the certificate expired on"), "{text}");

    // Valid when loaded, expired when a client connects: the client refuses.
    let end = unix_now() + 6;
    make_cert_dated(
        d,
        "ca",
        "brief",
        "/O=brief/CN=localhost",
        true,
        &asn1_time(unix_now() - 3600),
        &asn1_time(end),
    );
    use_cert("brief");
    s.signal("HUP");
    wait_count(&s, "TLS certificate and key reloaded", 1);
    while unix_now() <= end + 1 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let refused = TlsClient::connect(s.addr, d, None).map(|_| ());
    let e = refused.expect_err("an expired server certificate was accepted");
    assert!(e.to_string().contains("certificate expired"), "{e}");
    let out = curl_health(&s);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expired"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Self-signed, trusted by nobody: refused by curl, rustls, s_client.
    std::fs::write(
        d.join("self.cnf"),
        "[req]\ndistinguished_name = dn\nx509_extensions = v3\nprompt = no\n\
         [dn]\nO = self\nCN = localhost\n\
         [v3]\nsubjectAltName = DNS:localhost,IP:127.0.0.1\n\
         basicConstraints = critical,CA:FALSE\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-config",
            "self.cnf",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "self.key",
            "-out",
            "self.crt",
            "-days",
            "2",
        ],
    );
    use_cert("self");
    s.signal("HUP");
    wait_count(&s, "TLS certificate and key reloaded", 2);
    let e = TlsClient::connect(s.addr, d, None)
        .map(|_| ())
        .expect_err("a self-signed certificate was trusted");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    assert!(!curl_health(&s).status.success());
    let out = curl(&["--resolve", &resolve(&s), &https(&s, "/health")]);
    assert!(!out.status.success(), "system roots trust it");
    let said = s_client(&s, d, &[]);
    assert!(
        said.contains("self-signed certificate") || said.contains("self signed certificate"),
        "{said}"
    );

    // Wrong host: a good chain for another name.
    make_cert(d, "ca", "elsewhere", "/CN=elsewhere.example", false);
    std::fs::write(
        d.join("elsewhere.ext"),
        "subjectAltName=DNS:elsewhere.example\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "elsewhere.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "elsewhere.crt",
            "-days",
            "2",
            "-extfile",
            "elsewhere.ext",
        ],
    );
    use_cert("elsewhere");
    s.signal("HUP");
    wait_count(&s, "TLS certificate and key reloaded", 3);
    let e = TlsClient::connect(s.addr, d, None)
        .map(|_| ())
        .expect_err("a certificate for another name was accepted");
    assert!(e.to_string().contains("not valid for name"), "{e}");
    let out = curl_health(&s);
    assert!(!out.status.success());

    // The core survived all of it: a good certificate is served again.
    use_cert("good");
    s.signal("HUP");
    wait_count(&s, "TLS certificate and key reloaded", 4);
    let mut c = TlsClient::connect(s.addr, d, None).unwrap();
    assert!(c.server_subject().contains("O=good"));
    assert_eq!(c.call("GET", "/health", "", "").unwrap().0, 200);
    let out = curl_health(&s);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
