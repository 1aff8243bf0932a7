//! Property tests of request parsing and framing, through the real
//! connection loop (`serve_connection`) over an in-memory transport whose
//! reads return the input cut at chosen points, then end of stream.
//!
//! * arbitrary bytes (and valid requests followed by junk or with a byte
//!   changed) never panic: every handled request gets one 200, in order,
//!   and a refused one gets exactly one 4xx/5xx, last, with
//!   `Connection: close`;
//! * a valid request gives the same parse (method, path, query, headers,
//!   body) and the same answer whatever the read chunking, every single cut
//!   point included;
//! * pipelined valid requests are all parsed as sent and answered in order,
//!   and nothing after a `Connection: close` request is handled.
//!
//! The transport never blocks, so each connection runs to completion in one
//! poll (asserted): no timers fire, nothing depends on timing.

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::LocalExecutorBuilder;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngAlgorithm, TestRng, TestRunner};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use themis_io::connection::ProtocolError;
use themis_io::{
    serve_connection, ConnectionLimits, Handler, Method, PeerIdentity, Request, Response,
    ShutdownSignal, StreamOut, Transport,
};

/// Reads return the scripted pieces (split further when the buffer is
/// smaller), then end of stream; writes are collected.
struct Script {
    reads: VecDeque<Vec<u8>>,
    written: Vec<u8>,
}

impl AsyncRead for Script {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let Some(mut piece) = self.reads.pop_front() else {
            return Poll::Ready(Ok(0));
        };
        let n = piece.len().min(buf.len());
        buf[..n].copy_from_slice(&piece[..n]);
        if n < piece.len() {
            piece.drain(..n);
            self.reads.push_front(piece);
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Script {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Transport for &mut Script {
    fn peer(&self) -> PeerIdentity {
        PeerIdentity::default()
    }
}

/// What the handler saw of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: Method,
    path: String,
    query: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// Records every request and answers it `200` with `X-Seq: <its index>`
/// and no body; protocol errors are recorded and answered as the server
/// maps them.
#[derive(Default)]
struct Recorder {
    seen: RefCell<Vec<Seen>>,
    errors: RefCell<Vec<ProtocolError>>,
}

fn error_status(err: ProtocolError) -> u16 {
    match err {
        ProtocolError::Malformed(_) => 400,
        ProtocolError::HeadTooLarge => 431,
        ProtocolError::BodyTooLarge { .. } => 413,
        ProtocolError::UnsupportedTransferEncoding => 501,
    }
}

impl<T: Transport> Handler<T> for Recorder {
    type Stream = ();
    type Conn = ();

    async fn handle(
        &self,
        _conn: &mut (),
        req: &Request<'_>,
        resp: &mut Response<'_>,
    ) -> Option<()> {
        let mut seen = self.seen.borrow_mut();
        seen.push(Seen {
            method: req.method,
            path: req.path.to_string(),
            query: req.query.to_string(),
            headers: req
                .headers
                .iter()
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect(),
            body: req.body.to_vec(),
        });
        let seq = (seen.len() - 1).to_string();
        resp.start(200, "text/plain", 0, &[("X-Seq", &seq)]);
        None
    }

    fn protocol_error(&self, err: ProtocolError, resp: &mut Response<'_>) {
        self.errors.borrow_mut().push(err);
        resp.close_connection();
        resp.send(error_status(err), "text/plain", b"protocol");
    }

    async fn stream(&self, _state: (), _out: &mut StreamOut<'_, T>) {}
}

/// One response read back from the output.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    seq: Option<usize>,
    close: bool,
    body: Vec<u8>,
}

/// Splits the output into responses, skipping `100 Continue`; fails on
/// anything that is not a complete response.
fn answers(mut out: &[u8]) -> Result<Vec<Answer>, String> {
    let mut v = Vec::new();
    while !out.is_empty() {
        if let Some(rest) = out.strip_prefix(b"HTTP/1.1 100 Continue\r\n\r\n".as_slice()) {
            out = rest;
            continue;
        }
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut headers);
        let n = match r.parse(out) {
            Ok(httparse::Status::Complete(n)) => n,
            other => return Err(format!("bad response {other:?}: {out:?}")),
        };
        let find = |name: &str| {
            r.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let len: usize = find("content-length")
            .ok_or("no Content-Length")?
            .parse()
            .map_err(|e| format!("{e}"))?;
        if out.len() < n + len {
            return Err("truncated body".into());
        }
        v.push(Answer {
            status: r.code.unwrap_or(0),
            seq: find("x-seq").map(|s| s.parse().expect("seq")),
            close: find("connection").as_deref() == Some("close"),
            body: out[n..n + len].to_vec(),
        });
        out = &out[n + len..];
    }
    Ok(v)
}

/// The result of serving one connection.
#[derive(Debug)]
struct Served {
    seen: Vec<Seen>,
    errors: Vec<ProtocolError>,
    answers: Vec<Answer>,
}

/// Serves `input` delivered as the reads ending at `cuts`, then end of
/// stream. Must run inside a glommio executor.
fn serve(input: &[u8], cuts: &[usize], limits: &ConnectionLimits) -> Result<Served, TestCaseError> {
    let mut reads = VecDeque::new();
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&input.len())) {
        if c > at {
            reads.push_back(input[at..c].to_vec());
            at = c;
        }
    }
    let mut script = Script {
        reads,
        written: Vec::new(),
    };
    let handler = Recorder::default();
    let shutdown = ShutdownSignal::new();
    let done = futures_lite::future::block_on(futures_lite::future::poll_once(serve_connection(
        &mut script,
        &handler,
        limits,
        &shutdown,
    )));
    match done {
        Some(Ok(())) => {}
        Some(Err(e)) => return Err(TestCaseError::fail(format!("serve failed: {e}"))),
        None => {
            return Err(TestCaseError::fail(
                "the connection waited although every read was ready",
            ))
        }
    }
    Ok(Served {
        seen: handler.seen.into_inner(),
        errors: handler.errors.into_inner(),
        answers: answers(&script.written).map_err(TestCaseError::fail)?,
    })
}

/// The invariants every connection keeps, whatever it was sent: one `200`
/// per handled request, in order; at most one protocol error, answered
/// last with its 4xx/5xx and `Connection: close`; nothing after a close.
fn check_answers(s: &Served) -> Result<(), TestCaseError> {
    prop_assert!(s.errors.len() <= 1, "{:?}", s.errors);
    let oks = s.answers.iter().filter(|a| a.status == 200).count();
    prop_assert_eq!(oks, s.seen.len(), "one 200 per request: {:?}", s.answers);
    for (i, a) in s.answers.iter().enumerate() {
        let last = i + 1 == s.answers.len();
        if a.status == 200 {
            prop_assert_eq!(a.seq, Some(i), "answered out of order");
        } else {
            prop_assert!(last, "error answer not last: {:?}", s.answers);
            prop_assert!((400..600).contains(&a.status), "{:?}", a);
            prop_assert_eq!(Some(a.status), s.errors.first().map(|&e| error_status(e)));
            prop_assert_eq!(&a.body, b"protocol");
        }
        if a.close {
            prop_assert!(last, "answer after a close: {:?}", s.answers);
        }
    }
    if !s.errors.is_empty() {
        prop_assert!(
            s.answers.last().is_some_and(|a| a.status != 200 && a.close),
            "protocol error not answered: {:?}",
            s.answers
        );
    }
    Ok(())
}

fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    };
    TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &[0x17; 32]),
    )
}

