//! End-to-end tests of the admin page in a real headless Chromium (Debian's
//! `chromium`, driven through `chromedriver` with fantoccini), against the
//! real server in development mode on loopback: the page, its embedded
//! script, the development sign-in, the API and the CSP all as shipped.
//!
//! Each test saves screenshots of the states it reaches under
//! `target/admin-screenshots/` (and `failure-*.png` when a wait times out),
//! and ends by checking that the browser's console logged no error, a CSP
//! violation included.
//!
//! Chromium and chromedriver are required: without them these tests fail and
//! say `apt-get install chromium chromium-driver` (`.ci/run` installs them).
//!
//! `the_run_appears_in_the_runs_list_with_its_detail` needs `GET /runs` from
//! the run ledger; until that is merged it fails saying so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::{
    net::Ipv4Addr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use clap::Parser as _;
use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
use pushworker::{
    cli::{Cli, Command as CliCommand},
    config::Config,
    jobs::{Job, JobContext, JobDeps, JobError, JobRegistry},
    startup::Application,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// A test job whose payload has rules the schema does not show, so that the
// server's 422 (and its field path) reaches the page.
// ---------------------------------------------------------------------------

/// An email address: any string in the schema, checked only by the server.
#[derive(Debug, Serialize, Deserialize)]
#[serde(try_from = "String")]
struct Email(String);

impl TryFrom<String> for Email {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        if value.contains('@') {
            Ok(Self(value))
        } else {
            Err(format!("`{value}` is not an email address"))
        }
    }
}

/// Who ordered.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Customer {
    /// The customer's email address.
    #[schemars(with = "String")]
    email: Email,
}

/// How fast to deliver.
#[derive(Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Speed {
    #[default]
    Standard,
    Express,
}

/// An order.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct OrderPayload {
    /// Who ordered.
    customer: Customer,
    /// How many items (an order of 0 fails for good).
    quantity: u32,
    /// Delivery speed.
    #[serde(default)]
    speed: Speed,
    /// Wrap it as a gift.
    #[serde(default)]
    gift: bool,
}

/// `order`: a test job with a nested payload.
struct Order;

impl Job for Order {
    const NAME: &'static str = "order";
    const DESCRIPTION: &'static str = "Test job: places an order (fails for a quantity of 0).";
    type Payload = OrderPayload;
    type Output = OrderPayload;

    async fn run(&self, payload: OrderPayload, _: JobContext) -> Result<OrderPayload, JobError> {
        if payload.quantity == 0 {
            return Err(JobError::Permanent(
                "an order needs a quantity of at least 1".into(),
            ));
        }
        Ok(payload)
    }
}

// ---------------------------------------------------------------------------
// The harness: the worker in dev mode, chromedriver, a browser session.
// ---------------------------------------------------------------------------

/// One browser at a time: two Chromiums on two shared cores make every wait
/// slower for nothing.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "pushworker-e2e-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/admin-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The worker as `make run` starts it (dev mode, 127.0.0.1), with the
/// built-in jobs and `order`.
struct Server {
    base: String,
    _dir: TempDir,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

async fn start_server() -> Server {
    let dir = TempDir::new("dev");
    let port = free_port();
    let cli = Cli::try_parse_from([
        "pushworker",
        "serve",
        "--dev",
        "--dev-dir",
        dir.0.to_str().unwrap(),
        "--port",
        &port.to_string(),
        "--host",
        "127.0.0.1",
        // Servers run side by side: each takes a free metrics port.
        "--metrics-addr",
        "127.0.0.1:0",
    ])
    .unwrap();
    let CliCommand::Serve(args) = cli.command else {
        unreachable!()
    };
    let config = Config::from_args(&args).unwrap();
    let jobs = JobRegistry::builtin(&JobDeps {
        http: reqwest::Client::new(),
        webhook: config.webhook.clone(),
    })
    .unwrap()
    .register(Order);
    let app = Application::build_with_jobs(config, Some(jobs))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    Server {
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
        _shutdown: tx,
    }
}

fn find_program(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.exists(),
        "{} not found: the admin page's end-to-end tests need Debian's Chromium and ChromeDriver. \
         Install them with `apt-get install chromium chromium-driver` (`make test` does), \
         or point {env} at the program.",
        path.display()
    );
    path
}

