//! `EVENT_ROUTES`: which job an event runs, by its type and subject.
//!
//! A comma list of `TYPE=JOB`, or `TYPE:PREFIX=JOB` for the events of that
//! type whose subject starts with PREFIX. A TYPE ending in `*` matches every
//! type that starts with the rest. The most specific route wins: an exact
//! type over a wildcard (a longer wildcard over a shorter one), then the
//! longest matching subject prefix over a route without one. Pub/Sub events
//! are routed by their `job` attribute instead, so their type has no route.

use super::PUBSUB_MESSAGE_PUBLISHED;

/// The default: every Cloud Storage object event runs `storage-object`.
pub const DEFAULT_ROUTES: &str = "google.cloud.storage.object.v1.*=storage-object";

/// Events: how they find their job.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Events")]
pub struct EventArgs {
    /// Which job an event (`POST /events`) runs: `TYPE=JOB`, or
    /// `TYPE:PREFIX=JOB` for subjects starting with PREFIX, comma-separated;
    /// a TYPE ending in `*` matches types starting with the rest. Pub/Sub
    /// events are routed by their `job` attribute instead.
    #[arg(long, env = "EVENT_ROUTES", default_value = DEFAULT_ROUTES)]
    pub event_routes: String,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRoute {
    /// The event type, or a prefix of types when it ended in `*`.
    pub event_type: String,
    /// Whether `event_type` is a prefix (written with a trailing `*`).
    pub wildcard: bool,
    /// Only subjects starting with this.
    pub subject_prefix: Option<String>,
    /// The job.
    pub job: String,
}

impl EventRoute {
    fn matches(&self, event_type: &str, subject: Option<&str>) -> bool {
        let type_matches = if self.wildcard {
            event_type.starts_with(&self.event_type)
        } else {
            event_type == self.event_type
        };
        type_matches
            && self
                .subject_prefix
                .as_deref()
                .is_none_or(|p| subject.is_some_and(|s| s.starts_with(p)))
    }

    /// Larger is more specific.
    fn specificity(&self) -> (bool, usize, usize) {
        (
            !self.wildcard,
            self.event_type.len(),
            self.subject_prefix.as_ref().map_or(0, |p| p.len() + 1),
        )
    }
}

/// Why `EVENT_ROUTES` cannot be used; the text names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("EVENT_ROUTES: {0}")]
pub struct RouteError(pub String);

/// The parsed routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventRoutes {
    routes: Vec<EventRoute>,
}

