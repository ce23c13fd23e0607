//! The extractors over [`crate::auth`]: a handler names who may call it by
//! taking one of these, and a refused caller never reaches its body.
//!
//! - [`Authenticated`]: any verified caller (`/auth/whoami`, `GET /jobs`);
//! - [`CanTrigger`]: may run jobs ([`Principal::check_trigger`]);
//! - [`CanPush`]: may deliver to the push routes ([`Principal::check_push`]);
//! - [`CanViewRuns`]: may read the run ledger ([`Principal::check_view_runs`]);
//! - [`CanControlRuns`]: may cancel and re-run runs
//!   ([`Principal::check_control_runs`]).

use std::sync::Arc;

use axum::{
    extract::{FromRef, FromRequestParts},
    http::request::Parts,
};

use super::{AppState, Error};
use crate::auth::Principal;

/// Any verified caller. Add this parameter to a handler to require
/// authentication; the handler then knows who called.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Arc<Principal>);

/// A caller allowed to run jobs (see [`Principal::check_trigger`]).
#[derive(Debug, Clone)]
pub struct CanTrigger(pub Arc<Principal>);

/// A caller allowed on the push routes (see [`Principal::check_push`]).
#[derive(Debug, Clone)]
pub struct CanPush(pub Arc<Principal>);

/// A caller allowed to read the run ledger (see
/// [`Principal::check_view_runs`]).
#[derive(Debug, Clone)]
pub struct CanViewRuns(pub Arc<Principal>);

/// A person allowed to cancel and re-run runs (see
/// [`Principal::check_control_runs`]).
#[derive(Debug, Clone)]
pub struct CanControlRuns(pub Arc<Principal>);

/// The principal of a request, once authenticated and admitted by `check`.
async fn admit(
    parts: &Parts,
    state: &AppState,
    check: impl FnOnce(&Principal, &AppState) -> Result<(), crate::auth::AuthError>,
) -> Result<Arc<Principal>, Error> {
    let principal = state.auth.authenticate(&parts.headers).await?;
    state.auth.authorize(&principal, check(&principal, state))?;
    Ok(principal)
}

/// Implements an extractor as [`admit`] with its check.
macro_rules! extractor {
    ($name:ident, $check:expr) => {
        impl<S> FromRequestParts<S> for $name
        where
            AppState: FromRef<S>,
            S: Send + Sync,
        {
            type Rejection = Error;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &S,
            ) -> Result<Self, Self::Rejection> {
                admit(parts, &AppState::from_ref(state), $check)
                    .await
                    .map(Self)
            }
        }
    };
}

extractor!(Authenticated, |_, _| Ok(()));
extractor!(CanTrigger, |p, state| p
    .check_trigger(&state.config.trigger));
extractor!(CanPush, |p, _| p.check_push());
extractor!(CanViewRuns, |p, state| p.check_view_runs(
    &state.config.trigger,
    &state.config.runs.view_permission
));
extractor!(CanControlRuns, |p, state| p
    .check_control_runs(&state.config.trigger));