/// chromedriver on a free loopback port, in a process group of its own that
/// Chromium joins; the whole group is killed on drop, so that a test that
/// fails before closing its session leaves no browser behind.
struct Driver {
    url: String,
    child: Child,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Let the killed browser let go of its profile folder.
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn start_driver() -> Driver {
    let program = find_program("CHROMEDRIVER", "/usr/bin/chromedriver");
    let port = free_port();
    let child = Command::new(program)
        .process_group(0)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromedriver");
    let driver = Driver {
        url: format!("http://127.0.0.1:{port}"),
        child,
    };
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let ready = http
            .get(format!("{}/status", driver.url))
            .send()
            .await
            .ok()
            .map(|r| r.status() == 200)
            .unwrap_or(false);
        if ready {
            return driver;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A browser session on the admin page.
struct Browser {
    client: Client,
    driver: Driver,
    base: String,
    test: &'static str,
    _profile: TempDir,
}

async fn open_browser(test: &'static str, server: &Server) -> Browser {
    let chromium = find_program("CHROMIUM", "/usr/bin/chromium");
    let driver = start_driver().await;
    let profile = TempDir::new("profile");
    let capabilities = json!({
        "browserName": "chrome",
        "goog:loggingPrefs": { "browser": "ALL" },
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                "--disable-extensions",
                "--disable-features=Translate,MediaRouter,OptimizationHints",
                "--no-first-run",
                "--no-default-browser-check",
                "--window-size=1280,900",
                format!("--user-data-dir={}", profile.0.display()),
            ],
        },
    });
    let capabilities = match capabilities {
        Value::Object(map) => map,
        _ => unreachable!(),
    };
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session through chromedriver");
    Browser {
        client,
        driver,
        base: server.base.clone(),
        test,
        _profile: profile,
    }
}

const WAIT: Duration = Duration::from_secs(15);

impl Browser {
    async fn goto_admin(&self) {
        self.client
            .goto(&format!("{}/admin", self.base))
            .await
            .unwrap();
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
    }

    /// The whole page at once (a tall window, scrolled to the top).
    async fn screenshot_tall(&self, name: &str) {
        self.client.set_window_size(1280, 1400).await.unwrap();
        self.script("window.scrollTo(0, 0)").await;
        self.screenshot(name).await;
        self.client.set_window_size(1280, 900).await.unwrap();
    }

    /// Saves a screenshot and the page's text, then fails.
    async fn fail(&self, what: &str) {
        let name = format!("failure-{}", self.test);
        let _ = self
            .client
            .screenshot()
            .await
            .map(|png| std::fs::write(screenshot_dir().join(format!("{name}.png")), png));
        let text = self
            .client
            .execute("return document.body.innerText", vec![])
            .await
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        let logs = self.console().await;
        let _ = self.client.clone().close().await;
        panic!(
            "{what}\n--- page text ---\n{text}\n--- console ---\n{logs:#}\n(screenshot: target/admin-screenshots/{name}.png)"
        );
    }

