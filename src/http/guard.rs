//! The checks a request passes before its route runs, on the core that
//! received it (so a forwarded call never needs to carry who asked):
//!
//! 1. `Host` is in `server.allowed_hosts` when that list is set (421
//!    otherwise): a page that re-points its own name at this server (DNS
//!    rebinding) cannot talk to it. `/health` is exempt, for probes that
//!    address the server by IP.
//! 2. The API key and its role and tables ([`super::auth`]) when
//!    `server.enable_auth` is on (401/403), resolved through the
//!    connection's [`KeyCache`]. Before it, on routes that need a key, the
//!    core's [`FailureLimiter`]: a peer address that presented too many
//!    refused keys gets 429 with `Retry-After` (`server.auth_failure_limit`).
//! 3. A request with a body must say `Content-Type: application/json`
//!    (415): a browser sends a cross-site request without asking the
//!    server first only when its type is form or text, so no web page can
//!    make a visitor's browser write to this server. The one exception is
//!    InfluxDB line protocol (`POST /api/v2/write`), which its clients send
//!    as `text/plain`: with auth off a web page could add time-series
//!    points through it (never read or delete anything); with auth on the
//!    key header it needs cannot be sent cross-site without the server's
//!    consent (docs/security.md).
//!
//! With auth off and no allow-list, this is two branches and a header
//! lookup for requests with a body.

use super::auth::{self, AuthSettings, Grant, KeyCache};
use super::limiter::FailureLimiter;
use super::routes::{Role, Route};
use crate::error::ApiError;
use crate::obs::counters::{bump, CoreCounters};
use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};
use themis_io::Request;

/// What the guard keeps per core: the failed-key limiter.
#[derive(Default)]
pub struct CoreGuard {
    failures: RefCell<FailureLimiter>,
    /// Lockout log lines: (window start, lines in it).
    log_budget: Cell<(Option<Instant>, u32)>,
}

impl CoreGuard {
    /// Logs a lockout, at most 10 lines a second per core (the counter
    /// counts them all). Names the address, never the key.
    fn log_lockout(&self, shard: usize, req: &Request<'_>, lockout: Duration, now: Instant) {
        let (start, lines) = match self.log_budget.get() {
            (Some(s), n) if now.saturating_duration_since(s) < Duration::from_secs(1) => (s, n + 1),
            _ => (now, 1),
        };
        self.log_budget.set((Some(start), lines));
        if lines <= 10 {
            let peer = req
                .peer
                .addr
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            tracing::warn!(
                shard,
                %peer,
                "too many failed API keys from {peer}: refused 429 for {} s (server.auth_failure_limit)",
                lockout.as_secs()
            );
        }
    }
}

/// The per-core and per-connection state [`admit`] uses.
pub struct Context<'a> {
    pub counters: &'a CoreCounters,
    pub guard: &'a CoreGuard,
    /// This connection's key cache.
    pub keys: &'a mut KeyCache,
    /// When the request started (the dispatcher's clock read).
    pub now: Instant,
    pub shard: usize,
}

/// Whether `Content-Type` is `application/json` (parameters such as
/// `charset` allowed, case-insensitive).
fn is_json(content_type: Option<&[u8]>) -> bool {
    let Some(v) = content_type else {
        return false;
    };
    let media = v.split(|b| *b == b';').next().unwrap_or(b"").trim_ascii();
    media.eq_ignore_ascii_case(b"application/json")
}

/// Whether `route` takes a body of this type: JSON everywhere; line
/// protocol (`text/plain`, or none) on `POST /api/v2/write`.
fn accepts(route: &Route, content_type: Option<&[u8]>) -> bool {
    if is_json(content_type) {
        return true;
    }
    route.id == super::routes::RouteId::TsWrite
        && content_type.is_none_or(|v| {
            let media = v.split(|b| *b == b';').next().unwrap_or(b"").trim_ascii();
            media.eq_ignore_ascii_case(b"text/plain")
        })
}

/// Admits `req` to `route`, or says why not.
#[inline]
pub fn admit<'s>(
    auth: &'s AuthSettings,
    route: &Route,
    req: &Request<'_>,
    cx: Context<'_>,
) -> Result<Grant<'s>, ApiError> {
    let counters = cx.counters;
    if route.role != Role::Public && auth.has_host_list() && !auth.host_allowed(req.header("host"))
    {
        let host = req
            .header("host")
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .unwrap_or_default();
        return Err(ApiError::MisdirectedRequest(host));
    }
    let grant = if auth.enabled {
        let ip = req.peer.addr.map(|a| a.ip());
        let limiter = &cx.guard.failures;
        // With the limit off (0) no lockout applies, old ones included: the
        // way to lift them at once.
        if auth.failure_limit.max_failures > 0
            && !limiter.borrow().quiet()
            && auth.needed(route) != Role::Public
        {
            if let Some(left) = limiter.borrow_mut().locked(ip, cx.now) {
                bump(&counters.auth_rate_limited, 1);
                let retry_after_s = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                return Err(ApiError::TooManyAuthFailures { retry_after_s });
            }
        }
        auth::check(auth, cx.keys, route, req).inspect_err(|e| match e {
            ApiError::Unauthorized(_) => {
                bump(&counters.auth_unauthorized, 1);
                if auth::presented(req).is_some_and(|k| !k.is_empty()) {
                    bump(&counters.auth_failures, 1);
                    let limit = &auth.failure_limit;
                    if limiter.borrow_mut().failed(ip, cx.now, limit) {
                        bump(&counters.auth_lockouts, 1);
                        cx.guard.log_lockout(cx.shard, req, limit.lockout, cx.now);
                    }
                }
            }
            ApiError::Forbidden(_) => bump(&counters.auth_forbidden, 1),
            _ => {}
        })?
    } else {
        Grant::default()
    };
    if !req.body.is_empty() && !accepts(route, req.header("content-type")) {
        return Err(ApiError::UnsupportedMediaType);
    }
    Ok(grant)
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_content_types() {
        assert!(is_json(Some(b"application/json")));
        assert!(is_json(Some(b"Application/JSON; charset=utf-8")));
        assert!(is_json(Some(b" application/json ;x=y")));
        for bad in [
            &b"text/plain"[..],
            b"application/x-www-form-urlencoded",
            b"multipart/form-data; boundary=x",
            b"application/jsonx",
            b"",
        ] {
            assert!(!is_json(Some(bad)), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(!is_json(None));
    }
}
