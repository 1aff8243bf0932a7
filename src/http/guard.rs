//! The checks a request passes before its route runs, on the core that
//! received it (so a forwarded call never needs to carry who asked):
//!
//! 1. `Host` is in `server.allowed_hosts` when that list is set (421
//!    otherwise): a page that re-points its own name at this server (DNS
//!    rebinding) cannot talk to it. `/health` is exempt, for probes that
//!    address the server by IP.
//! 2. The API key and its role and tables ([`super::auth`]) when
//!    `server.enable_auth` is on (401/403).
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

use super::auth::{self, AuthSettings, Grant};
use super::routes::{Role, Route};
use crate::error::ApiError;
use crate::obs::counters::{bump, CoreCounters};
use themis_io::Request;

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
    counters: &CoreCounters,
) -> Result<Grant<'s>, ApiError> {
    if route.role != Role::Public && !auth.host_allowed(req.header("host")) {
        let host = req
            .header("host")
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .unwrap_or_default();
        return Err(ApiError::MisdirectedRequest(host));
    }
    let grant = if auth.enabled {
        auth::check(auth, route, req).inspect_err(|e| match e {
            ApiError::Unauthorized(_) => bump(&counters.auth_unauthorized, 1),
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
