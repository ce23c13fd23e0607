//! The Terraform in `infra/` agrees with itself and with the worker.
//!
//! A deployment where the push subscription's OIDC audience is not in
//! `GOOGLE_AUDIENCES`, or its service account not in `GOOGLE_SERVICE_ACCOUNTS`,
//! applies cleanly and then answers every push 401, which Pub/Sub quietly
//! retries into the dead-letter topic. Terraform cannot see that (its providers
//! are not even available here), so these tests parse the `.tf` files with
//! `hcl-rs` and check the wiring: expressions are compared structurally, and
//! numbers are evaluated with the variables' defaults. The environment
//! variables the worker accepts come from the real binary's `serve --help`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use hcl::{
    Block, Body, Expression, Map, Value,
    eval::{Context, Evaluate, FuncArgs, FuncDef, ParamType},
    expr::TraversalOperator,
};

/// Seconds between the job timeout and the push request's timeout (the ack
/// deadline): the worker cancels the job, answers 504, and that answer must
/// reach Pub/Sub before Pub/Sub gives up on the request.
const ACK_MARGIN_SECS: f64 = 5.0;

/// Cloud Run's request timeout when `template.timeout` is not set.
const CLOUD_RUN_DEFAULT_TIMEOUT_SECS: f64 = 300.0;

/// Pub/Sub's ack deadline when `ack_deadline_seconds` is not set.
const PUBSUB_DEFAULT_ACK_DEADLINE_SECS: f64 = 10.0;

// --- Loading -------------------------------------------------------------------

fn infra_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("infra")
}

/// Every `infra/*.tf` file, parsed and merged into one body (Terraform reads a
/// module's files as one).
fn load() -> Body {
    let dir = infra_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "tf"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .tf files in {}", dir.display());
    let mut merged = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let body = hcl::parse(&text)
            .unwrap_or_else(|e| panic!("{} is not valid HCL: {e}", file.display()));
        merged.extend(body.into_inner());
    }
    Body(merged)
}

// --- Navigation ----------------------------------------------------------------

fn labels(block: &Block) -> Vec<&str> {
    block.labels().iter().map(|l| l.as_str()).collect()
}

/// `resource "TYPE" "NAME"` blocks of one type, with their names.
fn resources<'a>(body: &'a Body, rtype: &str) -> Vec<(&'a str, &'a Block)> {
    body.blocks()
        .filter(|b| b.identifier() == "resource")
        .filter_map(|b| match b.labels() {
            [t, name] if t.as_str() == rtype => Some((name.as_str(), b)),
            _ => None,
        })
        .collect()
}

fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes()
        .find(|a| a.key.as_str() == key)
        .map(|a| &a.expr)
}

fn child<'a>(body: &'a Body, ident: &str) -> Option<&'a Block> {
    body.blocks().find(|b| b.identifier() == ident)
}

/// Follows nested blocks, e.g. `["push_config", "oidc_token"]`.
fn path<'a>(block: &'a Block, idents: &[&str]) -> Option<&'a Block> {
    idents
        .iter()
        .try_fold(block, |b, ident| child(b.body(), ident))
}

fn locals(body: &Body) -> BTreeMap<String, &Expression> {
    body.blocks()
        .filter(|b| b.identifier() == "locals")
        .flat_map(|b| b.body().attributes())
        .map(|a| (a.key.to_string(), &a.expr))
        .collect()
}

/// `type.name` when `expr` is a traversal such as `google_pubsub_topic.dead.id`.
fn resource_address(expr: &Expression) -> Option<String> {
    let Expression::Traversal(t) = expr else {
        return None;
    };
    let Expression::Variable(root) = &t.expr else {
        return None;
    };
    match t.operators.first() {
        Some(TraversalOperator::GetAttr(name))
            if root.as_str() != "local" && root.as_str() != "var" =>
        {
            Some(format!("{}.{}", root.as_str(), name.as_str()))
        }
        _ => None,
    }
}

/// Whether two expressions name the same thing: equal, or attributes of the
/// same resource (`topic.x.id` and `topic.x.name` both name topic x).
fn same_thing(a: &Expression, b: &Expression) -> bool {
    a == b || matches!((resource_address(a), resource_address(b)), (Some(x), Some(y)) if x == y)
}

/// The items of a comma-list environment value: `join(",", [a, b])` gives
/// `a` and `b`; any other expression is a list of itself.
fn list_items<'a>(env_name: &str, expr: &'a Expression) -> Vec<&'a Expression> {
    if let Expression::FuncCall(call) = expr
        && call.name.name.as_str() == "join"
    {
        assert_eq!(
            call.args.first(),
            Some(&Expression::String(",".to_owned())),
            "{env_name} is joined with `{}`, but the worker splits it on commas",
            call.args
                .first()
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        return match call.args.get(1) {
            Some(Expression::Array(items)) => items.iter().collect(),
            Some(other) => vec![other],
            None => panic!("{env_name}: join() without a list"),
        };
    }
    vec![expr]
}

