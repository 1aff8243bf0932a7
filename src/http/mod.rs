//! The HTTP face of a core: the route table, the dispatcher, and the
//! operational endpoints.
//!
//! * [`routes`]: what a route is (method, path, role, label) and how a
//!   request finds its route; every feature exports its own rows.
//! * [`dispatch`]: the `Handler` a core's connections call — table, then
//!   the one `match` on the route id, then metrics and spans.
//! * [`auth`]: API keys and roles, checked against each route's row.
//! * [`guard`]: the checks before any route runs: `Host` allow-list,
//!   the failed-key limit, auth, and `Content-Type` of bodies (cross-site
//!   protections).
//! * [`limiter`]: the per-core table of peer addresses that presented
//!   refused keys (429 after `server.auth_failure_limit`).
//! * [`body`]: a JSON request body with only known fields.
//! * [`ops`]: `/health`, `/stats`, `/metrics`, `/config`.
//! * [`shards`]: `/shards`, the key → core mapping for shard-aware
//!   clients.
//!
//! Errors are [`crate::error::ApiError`]s, turned into HTTP in one place.

pub mod auth;
pub mod body;
pub mod dispatch;
pub mod guard;
pub mod limiter;
pub mod ops;
pub mod routes;
pub mod shards;
