//! Request spans exported over OTLP/HTTP (JSON) to `tracing.otlp_endpoint`.
//!
//! Each core buffers finished request spans locally and hands them over in
//! batches (one channel send per batch, never blocking: a full queue drops
//! the batch). One exporter thread posts them to the collector with short
//! timeouts. A collector that is slow or down costs dropped spans, never a
//! slower or failed request.
//!
//! W3C `traceparent` headers are honoured: a request that carries one
//! becomes a child span of the caller's trace.

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use serde_json::json;
use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One finished request.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_span_id: Option<u64>,
    pub name: &'static str,
    pub method: &'static str,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub status: u16,
    pub shard: usize,
}

/// Spans buffered on a core before they are handed to the exporter.
const CORE_BATCH: usize = 128;
/// Batches waiting for the exporter; more are dropped.
const QUEUE_BATCHES: usize = 64;

/// Where spans go: `http://host:port[/base]` + `/v1/traces`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host_header: String,
    pub addr: SocketAddr,
    pub path: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("tracing.otlp_endpoint {url:?}: only http:// collectors are supported (run a local collector)")
        })?;
        let (hostport, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let hostport_full = if hostport.contains(':') && !hostport.ends_with(']') {
            hostport.to_string()
        } else {
            format!("{hostport}:4318")
        };
        let addr = hostport_full
            .to_socket_addrs()
            .map_err(|e| format!("tracing.otlp_endpoint {url:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("tracing.otlp_endpoint {url:?}: no address"))?;
        Ok(Endpoint {
            host_header: hostport.to_string(),
            addr,
            path: format!("{base}/v1/traces"),
        })
    }
}

/// Starts the exporter thread; returns the sender cores hand batches to.
pub fn start(service_name: String, endpoint: Endpoint) -> Sender<Vec<SpanRecord>> {
    let (tx, rx) = bounded(QUEUE_BATCHES);
    let spawned = std::thread::Builder::new()
        .name("themis-otlp".into())
        .spawn(move || export_loop(rx, service_name, endpoint));
    if let Err(e) = spawned {
        tracing::error!("cannot start the OTLP exporter thread: {e}");
    }
    tx
}

fn export_loop(rx: Receiver<Vec<SpanRecord>>, service: String, endpoint: Endpoint) {
    let mut pending: Vec<SpanRecord> = Vec::new();
    let mut last_flush = Instant::now();
    let mut last_warning: Option<Instant> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(batch) => pending.extend(batch),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                if !pending.is_empty() {
                    let _ = post(&endpoint, &encode(&service, &pending));
                }
                return;
            }
        }
        if pending.len() >= 512
            || (!pending.is_empty() && last_flush.elapsed() >= Duration::from_secs(1))
        {
            let body = encode(&service, &pending);
            if let Err(e) = post(&endpoint, &body) {
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(
                        endpoint = %endpoint.addr,
                        "OTLP export failed ({e}); dropping {} spans",
                        pending.len()
                    );
                    last_warning = Some(Instant::now());
                }
            }
            pending.clear();
            last_flush = Instant::now();
        }
    }
}

/// OTLP/JSON `ExportTraceServiceRequest`.
pub fn encode(service: &str, spans: &[SpanRecord]) -> Vec<u8> {
    let spans: Vec<_> = spans
        .iter()
        .map(|s| {
            let mut span = json!({
                "traceId": format!("{:032x}", s.trace_id),
                "spanId": format!("{:016x}", s.span_id),
                "name": s.name,
                "kind": 2,
                "startTimeUnixNano": s.start_unix_nanos.to_string(),
                "endTimeUnixNano": s.end_unix_nanos.to_string(),
                "attributes": [
                    {"key": "http.request.method", "value": {"stringValue": s.method}},
                    {"key": "http.route", "value": {"stringValue": s.name}},
                    {"key": "http.response.status_code", "value": {"intValue": s.status.to_string()}},
                    {"key": "themis.shard", "value": {"intValue": s.shard.to_string()}},
                ],
                "status": {"code": if s.status >= 500 { 2 } else { 0 }},
            });
            if let Some(p) = s.parent_span_id {
                span["parentSpanId"] = json!(format!("{p:016x}"));
            }
            span
        })
        .collect();
    let body = json!({
        "resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": service}},
                {"key": "service.version", "value": {"stringValue": crate::VERSION}},
            ]},
            "scopeSpans": [{"scope": {"name": "themis", "version": crate::VERSION}, "spans": spans}],
        }]
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