fn show(items: &[&Expression]) -> String {
    items
        .iter()
        .map(|e| format!("`{e}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

// --- The Cloud Run service -------------------------------------------------------

/// One environment variable of the container.
struct EnvVar<'a> {
    name: String,
    /// The `value` expression of a plain `env` block (a dynamic block's value
    /// is its iterator, so it is not recorded).
    value: Option<&'a Expression>,
}

/// The one Cloud Run service: its name and block.
fn service(body: &Body) -> (&str, &Block) {
    let services = resources(body, "google_cloud_run_v2_service");
    assert_eq!(
        services.len(),
        1,
        "expected exactly one google_cloud_run_v2_service in infra/, found {}",
        services.len()
    );
    services[0]
}

/// Every environment variable set on the service's containers, from `env`
/// blocks and from `dynamic "env"` blocks (their `content`).
fn service_env(body: &Body) -> Vec<EnvVar<'_>> {
    let (name, svc) = service(body);
    let template = child(svc.body(), "template")
        .unwrap_or_else(|| panic!("google_cloud_run_v2_service.{name} has no template block"));
    let mut vars = Vec::new();
    for container in template
        .body()
        .blocks()
        .filter(|b| b.identifier() == "containers")
    {
        for block in container.body().blocks() {
            let (env_body, dynamic) = match (block.identifier(), labels(block).as_slice()) {
                ("env", _) => (block.body(), false),
                ("dynamic", ["env"]) => (
                    child(block.body(), "content")
                        .expect("a dynamic \"env\" block has a content block")
                        .body(),
                    true,
                ),
                _ => continue,
            };
            let name = match attr(env_body, "name") {
                Some(Expression::String(s)) => s.clone(),
                other => panic!(
                    "an env block of google_cloud_run_v2_service.{name} has a name that is not a literal string ({other:?}): the test cannot check it against the worker"
                ),
            };
            let value = if dynamic {
                None
            } else {
                attr(env_body, "value")
            };
            vars.push(EnvVar { name, value });
        }
    }
    vars
}

/// The `value` of a plain (not dynamic) env block named `name`.
fn env_value<'a>(body: &'a Body, name: &str) -> &'a Expression {
    let env = service_env(body);
    let var = env
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("the Cloud Run service does not set {name}"));
    var.value.unwrap_or_else(|| {
        panic!("{name} must be a plain `env {{ name, value }}` block (not dynamic, not a secret) so its value can be checked")
    })
}

// --- Evaluation with the variables' defaults ---------------------------------------

fn number_arg(args: &FuncArgs, i: usize) -> Result<f64, String> {
    args.get(i)
        .and_then(Value::as_f64)
        .ok_or_else(|| format!("argument {i} is not a number"))
}

fn tf_tostring(args: FuncArgs) -> Result<Value, String> {
    match &args[0] {
        Value::String(s) => Ok(Value::String(s.clone())),
        Value::Number(n) => Ok(Value::String(n.to_string())),
        Value::Bool(b) => Ok(Value::String(b.to_string())),
        other => Err(format!("tostring: unsupported `{other}`")),
    }
}

fn tf_max(args: FuncArgs) -> Result<Value, String> {
    let mut best = f64::MIN;
    for i in 0..args.len() {
        best = best.max(number_arg(&args, i)?);
    }
    Ok(Value::from(best))
}

fn tf_min(args: FuncArgs) -> Result<Value, String> {
    let mut best = f64::MAX;
    for i in 0..args.len() {
        best = best.min(number_arg(&args, i)?);
    }
    Ok(Value::from(best))
}

fn tf_coalesce(args: FuncArgs) -> Result<Value, String> {
    args.iter()
        .find(|v| !v.is_null() && v.as_str() != Some(""))
        .cloned()
        .ok_or_else(|| "coalesce: every argument is null or empty".to_owned())
}

/// `yamlencode`, as JSON: JSON is YAML, and the tests read it back with
/// serde_json.
fn tf_yamlencode(args: FuncArgs) -> Result<Value, String> {
    serde_json::to_string(&args[0])
        .map(Value::String)
        .map_err(|e| format!("yamlencode: {e}"))
}

/// A context where `var.X` is X's default (a placeholder for the required
/// ones), `local.X` is X where it can be evaluated from those, each Cloud Run
/// service has a `uri`, and the few Terraform functions the wiring uses exist.
fn defaults_context(body: &Body) -> Context<'static> {
    context_with(body, &[])
}

/// [`defaults_context`] with some variables set (`-var NAME=VALUE`).
fn context_with(body: &Body, overrides: &[(&str, Value)]) -> Context<'static> {
    let mut ctx = Context::new();
    ctx.declare_func(
        "yamlencode",
        FuncDef::builder()
            .param(ParamType::Any)
            .build(tf_yamlencode),
    );
    ctx.declare_func(
        "tostring",
        FuncDef::builder().param(ParamType::Any).build(tf_tostring),
    );
    ctx.declare_func(
        "max",
        FuncDef::builder()
            .variadic_param(ParamType::Number)
            .build(tf_max),
    );
    ctx.declare_func(
        "min",
        FuncDef::builder()
            .variadic_param(ParamType::Number)
            .build(tf_min),
    );
    ctx.declare_func(
        "coalesce",
        FuncDef::builder()
            .variadic_param(ParamType::Any)
            .build(tf_coalesce),
    );

    let mut vars = Map::new();
    for block in body.blocks().filter(|b| b.identifier() == "variable") {
        let name = labels(block)[0].to_owned();
        let value = match attr(block.body(), "default") {
            Some(expr) => expr
                .evaluate(&Context::new())
                .unwrap_or_else(|e| panic!("default of variable {name} does not evaluate: {e}")),
            None => Value::String(format!("<{name}>")),
        };
        vars.insert(name, value);
    }
    for (name, value) in overrides {
        assert!(
            vars.contains_key(*name),
            "no variable {name} in infra/ to set"
        );
        vars.insert((*name).to_owned(), value.clone());
    }
    ctx.declare_var("var", Value::Object(vars));

    let mut services = Map::new();
    for (name, _) in resources(body, "google_cloud_run_v2_service") {
        let mut attrs = Map::new();
        attrs.insert(
            "uri".to_owned(),
            Value::String(format!("https://{name}-abc123-ew.a.run.app")),
        );
        services.insert(name.to_owned(), Value::Object(attrs));
    }
    ctx.declare_var("google_cloud_run_v2_service", Value::Object(services));

    // Locals may use each other: a few passes settle every one that can be
    // evaluated without provider data.
    let mut known = Map::new();
    for _ in 0..3 {
        for (name, expr) in locals(body) {
            if let Ok(value) = expr.evaluate(&ctx) {
                known.insert(name, value);
            }
        }
        ctx.declare_var("local", Value::Object(known.clone()));
    }
    ctx
}