    /// The element matching `css`, once it exists and is displayed.
    async fn visible(&self, css: &str) -> Element {
        let started = Instant::now();
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && element.is_displayed().await.unwrap_or(false)
            {
                return element;
            }
            if started.elapsed() > WAIT {
                self.fail(&format!("`{css}` did not appear")).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of `css`, once it contains `needle`.
    async fn text_containing(&self, css: &str, needle: &str) -> String {
        let started = Instant::now();
        let mut last = String::new();
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await {
                last = element.text().await.unwrap_or_default();
                if last.contains(needle) {
                    return last;
                }
            }
            if started.elapsed() > WAIT {
                self.fail(&format!(
                    "`{css}` never contained `{needle}` (last: `{last}`)"
                ))
                .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.visible(css).await.click().await.unwrap();
    }

    async fn fill(&self, css: &str, text: &str) {
        let element = self.visible(css).await;
        element.clear().await.unwrap();
        if !text.is_empty() {
            element.send_keys(text).await.unwrap();
        }
    }

    async fn attribute(&self, css: &str, name: &str) -> Option<String> {
        self.visible(css).await.attr(name).await.unwrap()
    }

    async fn script(&self, js: &str) -> Value {
        self.client.execute(js, vec![]).await.unwrap()
    }

    /// Signs in with the development sign-in as `persona`.
    async fn sign_in(&self, persona: &str) {
        self.goto_admin().await;
        self.click(&format!("#dev-signin-{persona}")).await;
        self.text_containing("#whoami-user", &format!("user_dev_{persona}"))
            .await;
        self.visible("#job-echo").await;
    }

    /// The browser console since the last call (chromedriver's log endpoint).
    async fn console(&self) -> Value {
        let Ok(Some(session)) = self.client.session_id().await else {
            return Value::Null;
        };
        let response = reqwest::Client::new()
            .post(format!("{}/session/{session}/se/log", self.driver.url))
            .json(&json!({ "type": "browser" }))
            .send()
            .await;
        match response {
            Ok(r) => r
                .json::<Value>()
                .await
                .map(|v| v["value"].clone())
                .unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// No error in the console (CSP violations are errors), except the
    /// failed requests this test provoked on purpose (`expected`).
    async fn assert_clean_console(&self, expected: &[&str]) {
        let logs = self.console().await;
        let errors: Vec<&Value> = logs
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["level"] == "SEVERE")
                    .filter(|e| {
                        let message = e["message"].as_str().unwrap_or_default();
                        !expected.iter().any(|x| message.contains(x))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !errors.is_empty() {
            self.fail(&format!("the console has errors: {errors:#?}"))
                .await;
        }
    }

    /// Runs `order` from its form with a quantity of 0, which fails for
    /// good, and waits for the answer.
    async fn run_failing_order(&self) {
        self.click("#job-order").await;
        self.fill("#field-customer", r#"{"email": "ada@example.com"}"#)
            .await;
        self.fill("#field-quantity", "0").await;
        self.click("#run-button").await;
        self.text_containing("#run-outcome", "failed permanent")
            .await;
    }

    async fn close(self) {
        let Self { client, driver, .. } = self;
        client.close().await.unwrap();
        drop(driver);
    }
}

// ---------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------

/// Sign in, see who I am and the jobs with their descriptions, fill the form
/// generated for `echo`, run it, and see the result; the token is nowhere in
/// storage or cookies; the page also fits a phone's screen.
#[tokio::test]
async fn admin_signs_in_and_runs_echo_from_the_generated_form() {
    let _one = BROWSER.lock().await;
    let server = start_server().await;
    let browser = open_browser("admin", &server).await;

    browser.goto_admin().await;
    browser.text_containing("#signin", "Sign in as Admin").await;
    browser.screenshot("01-sign-in").await;

    browser.click("#dev-signin-admin").await;
    browser
        .text_containing("#whoami-user", "user_dev_admin")
        .await;
    browser.text_containing("#whoami-role", "org:admin").await;
    browser
        .text_containing("#whoami-permissions", "org:jobs:trigger")
        .await;
    browser
        .text_containing("#can-trigger", "You may run jobs")
        .await;
    browser
        .text_containing("#account", "development admin")
        .await;

    for (job, description) in [
        ("echo", "Returns its payload unchanged."),
        ("sleep", "Waits `millis` milliseconds"),
        ("webhook", ""),
        ("order", "Test job: places an order"),
    ] {
        browser
            .text_containing(&format!("#job-{job}"), description)
            .await;
    }
    browser.screenshot("02-signed-in").await;

    browser.click("#job-echo").await;
    browser
        .text_containing("#job-panel", "Text to echo back.")
        .await;
    assert_eq!(
        browser
            .attribute("#field-message", "aria-required")
            .await
            .as_deref(),
        Some("true"),
        "the required field is marked"
    );
    browser.fill("#field-message", "hello from chromium").await;
    browser.fill("#extra-fields", r#"{"ticket": 7}"#).await;
    browser.click("#run-button").await;
    let outcome = browser.text_containing("#run-outcome", "succeeded").await;
    assert!(outcome.contains("hello from chromium"), "{outcome}");
    assert!(outcome.contains("\"ticket\": 7"), "{outcome}");
    assert!(outcome.contains(" ms"), "the duration is shown: {outcome}");
    browser.screenshot("03-echo-succeeded").await;
    // The whole page at once, for the README (docs/admin.png).
    browser.screenshot_tall("00-overview").await;

    // The JSON editor shows the same payload, and runs it too.
    browser.click("#mode-json").await;
    let json_text = browser
        .script("return document.getElementById('json-input').value")
        .await;
    let payload: Value = serde_json::from_str(json_text.as_str().unwrap()).unwrap();
    assert_eq!(
        payload,
        json!({"message": "hello from chromium", "ticket": 7})
    );
    browser
        .fill("#json-input", r#"{"message": "from the JSON editor"}"#)
        .await;
    browser.click("#run-button").await;
    browser
        .text_containing("#run-outcome", "from the JSON editor")
        .await;

    let storage = browser
        .script("return [localStorage.length, sessionStorage.length, document.cookie]")
        .await;
    assert_eq!(storage, json!([0, 0, ""]), "no token stored outside memory");

    browser.client.set_window_size(390, 844).await.unwrap();
    browser.click("#job-order").await;
    browser.screenshot("06-phone").await;
    let overflow = browser
        .script("return document.documentElement.scrollWidth - window.innerWidth")
        .await;
    assert!(
        overflow.as_i64().unwrap_or(0) <= 1,
        "no horizontal scrolling on a phone: {overflow}"
    );

    browser.click("#sign-out").await;
    browser.visible("#dev-signin-admin").await;
    browser.assert_clean_console(&["/runs"]).await;
    browser.close().await;
}

/// A user without the trigger permission sees which permission is missing and
/// cannot run a job.
#[tokio::test]
async fn viewer_sees_why_and_cannot_run() {
    let _one = BROWSER.lock().await;
    let server = start_server().await;
    let browser = open_browser("viewer", &server).await;
    browser.sign_in("viewer").await;

    let explanation = browser
        .text_containing("#cannot-trigger", "cannot run them")
        .await;
    assert!(explanation.contains("org:jobs:trigger"), "{explanation}");
    browser.text_containing("#whoami-role", "org:member").await;

    browser.click("#job-echo").await;
    browser
        .text_containing("#trigger-denied", "org:jobs:trigger")
        .await;
    assert!(
        browser.attribute("#run-button", "disabled").await.is_some(),
        "Run is disabled"
    );
    browser.fill("#field-message", "should not run").await;
    // Submitting anyway (Enter in the field) sends nothing.
    browser
        .script("document.getElementById('job-form').requestSubmit()")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let result = browser
        .script("return document.getElementById('run-result').innerText")
        .await;
    assert_eq!(result, json!(""), "nothing was run");
    browser.screenshot_tall("04-viewer-cannot-run").await;
    browser.assert_clean_console(&["/runs"]).await;
    browser.close().await;
}

/// A payload that does not fit shows the field's error: checked in the page
/// against the schema before sending (form and JSON editor), and, for a rule
/// only the server knows, from the 422's `path`, next to the field.
#[tokio::test]
async fn payload_errors_show_next_to_the_field() {
    let _one = BROWSER.lock().await;
    let server = start_server().await;
    let browser = open_browser("payload-errors", &server).await;
    browser.sign_in("admin").await;

    // Required field left empty: caught before sending.
    browser.click("#job-echo").await;
    browser.click("#run-button").await;
    browser
        .text_containing("#field-message-error", "is required")
        .await;
    browser.text_containing("#run-blocked", "Not sent").await;
    assert_eq!(
        browser
            .attribute("#field-message", "aria-invalid")
            .await
            .as_deref(),
        Some("true")
    );

    // A bound from the schema, in the generated form.
    browser.click("#job-sleep").await;
    browser.fill("#field-millis", "99999999").await;
    browser.click("#run-button").await;
    browser
        .text_containing("#field-millis-error", "at most 3600000")
        .await;

    // The JSON editor checks the same rules.
    browser.click("#job-echo").await;
    browser.click("#mode-json").await;
    browser.fill("#json-input", r#"{"message": 5}"#).await;
    browser.click("#run-button").await;
    browser
        .text_containing("#json-error", "message: must be string")
        .await;
    browser.fill("#json-input", r#"{"message": "x""#).await;
    browser.click("#run-button").await;
    browser
        .text_containing("#json-error", "not valid JSON")
        .await;

    // A rule the schema does not show: the server's 422 names
    // `customer.email`, shown next to the `customer` field.
    browser.click("#job-order").await;
    browser
        .fill("#field-customer", r#"{"email": "not-an-email"}"#)
        .await;
    browser.fill("#field-quantity", "2").await;
    browser.click("#run-button").await;
    let error = browser
        .text_containing("#field-customer-error", "customer.email")
        .await;
    assert!(error.contains("not an email address"), "{error}");
    browser
        .text_containing("#run-outcome", "invalid payload")
        .await;
    browser.screenshot("05-field-error").await;

    // Fixed, it runs; the enum and the checkbox are generated controls.
    browser
        .fill("#field-customer", r#"{"email": "ada@example.com"}"#)
        .await;
    browser
        .script("const s = document.getElementById('field-speed'); s.value = '1'; s.dispatchEvent(new Event('change'))")
        .await;
    browser.click("#field-gift").await;
    browser.click("#run-button").await;
    let outcome = browser.text_containing("#run-outcome", "succeeded").await;
    assert!(outcome.contains("\"speed\": \"express\""), "{outcome}");
    assert!(outcome.contains("\"gift\": true"), "{outcome}");
    browser
        .assert_clean_console(&["/runs", "/jobs/order"])
        .await;
    browser.close().await;
}

/// NEEDS THE RUN LEDGER (`GET /runs`, `GET /runs/{id}`; branch `ledger`).
/// A run started from the page appears in the runs list (live while it runs),
/// the filters narrow the list, a run's detail shows its payload, principal
/// and error, and a failed run can be run again.
#[tokio::test]
async fn the_run_appears_in_the_runs_list_with_its_detail() {
    let _one = BROWSER.lock().await;
    let server = start_server().await;
    let browser = open_browser("runs", &server).await;
    browser.sign_in("admin").await;
    let status = browser
        .script("return document.getElementById('runs-status').innerText")
        .await;
    if status.as_str().unwrap_or_default().contains("404") {
        browser
            .fail("GET /runs answered 404: this test needs the run ledger (branch `ledger`) merged")
            .await;
    }

    // A run appears, with its source and principal.
    browser.click("#job-echo").await;
    browser.fill("#field-message", "ledger check").await;
    browser.click("#run-button").await;
    browser.text_containing("#run-outcome", "succeeded").await;
    let run_id = browser
        .script("return document.querySelector('#run-outcome .run-id').innerText")
        .await;
    let run_id = run_id.as_str().unwrap().to_owned();
    let row = format!("#runs-body tr[data-run='{run_id}']");
    let text = browser.text_containing(&row, "succeeded").await;
    assert!(text.contains("echo") && text.contains("manual"), "{text}");
    assert!(text.contains("user_dev_admin"), "{text}");

    // Live while something runs.
    browser.click("#job-sleep").await;
    browser.fill("#field-millis", "4000").await;
    browser.click("#run-button").await;
    browser.visible("#runs-live").await;
    browser
        .visible("#runs-body tr[data-status='running']")
        .await;
    browser.text_containing("#run-outcome", "succeeded").await;

    // A failed run, its detail, and run again.
    browser.run_failing_order().await;
    browser
        .text_containing("#runs-body", "failed permanent")
        .await;

    // Filters: job and status narrow the list, and a source nothing came
    // from empties it.
    browser
        .script("const s = document.getElementById('filter-job'); s.value = 'order'; s.dispatchEvent(new Event('change', {bubbles: true}))")
        .await;
    browser
        .script("const s = document.getElementById('filter-status'); s.value = 'failed_permanent'; s.dispatchEvent(new Event('change', {bubbles: true}))")
        .await;
    let started = Instant::now();
    loop {
        let rows = browser
            .script("return [...document.querySelectorAll('#runs-body tr')].map(r => r.dataset.status + ' ' + r.cells[0].innerText)")
            .await;
        let rows = rows.as_array().unwrap();
        if !rows.is_empty() && rows.iter().all(|r| r == "failed_permanent order") {
            break;
        }
        if started.elapsed() > WAIT {
            browser
                .fail(&format!("the filters did not narrow the list: {rows:?}"))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser
        .script("const s = document.getElementById('filter-source'); s.value = 'push'; s.dispatchEvent(new Event('change', {bubbles: true}))")
        .await;
    browser
        .text_containing("#runs-status", "No runs match")
        .await;
    browser
        .script("for (const id of ['filter-status', 'filter-source']) document.getElementById(id).value = ''; document.getElementById('filter-job').dispatchEvent(new Event('change', {bubbles: true}))")
        .await;

    browser
        .click("#runs-body tr[data-status='failed_permanent'] button")
        .await;
    let detail = browser
        .text_containing("#run-detail-body", "ada@example.com")
        .await;
    assert!(detail.contains("user_dev_admin"), "{detail}");
    assert!(detail.contains("quantity of at least 1"), "{detail}");
    browser.screenshot("07-run-detail").await;
    browser.click("#run-again").await;
    browser
        .text_containing("#run-again-result", "failed permanent")
        .await;
    browser.click("#run-detail-close").await;
    let started = Instant::now();
    loop {
        let count = browser
            .script("return document.querySelectorAll(\"#runs-body tr[data-status='failed_permanent']\").length")
            .await;
        if count.as_i64().unwrap_or(0) >= 2 {
            break;
        }
        if started.elapsed() > WAIT {
            browser
                .fail("the run started by `Run again` did not appear")
                .await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser.screenshot("08-runs").await;
    browser
        .assert_clean_console(&["/jobs/order", "/rerun"])
        .await;
    browser.close().await;
}

/// `/docs`: Swagger UI over `/openapi.json`, embedded and under the admin
/// page's CSP, shows one operation per job; signed in with the development
/// sign-in, "Try it out" on `POST /jobs/echo` sends the session token and
/// the run answers 200.
#[tokio::test]
async fn the_docs_page_tries_echo_signed_in() {
    let _one = BROWSER.lock().await;
    let server = start_server().await;
    let browser = open_browser("docs", &server).await;
    browser
        .client
        .goto(&format!("{}/docs", browser.base))
        .await
        .unwrap();
    for job in ["echo", "order", "sleep", "storage_object", "webhook"] {
        browser
            .visible(&format!("#operations-jobs-trigger_{job}"))
            .await;
    }
    browser
        .text_containing("#operations-jobs-trigger_echo", "/jobs/echo")
        .await;
    browser.text_containing("#signin", "Sign in as Admin").await;
    browser.screenshot("09-docs").await;

    browser.click("#dev-signin-admin").await;
    browser
        .text_containing("#account-label", "development admin")
        .await;
    browser
        .click("#operations-jobs-trigger_echo .opblock-summary-control")
        .await;
    browser
        .click("#operations-jobs-trigger_echo .try-out__btn")
        .await;
    browser
        .fill(
            "#operations-jobs-trigger_echo textarea.body-param__text",
            r#"{"message": "from the docs page"}"#,
        )
        .await;
    browser
        .click("#operations-jobs-trigger_echo .execute")
        .await;
    browser
        .text_containing(
            "#operations-jobs-trigger_echo .live-responses-table tr.response .response-col_status",
            "200",
        )
        .await;
    let curl = browser
        .text_containing(
            "#operations-jobs-trigger_echo .curl-command",
            "Authorization: Bearer ey",
        )
        .await;
    assert!(curl.contains("/jobs/echo"), "{curl}");
    browser
        .text_containing(
            "#operations-jobs-trigger_echo .live-responses-table",
            "from the docs page",
        )
        .await;
    browser.screenshot_tall("10-docs-try-echo").await;
    browser.assert_clean_console(&[]).await;
    browser.close().await;
}

/// The Overview panel: after a success and a failure from the page, and a
/// push, its uPlot charts are drawn (canvases, no CDN, under the CSP) and
/// the runs chart's legend names those statuses, the p95 chart's the job;
/// the runs list's message id search finds the push's run alone.
#[tokio::test]
async fn the_overview_charts_runs_and_the_search_finds_a_message() {
    let _one = BROWSER.lock().await;
    let server = start_server().await;
    let browser = open_browser("overview", &server).await;
    browser.sign_in("admin").await;
    browser.visible("#overview-runs canvas").await;
    browser.visible("#overview-p95 canvas").await;

    browser.click("#job-echo").await;
    browser.fill("#field-message", "for the overview").await;
    browser.click("#run-button").await;
    browser.text_containing("#run-outcome", "succeeded").await;
    browser.run_failing_order().await;

    // A push, as Pub/Sub sends it, with the development service identity.
    let identity = pushworker::auth::dev::DevIdentity::load_or_create(&server._dir.0).unwrap();
    let token = identity
        .google_token(
            pushworker::auth::dev::DevIdentity::SERVICE_ACCOUNT,
            pushworker::auth::dev::DevIdentity::GOOGLE_AUDIENCE,
            300,
        )
        .unwrap();
    let message_id = "e2e-message-4242";
    let meta = pushworker::pubsub::MessageMeta {
        message_id: message_id.to_owned(),
        publish_time: None,
        subscription: Some("projects/dev/subscriptions/work-push".to_owned()),
        attributes: [("job".to_owned(), "echo".to_owned())]
            .into_iter()
            .collect(),
        ordering_key: None,
        delivery_attempt: Some(1),
        unwrapped: false,
    };
    let push = reqwest::Client::new()
        .post(format!("{}/pubsub/push", server.base))
        .bearer_auth(token)
        .json(&pushworker::pubsub::wrap(
            &meta,
            br#"{"message": "pushed"}"#,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(push.status(), 204, "the push is acked");

    browser.click("#overview-refresh").await;
    let legend = browser
        .text_containing("#overview-runs .u-legend", "failed_permanent")
        .await;
    assert!(legend.contains("succeeded"), "{legend}");
    browser
        .text_containing("#overview-p95 .u-legend", "echo")
        .await;
    let canvases = browser
        .script("return document.querySelectorAll('#overview canvas').length")
        .await;
    assert_eq!(canvases, 2, "one canvas per chart");
    browser.screenshot_tall("11-overview").await;

    // The search by message id: the push's run, and nothing else.
    browser.fill("#filter-message-id", message_id).await;
    browser
        .script("document.getElementById('runs-filters').requestSubmit()")
        .await;
    let started = Instant::now();
    loop {
        let rows = browser
            .script("return [...document.querySelectorAll('#runs-body tr')].map(r => r.cells[0].innerText + ' ' + r.cells[2].innerText)")
            .await;
        if rows == json!(["echo push"]) {
            break;
        }
        if started.elapsed() > WAIT {
            browser
                .fail(&format!("the search did not find the push alone: {rows:?}"))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser.click("#runs-body tr button").await;
    browser
        .text_containing("#run-detail-body", message_id)
        .await;
    browser.click("#run-detail-close").await;
    browser.fill("#filter-message-id", "no-such-message").await;
    browser
        .script("document.getElementById('runs-filters').requestSubmit()")
        .await;
    browser
        .text_containing("#runs-status", "No runs match")
        .await;
    browser.screenshot("12-search").await;
    browser.assert_clean_console(&["/jobs/order"]).await;
    browser.close().await;
}

/// The rows of `#dead-body`, as `status job` each.
async fn dead_rows(browser: &Browser) -> Vec<String> {
    let rows = browser
        .script("return [...document.querySelectorAll('#dead-body tr')].map(r => r.dataset.status + ' ' + r.cells[1].innerText)")
        .await;
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Waits until `#dead-body` has `n` rows.
async fn wait_dead_rows(browser: &Browser, n: usize) {
    let started = Instant::now();
    loop {
        browser.click("#dead-refresh").await;
        let rows = dead_rows(browser).await;
        if rows.len() == n {
            assert!(
                rows.iter().all(|r| r == "failed_permanent order"),
                "{rows:?}"
            );
            return;
        }
        if started.elapsed() > WAIT {
            browser
                .fail(&format!("the dead letters never showed {n} rows: {rows:?}"))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The Dead letters view lists the runs that failed for good; "Re-run
/// selected" re-runs the one selected and "Re-run all matching" every one,
/// each with its progress; Cancel stops a running run, which ends
/// `cancelled`.
#[tokio::test]
async fn dead_letters_rerun_and_a_running_run_is_cancelled() {
    let _one = BROWSER.lock().await;
    let server = start_server().await;
    let browser = open_browser("control", &server).await;
    browser.sign_in("admin").await;
    browser
        .text_containing("#dead-status", "No run failed")
        .await;

    for _ in 0..2 {
        browser.run_failing_order().await;
    }
    wait_dead_rows(&browser, 2).await;
    browser.screenshot("13-dead-letters").await;

    // Re-run selected: the first row only.
    browser
        .click("#dead-body tr:first-child input[type=checkbox]")
        .await;
    browser
        .text_containing("#dead-rerun-selected", "Re-run selected (1)")
        .await;
    browser.click("#dead-rerun-selected").await;
    let progress = browser
        .text_containing("#dead-progress", "Done: 1 of 1")
        .await;
    assert!(progress.contains("1 failed"), "{progress}");
    wait_dead_rows(&browser, 3).await;

    // Re-run all matching: every one shown.
    browser.click("#dead-rerun-all").await;
    let progress = browser
        .text_containing("#dead-progress", "Done: 3 of 3")
        .await;
    assert!(progress.contains("3 failed"), "{progress}");
    wait_dead_rows(&browser, 6).await;
    browser.screenshot("14-dead-letters-rerun").await;

    // Cancel a long sleep from its detail.
    browser.click("#job-sleep").await;
    browser.fill("#field-millis", "60000").await;
    browser.click("#run-button").await;
    browser
        .click("#runs-body tr[data-status='running'] button")
        .await;
    browser.click("#run-cancel").await;
    browser
        .text_containing("#run-again-result", "Cancel requested")
        .await;
    browser
        .text_containing("#run-detail-body", "Cancel asked")
        .await;
    browser
        .text_containing("#run-detail-body", "cancelled")
        .await;
    browser.screenshot("15-cancelled").await;
    browser.click("#run-detail-close").await;
    let outcome = browser.text_containing("#run-outcome", "cancelled").await;
    assert!(outcome.contains("run_cancelled"), "{outcome}");
    browser
        .visible("#runs-body tr[data-status='cancelled']")
        .await;
    browser
        .assert_clean_console(&["/jobs/order", "/rerun", "/jobs/sleep"])
        .await;
    browser.close().await;
}