fn post(ep: &Endpoint, body: &[u8]) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&ep.addr, Duration::from_millis(500))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        ep.path,
        ep.host_header,
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(body).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(_)) = resp.parse(&buf[..n]) {
            let code = resp.code.unwrap_or(0);
            return if (200..300).contains(&code) {
                Ok(())
            } else {
                Err(format!("collector answered {code}"))
            };
        }
        if n == buf.len() {
            return Err("response head too large".into());
        }
        let m = s.read(&mut buf[n..]).map_err(|e| e.to_string())?;
        if m == 0 {
            return Err("collector closed the connection".into());
        }
        n += m;
    }
}

/// Parses a W3C `traceparent` header: `00-<trace id>-<parent id>-<flags>`.
pub fn parse_traceparent(v: &[u8]) -> Option<(u128, u64)> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let mut parts = s.split('-');
    let (_ver, trace, parent) = (parts.next()?, parts.next()?, parts.next()?);
    if trace.len() != 32 || parent.len() != 16 {
        return None;
    }
    let t = u128::from_str_radix(trace, 16).ok()?;
    let p = u64::from_str_radix(parent, 16).ok()?;
    (t != 0 && p != 0).then_some((t, p))
}

/// Nanoseconds since the Unix epoch.
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One core's span buffer and id generator.
pub struct CoreSpans {
    tx: Sender<Vec<SpanRecord>>,
    buf: RefCell<Vec<SpanRecord>>,
    rng: Cell<u64>,
}

impl CoreSpans {
    pub fn new(tx: Sender<Vec<SpanRecord>>, shard: usize) -> CoreSpans {
        let seed = unix_nanos(SystemTime::now()) ^ ((shard as u64 + 1) << 48) | 1;
        CoreSpans {
            tx,
            buf: RefCell::new(Vec::with_capacity(CORE_BATCH)),
            rng: Cell::new(seed),
        }
    }

    /// xorshift64*: ids need to be unique-ish, not secret.
    pub fn next_id(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1
    }

    pub fn push(&self, span: SpanRecord) {
        let full = {
            let mut b = self.buf.borrow_mut();
            b.push(span);
            b.len() >= CORE_BATCH
        };
        if full {
            self.flush();
        }
    }

    /// Hands the buffered spans to the exporter (dropped if its queue is full).
    pub fn flush(&self) {
        let batch = std::mem::take(&mut *self.buf.borrow_mut());
        if batch.is_empty() {
            return;
        }
        if let Err(TrySendError::Full(_)) = self.tx.try_send(batch) {
            tracing::debug!("OTLP queue full; spans dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:4318").unwrap();
        assert_eq!(e.path, "/v1/traces");
        assert_eq!(e.addr.port(), 4318);
        let e = Endpoint::parse("http://127.0.0.1/otlp/").unwrap();
        assert_eq!((e.addr.port(), e.path.as_str()), (4318, "/otlp/v1/traces"));
        assert!(Endpoint::parse("https://x:4318").is_err());
    }

    #[test]
    fn traceparent() {
        let (t, p) =
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(p, 0x00f067aa0ba902b7);
        assert!(parse_traceparent(b"00-xyz-00f067aa0ba902b7-01").is_none());
        assert!(
            parse_traceparent(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
    }

    #[test]
    fn encoding_is_otlp_json() {
        let s = SpanRecord {
            trace_id: 1,
            span_id: 2,
            parent_span_id: Some(3),
            name: "GET /health",
            method: "GET",
            start_unix_nanos: 10,
            end_unix_nanos: 20,
            status: 200,
            shard: 0,
        };
        let v: serde_json::Value = serde_json::from_slice(&encode("svc", &[s])).unwrap();
        let rs = &v["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0]["value"]["stringValue"],
            "svc"
        );
        let span = &rs["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "00000000000000000000000000000001");
        assert_eq!(span["parentSpanId"], "0000000000000003");
        assert_eq!(span["startTimeUnixNano"], "10");
    }
}
