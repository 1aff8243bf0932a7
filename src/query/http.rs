//! `POST /query`.

use crate::error::ApiError;
use crate::http::routes::{PathPattern, Role, Route, RouteId, Tables};
use crate::node::Core;
use themis_io::{Method, Request, Response};

/// The query route.
pub const ROUTES: &[Route] = &[Route {
    id: RouteId::Query,
    methods: &[Method::Post],
    path: PathPattern::Exact("/query"),
    role: Role::Read,
    tables: Tables::BodyTable,
    label: "POST /query",
}];

/// `POST /query`: parse, plan, execute, answer.
pub async fn query(
    core: &Core,
    req: &Request<'_>,
    resp: &mut Response<'_>,
) -> Result<(), ApiError> {
    let q = super::parse(req.body)?;
    let body = super::exec::execute(core, q).await?;
    resp.json(200, &body);
    Ok(())
}