/// Runs a property inside one glommio executor (the connection's timers
/// need one); a failure panics with the minimal input.
fn check<S>(
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError> + Send + 'static,
) where
    S: Strategy + Send + 'static,
    S::Value: std::fmt::Debug,
{
    let result = LocalExecutorBuilder::default()
        .spawn(move || async move {
            runner(cases)
                .run(&strategy, test)
                .map_err(|e| e.to_string())
        })
        .expect("executor starts")
        .join()
        .expect("executor");
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn cuts_of(len: usize, picks: &[prop::sample::Index]) -> Vec<usize> {
    if len < 2 {
        return Vec::new();
    }
    let mut cuts: Vec<usize> = picks.iter().map(|i| 1 + i.index(len - 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

fn picks() -> impl Strategy<Value = Vec<prop::sample::Index>> {
    prop::collection::vec(any::<prop::sample::Index>(), 0..24)
}

/// How a generated request frames its body.
#[derive(Debug, Clone)]
enum Framing {
    None,
    Length,
    /// Chunk sizes (cycled), an extension, trailers.
    Chunked(Vec<usize>, String, Vec<String>),
}

/// A valid request, and what the handler must see of it.
#[derive(Debug, Clone)]
struct Valid {
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    framing: Framing,
    /// Spelling of the framing header's name, and where it goes.
    framing_name_upper: bool,
    framing_at: prop::sample::Index,
    expect_continue: bool,
    close: bool,
    body: Vec<u8>,
}

impl Valid {
    /// The header list as sent (framing, `Expect` and `Connection` included).
    fn all_headers(&self) -> Vec<(String, String)> {
        let mut h = self.headers.clone();
        h.insert(0, ("Host".into(), "t".into()));
        let framing = match &self.framing {
            Framing::None => None,
            Framing::Length => Some(("Content-Length", self.body.len().to_string())),
            Framing::Chunked(..) => Some(("Transfer-Encoding", "chunked".to_string())),
        };
        if let Some((name, value)) = framing {
            let name = if self.framing_name_upper {
                name.to_ascii_uppercase()
            } else {
                name.to_ascii_lowercase()
            };
            h.insert(self.framing_at.index(h.len() + 1), (name, value));
        }
        if self.expect_continue {
            h.push(("Expect".into(), "100-continue".into()));
        }
        if self.close {
            h.push(("Connection".into(), "close".into()));
        }
        h
    }

    fn render(&self) -> Vec<u8> {
        let mut v = format!("{} {}", self.method, self.path).into_bytes();
        if let Some(q) = &self.query {
            v.push(b'?');
            v.extend_from_slice(q.as_bytes());
        }
        v.extend_from_slice(b" HTTP/1.1\r\n");
        for (n, val) in self.all_headers() {
            v.extend_from_slice(format!("{n}: {val}\r\n").as_bytes());
        }
        v.extend_from_slice(b"\r\n");
        match &self.framing {
            Framing::None => {}
            Framing::Length => v.extend_from_slice(&self.body),
            Framing::Chunked(sizes, ext, trailers) => {
                let mut rest = &self.body[..];
                let mut i = 0;
                while !rest.is_empty() {
                    let n = sizes[i % sizes.len()].min(rest.len());
                    v.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
                    v.extend_from_slice(&rest[..n]);
                    v.extend_from_slice(b"\r\n");
                    rest = &rest[n..];
                    i += 1;
                }
                v.extend_from_slice(b"0\r\n");
                for t in trailers {
                    v.extend_from_slice(format!("{t}\r\n").as_bytes());
                }
                v.extend_from_slice(b"\r\n");
            }
        }
        v
    }

    fn expected(&self) -> Seen {
        Seen {
            method: Method::parse(&self.method),
            path: self.path.clone(),
            query: self.query.clone().unwrap_or_default(),
            headers: self
                .all_headers()
                .into_iter()
                .map(|(n, v)| (n, v.into_bytes()))
                .collect(),
            body: self.body.clone(),
        }
    }
}

fn valid_request() -> impl Strategy<Value = Valid> {
    let method = prop_oneof![
        prop::sample::select(vec![
            "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"
        ])
        .prop_map(String::from),
        "[A-Z]{1,8}",
    ];
    let header = (
        "[A-Za-z][A-Za-z0-9-]{0,15}".prop_filter("framing headers are generated apart", |n| {
            ![
                "content-length",
                "transfer-encoding",
                "connection",
                "expect",
                "host",
            ]
            .contains(&n.to_ascii_lowercase().as_str())
        }),
        prop_oneof![Just(String::new()), "[!-~]([ -~]{0,30}[!-~])?"],
    );
    let framing = prop_oneof![
        Just(Framing::None),
        Just(Framing::Length),
        (
            prop::collection::vec(1usize..64, 1..5),
            prop_oneof![
                Just(String::new()),
                Just(";a=b".to_string()),
                Just(" ;x".to_string())
            ],
            prop::collection::vec("X-[A-Za-z]{1,6}: [a-z0-9]{0,8}", 0..2),
        )
            .prop_map(|(s, e, t)| Framing::Chunked(s, e, t)),
    ];
    (
        method,
        "/[A-Za-z0-9._~%/-]{0,30}",
        proptest::option::of("[A-Za-z0-9=&%+._-]{0,20}"),
        prop::collection::vec(header, 0..6),
        framing,
        any::<bool>(),
        any::<prop::sample::Index>(),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(
            |(method, path, query, headers, framing, upper, at, expect, body)| {
                let body = if matches!(framing, Framing::None) {
                    Vec::new()
                } else {
                    body
                };
                Valid {
                    method,
                    path,
                    query,
                    headers,
                    expect_continue: expect && !body.is_empty(),
                    framing,
                    framing_name_upper: upper,
                    framing_at: at,
                    close: false,
                    body,
                }
            },
        )
}

/// Limits small enough for arbitrary input to reach them.
fn small_limits() -> impl Strategy<Value = ConnectionLimits> {
    (16usize..1024, 0usize..512).prop_map(|(max_head, max_body)| ConnectionLimits {
        max_head,
        max_body,
        ..ConnectionLimits::default()
    })
}

#[test]
fn arbitrary_input_is_answered_or_refused() {
    let junk = prop::collection::vec(any::<u8>(), 0..400);
    let http_ish = prop::collection::vec(
        prop_oneof![
            prop::sample::select(b" :/\r\n\t0123456789abcdefGETPOSTHTP.;,-?=".to_vec()),
            prop::sample::select(vec![b'\0', 0x7f, 0x80, 0xff]),
        ],
        0..400,
    );
    // Valid requests, then junk.
    let valid_then_junk =
        (prop::collection::vec(valid_request(), 0..4), junk.clone()).prop_map(|(reqs, junk)| {
            let mut v: Vec<u8> = reqs.iter().flat_map(Valid::render).collect();
            v.extend_from_slice(&junk);
            v
        });
    // A valid request with one byte replaced.
    let mutated =
        (valid_request(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(req, at, b)| {
            let mut v = req.render();
            let i = at.index(v.len());
            v[i] = b;
            v
        });
    let input = prop_oneof![junk, http_ish, valid_then_junk, mutated];
    let limits = prop_oneof![Just(ConnectionLimits::default()), small_limits()];
    check(512, (input, picks(), limits), |(input, picks, limits)| {
        let cuts = cuts_of(input.len(), &picks);
        let s = serve(&input, &cuts, &limits)?;
        check_answers(&s)?;
        // Input whose first request httparse refuses gets exactly one
        // answer, an error, and reaches no handler.
        let mut headers = [httparse::EMPTY_HEADER; 64];
        if httparse::Request::new(&mut headers).parse(&input).is_err() {
            prop_assert!(s.seen.is_empty(), "{:?}", s.seen);
            prop_assert_eq!(s.answers.len(), 1, "{:?}", s.answers);
            prop_assert!(s.answers[0].status >= 400 && s.answers[0].close);
        }
        // The chunking never changes what was decided, except that a head
        // can be found too large before the byte that makes it malformed
        // arrives.
        let whole = serve(&input, &[], &limits)?;
        prop_assert_eq!(&s.seen, &whole.seen);
        prop_assert_eq!(s.errors.len(), whole.errors.len());
        if s.errors != whole.errors {
            prop_assert_eq!(&s.errors, &vec![ProtocolError::HeadTooLarge]);
        }
        Ok(())
    });
}

#[test]
fn a_valid_request_parses_the_same_over_any_split() {
    check(96, (valid_request(), picks()), |(req, picks)| {
        let input = req.render();
        let limits = ConnectionLimits::default();
        let whole = serve(&input, &[], &limits)?;
        prop_assert_eq!(&whole.errors, &Vec::new());
        prop_assert_eq!(&whole.seen, &vec![req.expected()]);
        check_answers(&whole)?;
        let mut splits: Vec<Vec<usize>> = (1..input.len()).map(|c| vec![c]).collect();
        splits.push(cuts_of(input.len(), &picks));
        // One byte per read.
        splits.push((1..input.len()).collect());
        for cuts in splits {
            let s = serve(&input, &cuts, &limits)?;
            prop_assert_eq!(&s.errors, &whole.errors, "cuts {:?}", cuts);
            prop_assert_eq!(&s.seen, &whole.seen, "cuts {:?}", cuts);
            prop_assert_eq!(&s.answers, &whole.answers, "cuts {:?}", cuts);
        }
        Ok(())
    });
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let reqs = (
        prop::collection::vec(valid_request(), 1..8),
        any::<bool>(),
        valid_request(),
    );
    check(
        256,
        (reqs, picks()),
        |((mut reqs, close_last, after), picks)| {
            // Optionally the last one closes: what follows it is never handled.
            if close_last {
                reqs.last_mut().expect("one request").close = true;
            }
            let mut input: Vec<u8> = reqs.iter().flat_map(Valid::render).collect();
            if close_last {
                input.extend_from_slice(&after.render());
            }
            let cuts = cuts_of(input.len(), &picks);
            let s = serve(&input, &cuts, &ConnectionLimits::default())?;
            check_answers(&s)?;
            prop_assert_eq!(&s.errors, &Vec::new());
            let expected: Vec<Seen> = reqs.iter().map(Valid::expected).collect();
            prop_assert_eq!(&s.seen, &expected);
            let seqs: Vec<Option<usize>> = s.answers.iter().map(|a| a.seq).collect();
            let want: Vec<Option<usize>> = (0..reqs.len()).map(Some).collect();
            prop_assert_eq!(seqs, want);
            prop_assert_eq!(s.answers.last().map(|a| a.close), Some(close_last));
            Ok(())
        },
    );
}