impl EventRoutes {
    /// Parses the `EVENT_ROUTES` syntax (empty: no routes).
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        let mut routes: Vec<EventRoute> = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let err = |why: &str| {
                RouteError(format!(
                    "`{entry}` {why} (write TYPE=JOB or TYPE:PREFIX=JOB, e.g. google.cloud.storage.object.v1.finalized:objects/uploads/=storage-object)"
                ))
            };
            let (left, job) = entry.rsplit_once('=').ok_or_else(|| err("has no `=JOB`"))?;
            let job = job.trim();
            if job.is_empty() || job.contains(char::is_whitespace) {
                return Err(err("names no job"));
            }
            let (event_type, prefix) = match left.split_once(':') {
                Some((t, "")) => {
                    return Err(err(&format!("has an empty subject prefix after `{t}:`")));
                }
                Some((t, p)) => (t.trim(), Some(p.to_owned())),
                None => (left.trim(), None),
            };
            let (event_type, wildcard) = match event_type.strip_suffix('*') {
                Some(t) => (t, true),
                None => (event_type, false),
            };
            if event_type.is_empty() && !wildcard {
                return Err(err("names no event type"));
            }
            if event_type.contains(['*', ' ']) {
                return Err(err(
                    "has a `*` or a space inside its type (only a trailing `*` is allowed)",
                ));
            }
            if !wildcard && event_type == PUBSUB_MESSAGE_PUBLISHED {
                return Err(err(
                    "routes Pub/Sub events, which run the job their `job` attribute names",
                ));
            }
            let route = EventRoute {
                event_type: event_type.to_owned(),
                wildcard,
                subject_prefix: prefix,
                job: job.to_owned(),
            };
            if let Some(same) = routes.iter().find(|r| {
                (&r.event_type, r.wildcard, &r.subject_prefix)
                    == (&route.event_type, route.wildcard, &route.subject_prefix)
            }) {
                return Err(err(&format!(
                    "repeats a route already given (to `{}`); each type and prefix may have one job",
                    same.job
                )));
            }
            routes.push(route);
        }
        Ok(Self { routes })
    }

    /// The routes, in the order given.
    pub fn routes(&self) -> &[EventRoute] {
        &self.routes
    }

    /// The job for an event of `event_type` about `subject`, if any route
    /// takes it. Pub/Sub events never match here.
    pub fn route(&self, event_type: &str, subject: Option<&str>) -> Option<&str> {
        if event_type == PUBSUB_MESSAGE_PUBLISHED {
            return None;
        }
        self.routes
            .iter()
            .filter(|r| r.matches(event_type, subject))
            .max_by_key(|r| r.specificity())
            .map(|r| r.job.as_str())
    }

    /// Fails, naming the route, when a route names a job that `exists` does
    /// not know; `known` lists the jobs for the message.
    pub fn check_jobs(
        &self,
        exists: impl Fn(&str) -> bool,
        known: &[&str],
    ) -> Result<(), RouteError> {
        match self.routes.iter().find(|r| !exists(&r.job)) {
            None => Ok(()),
            Some(r) => Err(RouteError(format!(
                "the route for `{}{}` names job `{}`, which does not exist (the jobs are: {})",
                r.event_type,
                if r.wildcard { "*" } else { "" },
                r.job,
                known.join(", ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_route_wins() {
        let routes = EventRoutes::parse(
            "a.b.*=wild, a.b.c=exact, a.b.c:objects/=objects, a.b.c:objects/reports/=reports",
        )
        .unwrap();
        assert_eq!(routes.route("a.b.c", None), Some("exact"));
        assert_eq!(routes.route("a.b.c", Some("other")), Some("exact"));
        assert_eq!(routes.route("a.b.c", Some("objects/1")), Some("objects"));
        assert_eq!(
            routes.route("a.b.c", Some("objects/reports/1")),
            Some("reports")
        );
        assert_eq!(routes.route("a.b.d", Some("objects/1")), Some("wild"));
        assert_eq!(routes.route("a.c", None), None);
    }

    #[test]
    fn the_default_routes_storage_events() {
        let routes = EventRoutes::parse(DEFAULT_ROUTES).unwrap();
        assert_eq!(
            routes.route(
                "google.cloud.storage.object.v1.finalized",
                Some("objects/a")
            ),
            Some("storage-object")
        );
        assert_eq!(routes.route(PUBSUB_MESSAGE_PUBLISHED, None), None);
    }

    #[test]
    fn bad_routes_name_the_entry() {
        for (text, expect) in [
            ("a.b", "has no `=JOB`"),
            ("a.b=", "names no job"),
            ("=job", "names no event type"),
            ("a.b:=job", "empty subject prefix"),
            ("a*b=job", "inside its type"),
            ("a=j1,a=j2", "repeats a route"),
            (
                &format!("{PUBSUB_MESSAGE_PUBLISHED}=echo"),
                "`job` attribute",
            ),
        ] {
            let err = EventRoutes::parse(text).unwrap_err().to_string();
            assert!(err.starts_with("EVENT_ROUTES: "), "{text}: {err}");
            assert!(err.contains(expect), "{text}: {err}");
        }
        let routes = EventRoutes::parse("a=nope").unwrap();
        let err = routes
            .check_jobs(|j| j == "echo", &["echo"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`nope`") && err.contains("echo"), "{err}");
    }
}