fn eval(ctx: &Context, what: &str, expr: &Expression) -> Value {
    expr.evaluate(ctx).unwrap_or_else(|e| {
        panic!("{what} = `{expr}` does not evaluate with the variables' defaults: {e} (if it uses a new function, teach defaults_context)")
    })
}

fn eval_secs(ctx: &Context, what: &str, expr: &Expression) -> f64 {
    match eval(ctx, what, expr) {
        Value::Number(n) => n.as_f64().expect("a finite number"),
        Value::String(s) => s
            .strip_suffix('s')
            .unwrap_or(&s)
            .parse()
            .unwrap_or_else(|_| panic!("{what} = `{expr}` evaluates to `{s}`, not seconds")),
        other => panic!("{what} = `{expr}` evaluates to `{other}`, not seconds"),
    }
}

fn eval_string(ctx: &Context, what: &str, expr: &Expression) -> String {
    match eval(ctx, what, expr) {
        Value::String(s) => s,
        other => panic!("{what} = `{expr}` evaluates to `{other}`, not a string"),
    }
}

// --- Subscriptions and scheduler jobs ------------------------------------------------

/// Subscriptions with a `push_config`.
fn push_subscriptions(body: &Body) -> Vec<(&str, &Block)> {
    let subs: Vec<_> = resources(body, "google_pubsub_subscription")
        .into_iter()
        .filter(|(_, b)| child(b.body(), "push_config").is_some())
        .collect();
    assert!(
        !subs.is_empty(),
        "no google_pubsub_subscription with a push_config in infra/"
    );
    subs
}

/// The `oidc_token` block under `parent` of a resource; a push or scheduler
/// call without one carries no token, and the worker answers it 401.
fn oidc_token<'a>(what: &str, block: &'a Block, parent: &str) -> &'a Body {
    path(block, &[parent, "oidc_token"])
        .unwrap_or_else(|| {
            panic!("{what} has no {parent}.oidc_token: its requests would carry no token and the worker would answer 401")
        })
        .body()
}

fn oidc_attr<'a>(what: &str, token: &'a Body, key: &str) -> &'a Expression {
    attr(token, key).unwrap_or_else(|| panic!("{what}: oidc_token has no {key}"))
}

// --- The tests -------------------------------------------------------------------

/// (a)+(b): every push subscription's token has an audience the worker accepts
/// (the very expression that feeds GOOGLE_AUDIENCES) and a service account it
/// accepts (an item of GOOGLE_SERVICE_ACCOUNTS), which is a Terraform-managed
/// service account.
#[test]
fn push_subscription_tokens_are_accepted_by_the_worker() {
    let body = load();
    let audiences = list_items("GOOGLE_AUDIENCES", env_value(&body, "GOOGLE_AUDIENCES"));
    let accounts = list_items(
        "GOOGLE_SERVICE_ACCOUNTS",
        env_value(&body, "GOOGLE_SERVICE_ACCOUNTS"),
    );
    for (name, sub) in push_subscriptions(&body) {
        let what = format!("google_pubsub_subscription.{name}");
        let token = oidc_token(&what, sub, "push_config");

        let audience = oidc_attr(&what, token, "audience");
        assert!(
            audiences.contains(&audience),
            "{what}: oidc_token.audience is `{audience}`, but GOOGLE_AUDIENCES is built from {}: every push would be rejected (401, then dead-lettered)",
            show(&audiences)
        );

        let email = oidc_attr(&what, token, "service_account_email");
        assert!(
            accounts.contains(&email),
            "{what}: oidc_token.service_account_email is `{email}`, which is not among GOOGLE_SERVICE_ACCOUNTS ({}): every push would be rejected",
            show(&accounts)
        );
        let address = resource_address(email).unwrap_or_default();
        let sa = address.strip_prefix("google_service_account.").unwrap_or_else(|| {
            panic!("{what}: oidc_token.service_account_email `{email}` should be a google_service_account's email, created here")
        });
        assert!(
            resources(&body, "google_service_account")
                .iter()
                .any(|(n, _)| *n == sa),
            "{what}: oidc_token.service_account_email refers to google_service_account.{sa}, which infra/ does not define"
        );
    }
}

