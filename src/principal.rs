//! Who a verified caller is: plain data, made by [`crate::auth`] and read by
//! the layers below it (the jobs see it in their context, the ledger records
//! its kind and id), which need not know how a token is checked.

use std::collections::BTreeSet;

use serde::Serialize;

/// A verified caller.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Principal {
    /// A Google service identity (Pub/Sub push, Scheduler, Tasks).
    Google(GoogleIdentity),
    /// A person signed in with Clerk.
    Clerk(ClerkUser),
}

/// A Google service identity.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct GoogleIdentity {
    /// The service account's email.
    pub email: String,
    /// The token's `sub` (the account's unique id).
    pub subject: String,
    /// The accepted audience the token was minted for.
    pub audience: String,
}

/// A Clerk user's session.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ClerkUser {
    /// `sub`: `user_…`.
    pub user_id: String,
    /// `sid`: `sess_…`.
    pub session_id: String,
    /// `azp`: the origin that minted the token.
    pub authorized_party: String,
    /// The active organization, if any.
    pub organization: Option<Organization>,
}

/// The active organization of a Clerk session, from v1 or v2 claims.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Organization {
    /// `org_…`.
    pub id: String,
    /// The organization's slug.
    pub slug: Option<String>,
    /// The role, with its `org:` prefix (`org:admin`).
    pub role: Option<String>,
    /// Permissions, `org:<feature>:<perm>`.
    pub permissions: BTreeSet<String>,
}

impl Principal {
    /// `google` or `clerk`, for logs and run records.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Google(_) => "google",
            Self::Clerk(_) => "clerk",
        }
    }

    /// The caller's id: an email or a Clerk user id. Never a token.
    pub fn id(&self) -> &str {
        match self {
            Self::Google(g) => &g.email,
            Self::Clerk(c) => &c.user_id,
        }
    }
}