/// (c): the scheduler jobs' tokens are accepted too, and they call a job route
/// of this service.
#[test]
fn scheduler_job_tokens_are_accepted_by_the_worker() {
    let body = load();
    let ctx = defaults_context(&body);
    let audiences = list_items("GOOGLE_AUDIENCES", env_value(&body, "GOOGLE_AUDIENCES"));
    let accounts = list_items(
        "GOOGLE_SERVICE_ACCOUNTS",
        env_value(&body, "GOOGLE_SERVICE_ACCOUNTS"),
    );
    let (svc_name, _) = service(&body);
    let jobs = resources(&body, "google_cloud_scheduler_job");
    assert!(!jobs.is_empty(), "no google_cloud_scheduler_job in infra/");
    for (name, job) in jobs {
        let what = format!("google_cloud_scheduler_job.{name}");
        let token = oidc_token(&what, job, "http_target");

        let audience = oidc_attr(&what, token, "audience");
        assert!(
            audiences.contains(&audience),
            "{what}: oidc_token.audience is `{audience}`, but GOOGLE_AUDIENCES is built from {}: the scheduled calls would be rejected (401)",
            show(&audiences)
        );
        let email = oidc_attr(&what, token, "service_account_email");
        assert!(
            accounts.contains(&email),
            "{what}: oidc_token.service_account_email is `{email}`, which is not among GOOGLE_SERVICE_ACCOUNTS ({}): the scheduled calls would be rejected",
            show(&accounts)
        );

        let target = child(job.body(), "http_target").expect("checked above");
        let uri_expr =
            attr(target.body(), "uri").unwrap_or_else(|| panic!("{what}: http_target has no uri"));
        let uri = eval_string(&ctx, &format!("{what}.http_target.uri"), uri_expr);
        let base = format!("https://{svc_name}-abc123-ew.a.run.app/jobs/");
        assert!(
            uri.starts_with(&base) && uri.len() > base.len(),
            "{what}: http_target.uri `{uri_expr}` should be `${{google_cloud_run_v2_service.{svc_name}.uri}}/jobs/<job>` (evaluates to `{uri}`)"
        );
    }
}

/// (d): with the defaults, a job that times out is answered (504) before
/// Cloud Run, Pub/Sub or Cloud Scheduler give up on the request.
#[test]
fn timeouts_leave_room_for_the_job_timeout() {
    let body = load();
    let ctx = defaults_context(&body);
    let job_timeout = eval_secs(
        &ctx,
        "JOB_TIMEOUT_SECS",
        env_value(&body, "JOB_TIMEOUT_SECS"),
    );

    for (name, sub) in push_subscriptions(&body) {
        let what = format!("google_pubsub_subscription.{name}.ack_deadline_seconds");
        let ack = attr(sub.body(), "ack_deadline_seconds")
            .map_or(PUBSUB_DEFAULT_ACK_DEADLINE_SECS, |e| {
                eval_secs(&ctx, &what, e)
            });
        assert!(
            ack >= job_timeout + ACK_MARGIN_SECS,
            "{what} is {ack} s by default but JOB_TIMEOUT_SECS is {job_timeout} s: the ack deadline (the push request's timeout) must be at least {ACK_MARGIN_SECS} s longer, or Pub/Sub abandons slow jobs before the worker answers"
        );
    }

    let (svc_name, svc) = service(&body);
    let what = format!("google_cloud_run_v2_service.{svc_name}.template.timeout");
    let run_timeout = path(svc, &["template"])
        .and_then(|t| attr(t.body(), "timeout"))
        .map_or(CLOUD_RUN_DEFAULT_TIMEOUT_SECS, |e| {
            eval_secs(&ctx, &what, e)
        });
    assert!(
        run_timeout >= job_timeout,
        "{what} is {run_timeout} s by default but JOB_TIMEOUT_SECS is {job_timeout} s: Cloud Run would cut requests before the worker's own timeout answers"
    );

    for (name, job) in resources(&body, "google_cloud_scheduler_job") {
        let what = format!("google_cloud_scheduler_job.{name}.attempt_deadline");
        if let Some(expr) = attr(job.body(), "attempt_deadline") {
            let deadline = eval_secs(&ctx, &what, expr);
            assert!(
                deadline >= job_timeout,
                "{what} is {deadline} s by default but JOB_TIMEOUT_SECS is {job_timeout} s: Cloud Scheduler would give up before the job can finish"
            );
        }
    }
}

/// (e): a dead-letter topic without a subscription drops what it receives,
/// and a subscription must not dead-letter into its own topic.
#[test]
fn every_dead_letter_topic_has_a_subscription() {
    let body = load();
    let subs = resources(&body, "google_pubsub_subscription");
    let mut checked = 0;
    for (name, sub) in &subs {
        let Some(policy) = child(sub.body(), "dead_letter_policy") else {
            continue;
        };
        checked += 1;
        let what = format!("google_pubsub_subscription.{name}");
        let dlt = attr(policy.body(), "dead_letter_topic")
            .unwrap_or_else(|| panic!("{what}: dead_letter_policy has no dead_letter_topic"));
        let source = attr(sub.body(), "topic").unwrap_or_else(|| panic!("{what} has no topic"));
        assert!(
            !same_thing(source, dlt),
            "{what} dead-letters into its own topic `{dlt}`: failed messages would loop"
        );
        let keepers: Vec<&str> = subs
            .iter()
            .filter(|(_, s)| attr(s.body(), "topic").is_some_and(|t| same_thing(t, dlt)))
            .map(|(n, _)| *n)
            .collect();
        assert!(
            !keepers.is_empty(),
            "{what}: no google_pubsub_subscription has `topic` = the dead-letter topic `{dlt}`: dead letters would be dropped"
        );
    }
    assert!(
        checked > 0,
        "no google_pubsub_subscription has a dead_letter_policy: poison messages would be retried forever"
    );
}

/// The dead-letter policy works only if Pub/Sub's service agent may publish
/// to the dead-letter topic and acknowledge on the source subscription; without
/// either, messages are silently never dead-lettered.
#[test]
fn pubsub_service_agent_can_dead_letter() {
    let body = load();
    let locals = locals(&body);
    // The member, with one `local.X` resolved, as text.
    let member_text = |expr: &Expression| -> String {
        if let Expression::Traversal(t) = expr
            && matches!(&t.expr, Expression::Variable(v) if v.as_str() == "local")
            && let Some(TraversalOperator::GetAttr(name)) = t.operators.first()
            && let Some(value) = locals.get(name.as_str())
        {
            return value.to_string();
        }
        expr.to_string()
    };
    let is_agent =
        |expr: &Expression| member_text(expr).contains("@gcp-sa-pubsub.iam.gserviceaccount.com");

    for (name, sub) in resources(&body, "google_pubsub_subscription") {
        let Some(policy) = child(sub.body(), "dead_letter_policy") else {
            continue;
        };
        let dlt = attr(policy.body(), "dead_letter_topic").expect("checked elsewhere");
        let publishes = resources(&body, "google_pubsub_topic_iam_member")
            .iter()
            .any(|(_, b)| {
                attr(b.body(), "role") == Some(&Expression::String("roles/pubsub.publisher".into()))
                    && attr(b.body(), "topic").is_some_and(|t| same_thing(t, dlt))
                    && attr(b.body(), "member").is_some_and(is_agent)
            });
        assert!(
            publishes,
            "google_pubsub_subscription.{name}: the Pub/Sub service agent (service-N@gcp-sa-pubsub) lacks roles/pubsub.publisher on the dead-letter topic `{dlt}`"
        );
        let subscribes = resources(&body, "google_pubsub_subscription_iam_member")
            .iter()
            .any(|(_, b)| {
                attr(b.body(), "role")
                    == Some(&Expression::String("roles/pubsub.subscriber".into()))
                    && attr(b.body(), "subscription").is_some_and(|s| {
                        resource_address(s).as_deref()
                            == Some(format!("google_pubsub_subscription.{name}").as_str())
                    })
                    && attr(b.body(), "member").is_some_and(is_agent)
            });
        assert!(
            subscribes,
            "google_pubsub_subscription.{name}: the Pub/Sub service agent lacks roles/pubsub.subscriber on this subscription (needed to forward to the dead-letter topic)"
        );
    }
}

/// (f): pushes go to the push route of this service.
#[test]
fn push_endpoint_is_the_push_route() {
    let body = load();
    let ctx = defaults_context(&body);
    let (svc_name, _) = service(&body);
    let base = format!("https://{svc_name}-abc123-ew.a.run.app");
    for (name, sub) in push_subscriptions(&body) {
        let what = format!("google_pubsub_subscription.{name}.push_config.push_endpoint");
        let expr = path(sub, &["push_config"])
            .and_then(|p| attr(p.body(), "push_endpoint"))
            .unwrap_or_else(|| panic!("{what} is missing"));
        let url = eval_string(&ctx, &what, expr);
        // The worker also serves `/pubsub/push/{job}` for subscriptions that
        // carry one job type.
        let route = url.strip_prefix(&base).unwrap_or_default();
        let per_job = route
            .strip_prefix("/pubsub/push/")
            .is_some_and(|job| !job.is_empty() && !job.contains('/'));
        assert!(
            route == "/pubsub/push" || per_job,
            "{what} is `{expr}` (`{url}`): it must be `${{google_cloud_run_v2_service.{svc_name}.uri}}/pubsub/push`, the worker's push route"
        );
    }
}

/// The `NAME` of every `[env: NAME=…]` (or `[env: NAME]`, for hidden values)
/// marker in `pushworker serve --help`.
fn accepted_env_names() -> BTreeSet<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_pushworker"))
        .args(["serve", "--help"])
        .env_clear()
        .output()
        .expect("run pushworker serve --help");
    assert!(
        output.status.success(),
        "pushworker serve --help failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let help = String::from_utf8(output.stdout).expect("UTF-8 help");
    let names: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|n| !n.is_empty())
        .collect();
    assert!(
        names.contains("GOOGLE_AUDIENCES") && names.contains("PORT"),
        "could not read the env markers from `pushworker serve --help` (found {names:?}); has the help format changed?"
    );
    names
}

/// (g): every variable set on the container is one the worker reads, and
/// none is set twice.
#[test]
fn container_env_names_are_known_to_the_worker() {
    let body = load();
    let accepted = accepted_env_names();
    let mut seen = BTreeSet::new();
    for var in service_env(&body) {
        assert!(
            seen.insert(var.name.clone()),
            "{} is set twice on the Cloud Run container",
            var.name
        );
        assert!(
            accepted.contains(&var.name),
            "the Cloud Run container sets {}, which `pushworker serve` does not read (a typo?); it reads: {}",
            var.name,
            accepted.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    for required in ["GOOGLE_AUDIENCES", "GOOGLE_SERVICE_ACCOUNTS"] {
        assert!(
            seen.contains(required),
            "the Cloud Run container does not set {required}: the worker would accept no Google token"
        );
    }
}

/// (h): the Eventarc trigger is off by default; when on, it sends Cloud
/// Storage finalize events to this service's `/events` path with a token of
/// its own service account, one the worker accepts, whose audience (the
/// service's URL) is in GOOGLE_AUDIENCES; and that account holds
/// `roles/run.invoker` and nothing else.
#[test]
fn eventarc_trigger_is_optional_and_sends_storage_events_to_the_events_route() {
    let body = load();
    let ctx = defaults_context(&body);
    let (svc_name, _) = service(&body);
    let triggers = resources(&body, "google_eventarc_trigger");
    assert_eq!(triggers.len(), 1, "one google_eventarc_trigger in infra/");
    let (name, trigger) = triggers[0];
    let what = format!("google_eventarc_trigger.{name}");

    let count = attr(trigger.body(), "count")
        .unwrap_or_else(|| panic!("{what} has no count: it cannot be turned off"));
    let count = match eval(&ctx, &format!("{what}.count"), count) {
        Value::Number(n) => n.as_f64(),
        other => panic!("{what}.count evaluates to {other}"),
    };
    assert_eq!(count, Some(0.0), "{what} must be off by default");

    let criteria: BTreeMap<String, String> = trigger
        .body()
        .blocks()
        .filter(|b| b.identifier() == "matching_criteria")
        .map(|b| {
            let text = |key| match attr(b.body(), key) {
                Some(Expression::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => panic!("{what}: matching_criteria without {key}"),
            };
            (text("attribute"), text("value"))
        })
        .collect();
    assert_eq!(
        criteria.get("type").map(String::as_str),
        Some("google.cloud.storage.object.v1.finalized"),
        "{what}: {criteria:?}"
    );
    assert_eq!(
        criteria.get("bucket").map(String::as_str),
        Some("var.eventarc_bucket"),
        "{what}: {criteria:?}"
    );

    let run = path(trigger, &["destination", "cloud_run_service"])
        .unwrap_or_else(|| panic!("{what} has no destination.cloud_run_service"));
    let service_ref = attr(run.body(), "service").expect("destination service");
    assert_eq!(
        resource_address(service_ref).as_deref(),
        Some(format!("google_cloud_run_v2_service.{svc_name}").as_str()),
        "{what}: the destination is this service (`{service_ref}`)"
    );
    let route = attr(run.body(), "path").map(|p| eval_string(&ctx, "path", p));
    assert_eq!(
        route.as_deref(),
        Some("/events"),
        "{what}: the events route"
    );

    let account = attr(trigger.body(), "service_account")
        .unwrap_or_else(|| panic!("{what} has no service_account of its own"));
    let accounts = list_items(
        "GOOGLE_SERVICE_ACCOUNTS",
        env_value(&body, "GOOGLE_SERVICE_ACCOUNTS"),
    );
    assert!(
        accounts.iter().any(|a| same_thing(a, account)),
        "{what}: service_account `{account}` is not among GOOGLE_SERVICE_ACCOUNTS ({}): every event would be refused (403)",
        show(&accounts)
    );
    let audiences = list_items("GOOGLE_AUDIENCES", env_value(&body, "GOOGLE_AUDIENCES"));
    let service_url = locals(&body)
        .get("service_url")
        .copied()
        .expect("a local service_url: the audience of Eventarc's tokens");
    assert!(
        audiences
            .iter()
            .any(|a| a.to_string() == "local.service_url" || *a == service_url),
        "GOOGLE_AUDIENCES ({}) must hold the service's URL, the audience of Eventarc's tokens",
        show(&audiences)
    );
    for other in ["push", "scheduler"] {
        let other = format!("google_service_account.{other}");
        assert_ne!(
            resource_address(account).as_deref(),
            Some(other.as_str()),
            "{what}: the trigger needs a service account of its own, not {other}"
        );
    }

    // Every grant to the trigger's account, in any IAM member resource.
    let account_address = resource_address(account).expect("a service account resource");
    let mut roles = Vec::new();
    for block in body.blocks().filter(|b| b.identifier() == "resource") {
        let [rtype, rname] = block.labels() else {
            continue;
        };
        if !rtype.as_str().ends_with("_iam_member") && !rtype.as_str().ends_with("_iam_binding") {
            continue;
        }
        let member = attr(block.body(), "member")
            .or_else(|| attr(block.body(), "members"))
            .map(ToString::to_string)
            .unwrap_or_default();
        if member.contains(&account_address) {
            let role = attr(block.body(), "role").map(ToString::to_string);
            roles.push((format!("{}.{}", rtype.as_str(), rname.as_str()), role));
        }
    }
    assert_eq!(
        roles.len(),
        1,
        "the trigger's account holds one grant: {roles:?}"
    );
    assert_eq!(
        roles[0].1.as_deref(),
        Some("\"roles/run.invoker\""),
        "{roles:?}"
    );
}

/// The container blocks of the service's template: the plain ones and the
/// `content` of `dynamic "containers"` blocks, with that block's `for_each`.
fn service_containers(body: &Body) -> Vec<(&Body, Option<&Expression>)> {
    let (name, svc) = service(body);
    let template = child(svc.body(), "template")
        .unwrap_or_else(|| panic!("google_cloud_run_v2_service.{name} has no template block"));
    template
        .body()
        .blocks()
        .filter_map(|b| match (b.identifier(), labels(b).as_slice()) {
            ("containers", _) => Some((b.body(), None)),
            ("dynamic", ["containers"]) => Some((
                child(b.body(), "content")
                    .expect("a dynamic \"containers\" block has a content block")
                    .body(),
                attr(b.body(), "for_each"),
            )),
            _ => None,
        })
        .collect()
}

fn eval_len(ctx: &Context, what: &str, expr: &Expression) -> usize {
    match eval(ctx, what, expr) {
        Value::Array(items) => items.len(),
        Value::Object(items) => items.len(),
        other => panic!("{what} = `{expr}` evaluates to `{other}`, not a collection"),
    }
}

fn eval_count(ctx: &Context, what: &str, block: &Block) -> f64 {
    let expr = attr(block.body(), "count").unwrap_or_else(|| panic!("{what} has no count"));
    match eval(ctx, &format!("{what}.count"), expr) {
        Value::Number(n) => n.as_f64().expect("a finite count"),
        other => panic!("{what}.count evaluates to {other}"),
    }
}

/// (i): the Managed Service for Prometheus sidecar is off by default, and
/// then the worker records no metrics (`METRICS_ADDR=off`). When on, it is a
/// pinned image that starts after the worker, reads a RunMonitoring
/// configuration that scrapes `/metrics` at exactly the loopback address the
/// worker's `METRICS_ADDR` names (never the public port), and the runtime
/// service account may write metrics and read that configuration.
#[test]
fn metrics_sidecar_is_optional_and_scrapes_the_worker_on_localhost() {
    let body = load();
    let off = defaults_context(&body);
    let on = context_with(&body, &[("metrics_sidecar_enabled", Value::Bool(true))]);
    let (svc_name, svc) = service(&body);

    let metrics_addr = env_value(&body, "METRICS_ADDR");
    assert_eq!(
        eval_string(&off, "METRICS_ADDR", metrics_addr),
        "off",
        "with the sidecar off, nobody scrapes: METRICS_ADDR must be off"
    );
    let addr = eval_string(&on, "METRICS_ADDR", metrics_addr);
    let addr: std::net::SocketAddr = addr
        .parse()
        .unwrap_or_else(|_| panic!("METRICS_ADDR `{addr}` with the sidecar on is not host:port"));
    assert!(
        addr.ip().is_loopback(),
        "METRICS_ADDR {addr}: /metrics must stay on loopback, where only the sidecar reaches it"
    );

    let containers = service_containers(&body);
    let main: Vec<_> = containers.iter().filter(|(_, f)| f.is_none()).collect();
    assert_eq!(main.len(), 1, "one plain containers block: the worker");
    let main_body = main[0].0;
    let main_name = match attr(main_body, "name") {
        Some(Expression::String(s)) => s.clone(),
        other => panic!("the worker's container needs a literal name for depends_on ({other:?})"),
    };
    let public_port = path_in(main_body, &["ports"])
        .and_then(|p| attr(p, "container_port"))
        .map(|e| eval_secs(&off, "container_port", e))
        .unwrap_or(8080.0);
    assert_ne!(
        f64::from(addr.port()),
        public_port,
        "METRICS_ADDR must not be the public port"
    );

    let sidecars: Vec<_> = containers
        .iter()
        .filter_map(|(b, f)| f.map(|f| (*b, f)))
        .collect();
    assert_eq!(
        sidecars.len(),
        1,
        "one dynamic containers block: the sidecar"
    );
    let (sidecar, for_each) = sidecars[0];
    assert_eq!(
        eval_len(&off, "the sidecar's for_each", for_each),
        0,
        "the sidecar must be off by default"
    );
    assert_eq!(eval_len(&on, "the sidecar's for_each", for_each), 1);

    // The image: `containers.value` of the for_each, or a literal.
    let image = match eval(&on, "the sidecar's for_each", for_each) {
        Value::Array(items)
            if attr(sidecar, "image").map(ToString::to_string).as_deref()
                == Some("containers.value") =>
        {
            items[0].as_str().expect("an image string").to_owned()
        }
        _ => eval_string(
            &on,
            "the sidecar's image",
            attr(sidecar, "image").expect("an image"),
        ),
    };
    let tag = image
        .strip_prefix("us-docker.pkg.dev/cloud-ops-agents-artifacts/cloud-run-gmp-sidecar/cloud-run-gmp-sidecar:")
        .unwrap_or_else(|| panic!("the sidecar's image `{image}` is not Google's cloud-run-gmp-sidecar"));
    assert!(
        !tag.is_empty() && tag.chars().all(|c| c.is_ascii_digit() || c == '.'),
        "the sidecar's image is pinned to a version, not `{tag}`"
    );

    let depends = attr(sidecar, "depends_on").expect("the sidecar has depends_on");
    assert_eq!(
        depends,
        &Expression::Array(vec![Expression::String(main_name.clone())]),
        "the sidecar starts after the worker's container `{main_name}`"
    );

    // Its configuration: a secret volume mounted where the sidecar reads it.
    let mount = child(sidecar, "volume_mounts").expect("the sidecar mounts its configuration");
    assert_eq!(
        attr(mount.body(), "mount_path"),
        Some(&Expression::String("/etc/rungmp".to_owned())),
        "the sidecar reads /etc/rungmp/config.yaml"
    );
    let volume_name = eval_string(
        &on,
        "volume_mounts.name",
        attr(mount.body(), "name").expect("a volume name"),
    );
    let template = child(svc.body(), "template").expect("template");
    let volume = template
        .body()
        .blocks()
        .filter(|b| b.identifier() == "dynamic" && labels(b) == ["volumes"])
        .find_map(|b| {
            let content = child(b.body(), "content")?.body();
            let name = attr(content, "name")?;
            let for_each = attr(b.body(), "for_each")?;
            let matches = match (
                name.to_string().as_str(),
                eval(&on, "volumes.for_each", for_each),
            ) {
                ("volumes.value", Value::Array(items)) => items
                    .iter()
                    .any(|i| i.as_str() == Some(volume_name.as_str())),
                _ => eval_string(&on, "volumes.name", name) == volume_name,
            };
            assert_eq!(
                eval_len(&off, "volumes.for_each", for_each),
                0,
                "no volume with the sidecar off"
            );
            matches.then_some(content)
        })
        .unwrap_or_else(|| {
            panic!("google_cloud_run_v2_service.{svc_name} has no volume `{volume_name}`")
        });
    let secret = child(volume, "secret").expect("the configuration volume is a secret");
    let secret_ref = attr(secret.body(), "secret").expect("secret.secret");
    let items = child(secret.body(), "items").expect("secret.items");
    assert_eq!(
        attr(items.body(), "path"),
        Some(&Expression::String("config.yaml".to_owned())),
        "mounted as /etc/rungmp/config.yaml"
    );
    let secret_text = secret_ref.to_string();
    let (secret_name, _) = resources(&body, "google_secret_manager_secret")
        .into_iter()
        .find(|(n, _)| secret_text.starts_with(&format!("google_secret_manager_secret.{n}")))
        .unwrap_or_else(|| {
            panic!(
                "the volume's secret `{secret_ref}` is not a google_secret_manager_secret of infra/"
            )
        });
    let (version_name, version) = resources(&body, "google_secret_manager_secret_version")
        .into_iter()
        .find(|(_, b)| {
            attr(b.body(), "secret").is_some_and(|s| {
                s.to_string()
                    .starts_with(&format!("google_secret_manager_secret.{secret_name}"))
            })
        })
        .unwrap_or_else(|| panic!("google_secret_manager_secret.{secret_name} has no version"));
    assert_eq!(
        eval_count(
            &off,
            &format!("google_secret_manager_secret_version.{version_name}"),
            version
        ),
        0.0
    );
    let data = eval_string(
        &on,
        "secret_data",
        attr(version.body(), "secret_data").expect("secret_data"),
    );
    let config: serde_json::Value = serde_json::from_str(&data)
        .unwrap_or_else(|e| panic!("the RunMonitoring configuration does not parse ({e}): {data}"));
    assert_eq!(config["kind"], "RunMonitoring", "{config}");
    assert_eq!(
        config["apiVersion"], "monitoring.googleapis.com/v1beta",
        "{config}"
    );
    let endpoints = config["spec"]["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("no spec.endpoints: {config}"));
    assert_eq!(endpoints.len(), 1, "{config}");
    assert_eq!(
        endpoints[0]["port"].as_u64(),
        Some(u64::from(addr.port())),
        "the sidecar scrapes the port of METRICS_ADDR ({addr}): {config}"
    );
    assert_eq!(endpoints[0]["path"], "/metrics", "{config}");

    // The runtime account (the service's identity) writes the metrics and
    // reads the configuration; neither grant exists with the sidecar off.
    let runtime = attr(template.body(), "service_account")
        .and_then(resource_address)
        .expect("the template names its service_account");
    for (rtype, role) in [
        ("google_project_iam_member", "roles/monitoring.metricWriter"),
        (
            "google_secret_manager_secret_iam_member",
            "roles/secretmanager.secretAccessor",
        ),
    ] {
        let candidates: Vec<_> = resources(&body, rtype)
            .into_iter()
            .filter(|(_, b)| attr(b.body(), "role") == Some(&Expression::String(role.to_owned())))
            .filter(|(_, b)| {
                rtype != "google_secret_manager_secret_iam_member"
                    || attr(b.body(), "secret_id").is_some_and(|s| {
                        s.to_string()
                            .starts_with(&format!("google_secret_manager_secret.{secret_name}"))
                    })
            })
            .collect();
        assert_eq!(
            candidates.len(),
            1,
            "one {rtype} granting {role} for the sidecar"
        );
        let (name, block) = candidates[0];
        let what = format!("{rtype}.{name}");
        assert_eq!(
            attr(block.body(), "member").and_then(resource_address),
            Some(runtime.clone()),
            "{what} is for the runtime service account"
        );
        assert_eq!(
            eval_count(&off, &what, block),
            0.0,
            "{what} is off by default"
        );
        assert_eq!(
            eval_count(&on, &what, block),
            1.0,
            "{what} is on with the sidecar"
        );
    }
}

/// Follows nested blocks of a body (`&[]`: the body itself).
fn path_in<'a>(body: &'a Body, idents: &[&str]) -> Option<&'a Body> {
    idents
        .iter()
        .try_fold(body, |b, ident| child(b, ident).map(Block::body))
}
