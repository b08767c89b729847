//! The web console (`GET /console`): its headers and files over plain HTTP, and its views driven in
//! a real headless Chromium against a real daemon and a real receiver.

mod cdp;

use crate::support::{wait_until_async, Answer, TestDaemon, TestReceiver};
use cdp::{Browser, Page};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// A daemon, a browser with one page, and where this test's screenshots go.
struct Console {
    daemon: TestDaemon,
    /// Kept for the page's lifetime; dropping it ends Chromium.
    _browser: Browser,
    page: Page,
}

impl Console {
    async fn start(daemon: TestDaemon) -> Console {
        let browser = Browser::start().await;
        let page = browser.new_page().await;
        page.set_size(1280, 800, false).await;
        Console {
            daemon,
            _browser: browser,
            page,
        }
    }

    fn origin(&self) -> String {
        format!("http://{}", self.daemon.addr)
    }

    /// Opens the console and logs in with `token` by keyboard: type, then Enter.
    async fn login(&self, token: &str) {
        self.page.goto(&format!("{}/console", self.origin())).await;
        self.page
            .wait_for(
                "document.activeElement && document.activeElement.id === 'token'",
                Duration::from_secs(30),
            )
            .await;
        self.page
            .call("Input.insertText", json!({"text": token}))
            .await;
        self.page.press("Enter", "Enter", 13).await;
        self.page
            .wait_for(
                "!document.getElementById('nav').hidden",
                Duration::from_secs(30),
            )
            .await;
    }

    /// Shows `hash` (e.g. `#/dead-letters`) and waits until `ready` (a JavaScript expression) holds.
    async fn show(&self, hash: &str, ready: &str) {
        let quoted = serde_json::to_string(hash).unwrap();
        self.page.eval(&format!("location.hash = {quoted}")).await;
        self.page.wait_for(ready, Duration::from_secs(30)).await;
    }

    /// Saves a PNG of the viewport under the test's temp dir; returns its path.
    async fn screenshot(&self, name: &str) -> PathBuf {
        let path = self.daemon.dir.path().join(format!("{name}.png"));
        self.page.screenshot(&path).await;
        // To look at them after the run (the temp dir goes with the test).
        if let Some(keep) = std::env::var_os("CONSOLE_SCREENSHOTS") {
            let keep = PathBuf::from(keep);
            std::fs::create_dir_all(&keep).unwrap();
            std::fs::copy(&path, keep.join(format!("{name}.png"))).unwrap();
        }
        path
    }

    /// Fails the test with every JavaScript error the page met.
    fn assert_no_errors(&self) {
        let errors = self.page.errors();
        assert!(
            errors.is_empty(),
            "JavaScript errors:\n{}",
            errors.join("\n")
        );
    }

    /// Fails the test if the page asked anything of a host other than the daemon.
    fn assert_same_origin(&self) {
        let origin = format!("{}/", self.origin());
        let foreign: Vec<String> = self
            .page
            .requested_urls()
            .into_iter()
            .filter(|u| !u.starts_with(&origin) && !u.starts_with("data:") && u != "about:blank")
            .collect();
        assert!(foreign.is_empty(), "requests to other hosts: {foreign:?}");
    }
}

/// `UPDATE_SCREENSHOT=1`: the README's picture is written from this test run.
fn update_readme_screenshot(from: &Path) {
    if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        let to = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console.png");
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, &to).expect("copy the screenshot into docs/");
    }
}

async fn endpoint(
    daemon: &TestDaemon,
    partner: &str,
    receiver: &TestReceiver,
    path: &str,
) -> String {
    let ep = daemon
        .client()
        .create_endpoint(partner, "production", &receiver.url(path), &["*"])
        .await;
    ep["id"].as_str().unwrap().to_string()
}

async fn event(daemon: &TestDaemon, partner: &str, id: &str) {
    let (status, body) = daemon
        .client()
        .post_event(
            partner,
            "production",
            id,
            "audit.completed",
            json!({"report_id": "r_1"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

/// Waits until `GET path` satisfies `cond`.
async fn wait_api(daemon: &TestDaemon, path: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let client = daemon.client();
    let mut last = Value::Null;
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (status, body) = client.get(path).await;
            if status == StatusCode::OK && cond(&body) {
                return body;
            }
            last = body;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("GET {path} never matched; last: {last}"))
}

#[tokio::test]
async fn console_is_served_without_a_token_under_a_strict_policy() {
    let d = TestDaemon::start().await;
    let client = d.client();
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let (status, headers, body) = client.raw(Method::GET, path, None, false).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!body.is_empty(), "{path}");
        assert_eq!(headers["content-security-policy"], CSP, "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(kind),
            "{path}: {:?}",
            headers["content-type"]
        );
        // A cache validator: the same copy is not sent twice.
        let etag = headers["etag"].to_str().unwrap().to_string();
        let req = http::Request::builder()
            .uri(format!("http://{}{path}", d.addr))
            .header("host", d.addr.to_string())
            .header("if-none-match", &etag)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let (status, _, body) = crate::support::send(d.addr, req).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{path}");
        assert!(body.is_empty());
    }
    // The files need no token; nothing else does without one.
    let (status, _, _) = client
        .raw(Method::GET, "/console/nope.js", None, false)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = client.raw(Method::GET, "/status", None, false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = client.raw(Method::POST, "/console", None, false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_logs_in_sees_the_endpoint_and_a_refused_token_goes_back_to_login() {
    let receiver = TestReceiver::start().await;
    let d = TestDaemon::start().await;
    let ep = endpoint(&d, "acme-health", &receiver, "/hooks").await;
    let c = Console::start(d).await;

    // A wrong token is refused with a message, and nothing is kept.
    c.page.goto(&format!("{}/console", c.origin())).await;
    c.page.fill("#token", "not-the-token").await;
    c.page.click("#login").await;
    c.page.wait_for_text("does not accept this token").await;
    assert_eq!(c.page.eval("sessionStorage.length").await, json!(0));

    let token = c.daemon.token.clone();
    c.login(&token).await;
    c.page.wait_for_text(&ep).await;
    c.page.wait_for_text("healthy").await;
    c.page.wait_for_text(&receiver.url("/hooks")).await;
    // The token lives in this tab's session storage only: no cookie, nothing in local storage.
    assert_eq!(
        c.page.eval("sessionStorage.getItem('preflix.token')").await,
        json!(token)
    );
    assert_eq!(c.page.eval("document.cookie").await, json!(""));
    assert_eq!(c.page.eval("localStorage.length").await, json!(0));
    c.screenshot("overview").await;

    // The endpoint is a few Tabs and an Enter away, and the focus is visible on the way.
    let target = format!("#/endpoints/{ep}");
    let mut tabs = 0;
    loop {
        c.page.press("Tab", "Tab", 9).await;
        tabs += 1;
        let href = c
            .page
            .eval("document.activeElement && document.activeElement.getAttribute('href')")
            .await;
        if href == json!(target) {
            break;
        }
        assert!(tabs < 30, "the endpoint link is not reachable by Tab");
    }
    assert_eq!(
        c.page
            .eval("getComputedStyle(document.activeElement).outlineStyle")
            .await,
        json!("solid"),
        "the focused link shows no focus ring"
    );
    c.page.press("Enter", "Enter", 13).await;
    c.page
        .wait_for("document.getElementById('ep-health') && document.getElementById('ep-health').innerText.includes('healthy')", Duration::from_secs(30))
        .await;
    c.screenshot("endpoint").await;

    // A token the daemon stops accepting sends the tab back to login with a message.
    c.page
        .eval("sessionStorage.setItem('preflix.token', 'revoked'); location.hash = '#/overview'")
        .await;
    c.page.wait_for_text("no longer accepts this token").await;
    c.page
        .wait_for(
            "document.getElementById('token') !== null",
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(
        c.page.eval("sessionStorage.getItem('preflix.token')").await,
        Value::Null
    );

    // Log out clears the token.
    c.login(&token).await;
    c.page.click("#logout").await;
    c.page.wait_for_text("Logged out.").await;
    assert_eq!(c.page.eval("sessionStorage.length").await, json!(0));
    c.assert_no_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_timeline_shows_a_failed_then_a_successful_attempt() {
    let receiver = TestReceiver::start().await;
    receiver.script([Answer::status(500).body("upstream down")]);
    let d = TestDaemon::start().await;
    let ep = endpoint(&d, "acme-health", &receiver, "/hooks").await;
    event(&d, "acme-health", "evt_timeline_1").await;
    receiver.wait_for(2, Duration::from_secs(30)).await;
    wait_api(&d, "/v1/events/evt_timeline_1", |e| {
        e["deliveries"][0]["status"] == "succeeded"
    })
    .await;
    let c = Console::start(d).await;
    let token = c.daemon.token.clone();
    c.login(&token).await;

    // Found by its id on the search page.
    c.show("#/search", "document.getElementById('event-id')")
        .await;
    c.page.fill("#event-id", "evt_timeline_1").await;
    c.page.click("#search").await;
    c.page
        .wait_for(
            "location.hash === '#/events/evt_timeline_1'",
            Duration::from_secs(30),
        )
        .await;
    c.page
        .wait_for(
            "document.querySelectorAll('li.attempt').length === 2",
            Duration::from_secs(30),
        )
        .await;
    let attempts = c
        .page
        .eval("[...document.querySelectorAll('li.attempt')].map(li => li.innerText)")
        .await;
    let attempts: Vec<&str> = attempts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        attempts[0].contains("Attempt 1") && attempts[0].contains("500"),
        "{attempts:?}"
    );
    assert!(attempts[0].contains(" ms"), "latency shown: {attempts:?}");
    assert!(
        attempts[1].contains("Attempt 2") && attempts[1].contains("200"),
        "{attempts:?}"
    );
    // Two marks on the time axis, the failure red and the success green; each time has its
    // absolute form on hover.
    assert_eq!(
        c.page
            .eval("document.querySelectorAll('circle.mark.bad').length")
            .await,
        json!(1)
    );
    assert_eq!(
        c.page
            .eval("document.querySelectorAll('circle.mark.ok').length")
            .await,
        json!(1)
    );
    assert_eq!(
        c.page.eval("[...document.querySelectorAll('li.attempt time')].every(t => t.title.includes('Z)'))").await,
        json!(true)
    );
    c.page.wait_for_text("succeeded").await;
    c.page.wait_for_text(&ep).await;
    // The response body the receiver sent, as text.
    c.page
        .eval("document.querySelector('li.attempt details').open = true")
        .await;
    c.page.wait_for_text("upstream down").await;
    let shot = c.screenshot("timeline").await;
    update_readme_screenshot(&shot);
    c.assert_no_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_timeline_shows_when_the_next_attempt_is_due() {
    let receiver = TestReceiver::start().await;
    receiver.set_default(Answer::status(503));
    let d = TestDaemon::start_with(|c| c.retry.schedule = vec![Duration::from_secs(600)]).await;
    endpoint(&d, "acme-health", &receiver, "/hooks").await;
    event(&d, "acme-health", "evt_waiting").await;
    receiver.wait_for(1, Duration::from_secs(30)).await;
    wait_api(&d, "/v1/events/evt_waiting", |e| {
        e["deliveries"][0]["attempts"]
            .as_array()
            .is_some_and(|a| a.len() == 1)
            && !e["deliveries"][0]["next_attempt_at"].is_null()
    })
    .await;
    let c = Console::start(d).await;
    let token = c.daemon.token.clone();
    c.login(&token).await;
    c.show(
        "#/events/evt_waiting",
        "document.querySelector('li.attempt')",
    )
    .await;
    // "next attempt in 9 min 59 s" or so, with the absolute time on hover, and a hollow mark.
    c.page.wait_for_text("next attempt in ").await;
    let title = c
        .page
        .eval("document.querySelector('p.next time').title")
        .await;
    assert!(title.as_str().unwrap().contains('Z'), "{title}");
    assert_eq!(
        c.page
            .eval("document.querySelectorAll('circle.mark.next').length")
            .await,
        json!(1)
    );
    assert!(c
        .page
        .eval("document.querySelector('li.attempt').innerText")
        .await
        .as_str()
        .unwrap()
        .contains("503"));
    c.screenshot("timeline-waiting").await;
    c.assert_no_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_retried_from_the_review_page_is_delivered() {
    let receiver = TestReceiver::start().await;
    receiver.set_default(Answer::status(500));
    let d = TestDaemon::start().await;
    let ep = endpoint(&d, "acme-health", &receiver, "/hooks").await;
    event(&d, "acme-health", "evt_dead_1").await;
    event(&d, "acme-health", "evt_dead_2").await;
    let dead = wait_api(&d, "/v1/dead-letters", |b| {
        b["dead_letters"].as_array().is_some_and(|l| l.len() == 2)
    })
    .await;
    let one = dead["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["event_id"] == "evt_dead_1")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = receiver.count();
    receiver.set_default(Answer::status(200));

    let c = Console::start(d).await;
    let token = c.daemon.token.clone();
    c.login(&token).await;
    c.show(
        &format!("#/dead-letters?endpoint_id={ep}&status=500"),
        "document.querySelectorAll('button.retry').length === 2",
    )
    .await;
    c.screenshot("dead-letters").await;
    c.page
        .click(&format!("button.retry[data-id='{one}']"))
        .await;
    // The receiver gets it again, and it succeeds.
    receiver.wait_for(before + 1, Duration::from_secs(30)).await;
    let last = receiver.received().last().unwrap().clone();
    assert_eq!(last.headers["preflixai-event-id"], "evt_dead_1");
    wait_api(&c.daemon, "/v1/events/evt_dead_1", |e| {
        e["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["status"] == "succeeded")
    })
    .await;
    c.page
        .wait_for(
            "document.querySelectorAll('button.retry').length === 1",
            Duration::from_secs(30),
        )
        .await;

    // Delete asks twice, then the other one is gone.
    c.page.click("button.delete").await;
    c.page.wait_for_text("Really delete?").await;
    c.page.click("button.delete").await;
    c.page.wait_for_text("No dead letters match.").await;
    let (_, left) = c.daemon.client().get("/v1/dead-letters").await;
    assert_eq!(left["dead_letters"], json!([]));
    c.screenshot("dead-letters-done").await;
    c.assert_no_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_all_matching_requeues_only_what_the_filter_shows() {
    let good = TestReceiver::start().await;
    let other = TestReceiver::start().await;
    good.set_default(Answer::status(500));
    other.set_default(Answer::status(404));
    let d = TestDaemon::start().await;
    let ep = endpoint(&d, "acme-health", &good, "/a").await;
    endpoint(&d, "acme-health", &other, "/b").await;
    event(&d, "acme-health", "evt_all_1").await;
    event(&d, "acme-health", "evt_all_2").await;
    wait_api(&d, "/v1/dead-letters", |b| {
        b["dead_letters"].as_array().is_some_and(|l| l.len() == 4)
    })
    .await;
    good.set_default(Answer::status(200));
    let c = Console::start(d).await;
    let token = c.daemon.token.clone();
    c.login(&token).await;
    // Filter by status code from the form: 500 is only the first endpoint's.
    c.show(
        "#/dead-letters",
        "document.querySelectorAll('button.retry').length === 4",
    )
    .await;
    c.page.fill("#f-status", "500").await;
    c.page.click("#apply").await;
    c.page
        .wait_for(
            "document.querySelectorAll('button.retry').length === 2",
            Duration::from_secs(30),
        )
        .await;
    c.page.click("#retry-all").await;
    c.page.click("#retry-all").await;
    c.page.wait_for_text("2 dead letters requeued").await;
    let left = wait_api(&c.daemon, "/v1/dead-letters", |b| {
        b["dead_letters"].as_array().is_some_and(|l| l.len() == 2)
    })
    .await;
    assert!(left["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["endpoint_id"] != ep.as_str()));
    good.wait_for(6 + 2, Duration::from_secs(30)).await;
    c.assert_no_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_actions_rotate_send_a_sample_disable_and_enable() {
    let receiver = TestReceiver::start().await;
    let d = TestDaemon::start().await;
    let ep = endpoint(&d, "acme-health", &receiver, "/hooks").await;
    let c = Console::start(d).await;
    let token = c.daemon.token.clone();
    c.login(&token).await;
    c.show(
        &format!("#/endpoints/{ep}"),
        "document.querySelector('#sample-type option')",
    )
    .await;

    // Rotate: asks twice, shows the new secret once, and it is the endpoint's secret now.
    c.page.click("#rotate").await;
    c.page.click("#rotate").await;
    c.page
        .wait_for(
            "document.getElementById('new-secret')",
            Duration::from_secs(30),
        )
        .await;
    let shown = c
        .page
        .eval("document.getElementById('new-secret').textContent")
        .await;
    let (_, secret) = c
        .daemon
        .client()
        .get(&format!("/v1/endpoints/{ep}/secret"))
        .await;
    assert_eq!(shown, secret["secret"]);
    assert!(shown.as_str().unwrap().starts_with("whsec_"));

    // A sample event of the chosen type reaches the receiver.
    c.page
        .eval("document.getElementById('sample-type').value = 'letter.ready'")
        .await;
    c.page.click("#send-sample").await;
    let got = receiver.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].headers["preflixai-event-type"], "letter.ready");
    c.page
        .wait_for(
            "document.getElementById('sample-link')",
            Duration::from_secs(30),
        )
        .await;

    // Disable, then enable.
    c.page.click("#disable").await;
    c.page
        .wait_for("document.getElementById('enable')", Duration::from_secs(30))
        .await;
    let (_, view) = c.daemon.client().get(&format!("/v1/endpoints/{ep}")).await;
    assert_eq!(view["enabled"], false);
    c.page.click("#enable").await;
    c.page
        .wait_for(
            "document.getElementById('disable')",
            Duration::from_secs(30),
        )
        .await;
    let (_, view) = c.daemon.client().get(&format!("/v1/endpoints/{ep}")).await;
    assert_eq!(view["enabled"], true);
    c.screenshot("endpoint-actions").await;
    c.assert_no_errors();
}

/// Every view at desktop and phone width: no JavaScript error, no console error, no request to
/// another host, and the page document carries the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_loads_without_errors_and_only_from_the_daemon() {
    let ok = TestReceiver::start().await;
    let failing = TestReceiver::start().await;
    failing.set_default(Answer::status(500));
    let d = TestDaemon::start().await;
    let ep = endpoint(&d, "acme-health", &ok, "/ok").await;
    endpoint(&d, "acme-health", &failing, "/down").await;
    event(&d, "acme-health", "evt_views").await;
    wait_api(&d, "/v1/dead-letters", |b| {
        b["dead_letters"].as_array().is_some_and(|l| l.len() == 1)
    })
    .await;
    let c = Console::start(d).await;
    let token = c.daemon.token.clone();
    c.login(&token).await;
    let views = [
        (
            "overview",
            "#/overview".to_string(),
            "document.querySelector('#overview table')",
        ),
        (
            "endpoint",
            format!("#/endpoints/{ep}"),
            "document.querySelector('#ep-health dl') && document.querySelector('#ep-stats h2')",
        ),
        (
            "event",
            "#/events/evt_views".to_string(),
            "document.querySelectorAll('section.delivery').length === 2",
        ),
        (
            "dead-letters",
            "#/dead-letters".to_string(),
            "document.querySelector('button.retry')",
        ),
        (
            "search",
            "#/search".to_string(),
            "document.getElementById('event-id')",
        ),
        (
            "tokens",
            "#/tokens".to_string(),
            "document.getElementById('mint')",
        ),
        (
            "not-found",
            "#/nowhere".to_string(),
            "document.body.innerText.includes('No such page')",
        ),
    ];
    for (width, height, mobile, suffix) in
        [(1280, 800, false, "desktop"), (390, 844, true, "phone")]
    {
        c.page.set_size(width, height, mobile).await;
        for (name, hash, ready) in &views {
            c.show(hash, ready).await;
            // Nothing wider than the screen at either size (tables scroll or stack).
            let overflow = c
                .page
                .eval("document.documentElement.scrollWidth - document.documentElement.clientWidth")
                .await;
            assert!(
                overflow.as_i64().unwrap() <= 0,
                "{name} at {width}px overflows by {overflow}"
            );
            c.screenshot(&format!("{name}-{suffix}")).await;
        }
    }
    // A refresh of the live views later, still no error.
    tokio::time::sleep(Duration::from_secs(5)).await;
    c.assert_no_errors();
    c.assert_same_origin();
    let documents: Vec<Value> = c
        .page
        .events("Network.responseReceived")
        .into_iter()
        .filter(|e| e["type"] == "Document")
        .collect();
    assert!(!documents.is_empty());
    for doc in documents {
        let headers = &doc["response"]["headers"];
        let csp = headers
            .as_object()
            .unwrap()
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-security-policy"))
            .map(|(_, v)| v.clone());
        assert_eq!(csp, Some(json!(CSP)), "{}", doc["response"]["url"]);
    }
}

/// What a policy violation looks like to the harness: an inline script is refused, and the error
/// check catches it (so the no-errors test above can fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_refuses_inline_script_and_the_harness_sees_errors() {
    let d = TestDaemon::start().await;
    let c = Console::start(d).await;
    c.page.goto(&format!("{}/console", c.origin())).await;
    c.page
        .eval("const s = document.createElement('script'); s.textContent = 'window.injected = 1'; document.body.append(s); 0")
        .await;
    c.page
        .eval("const i = document.createElement('img'); i.src = 'http://192.0.2.1/x.png'; document.body.append(i); 0")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        c.page.eval("window.injected === undefined").await,
        json!(true)
    );
    let errors = c.page.errors();
    assert!(
        errors.iter().any(|e| e.contains("Content Security Policy")),
        "{errors:?}"
    );
    c.page
        .eval("setTimeout(() => { throw new Error('boom') }, 0); 0")
        .await;
    wait_until_async(Duration::from_secs(10), || async {
        c.page.errors().iter().any(|e| e.contains("boom"))
    })
    .await;
}

/// A partner token minted on the console's Tokens page sees that partner's endpoints, events and
/// dead letters only; another partner's ids are not found; a read-only token is offered no action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_token_sees_only_its_own_partner() {
    let receiver = TestReceiver::start().await;
    let failing = TestReceiver::start().await;
    failing.set_default(Answer::status(500));
    let d = TestDaemon::start().await;
    let mine = endpoint(&d, "acme-health", &receiver, "/acme").await;
    let mine_down = endpoint(&d, "acme-health", &failing, "/acme-down").await;
    let theirs = endpoint(&d, "beta-clinic", &receiver, "/beta-secret-path").await;
    let theirs_down = endpoint(&d, "beta-clinic", &failing, "/beta-down").await;
    event(&d, "acme-health", "evt_acme_1").await;
    event(&d, "beta-clinic", "evt_beta_1").await;
    wait_api(&d, "/v1/dead-letters", |b| {
        b["dead_letters"].as_array().is_some_and(|l| l.len() == 2)
    })
    .await;
    let c = Console::start(d).await;
    let admin = c.daemon.token.clone();

    // The admin mints it in the console; it is shown once.
    c.login(&admin).await;
    c.show("#/tokens", "document.getElementById('mint')").await;
    c.page.fill("#mint-partner", "acme-health").await;
    c.page.fill("#mint-description", "acme ops").await;
    c.page.click("#mint").await;
    c.page
        .wait_for(
            "document.getElementById('minted-token')",
            Duration::from_secs(30),
        )
        .await;
    let token = c
        .page
        .eval("document.getElementById('minted-token').textContent")
        .await;
    let token = token.as_str().unwrap().to_string();
    assert!(token.starts_with("pft_"), "{token}");
    c.page.wait_for_text("acme ops").await;
    c.screenshot("tokens-minted").await;
    c.page.click("#logout").await;

    c.login(&token).await;
    c.page.wait_for_text(&mine).await;
    c.page.wait_for_text(&mine_down).await;
    c.page.wait_for_text("evt_acme_1").await;
    c.page.wait_for_text("partner token · acme-health").await;
    // Health from the stats route (a partner cannot read /status): the failing endpoint says so.
    c.page
        .wait_for(
            &format!("[...document.querySelectorAll('#overview tbody tr')].some(r => r.innerText.includes('{mine_down}') && r.innerText.includes('failing') && r.innerText.includes('0.0% succeeded'))"),
            Duration::from_secs(30),
        )
        .await;
    let text = c.page.eval("document.body.innerText").await;
    let text = text.as_str().unwrap();
    for other in [
        theirs.as_str(),
        theirs_down.as_str(),
        "beta-clinic",
        "beta-secret-path",
        "evt_beta_1",
    ] {
        assert!(!text.contains(other), "the partner sees {other}:\n{text}");
    }
    assert_eq!(
        c.page
            .eval("document.getElementById('nav-tokens').hidden")
            .await,
        json!(true)
    );
    c.screenshot("partner-overview").await;

    // Another partner's endpoint and event are not found; its dead letters are not listed.
    c.show(
        &format!("#/endpoints/{theirs}"),
        "document.body.innerText.includes('Endpoint not found')",
    )
    .await;
    c.show(
        "#/events/evt_beta_1",
        "document.body.innerText.includes('Event not found')",
    )
    .await;
    c.show(
        "#/dead-letters",
        "document.querySelectorAll('button.retry').length === 1",
    )
    .await;
    let text = c
        .page
        .eval("document.getElementById('dead-letters').innerText")
        .await;
    assert!(text.as_str().unwrap().contains(&mine_down), "{text}");
    assert!(!text.as_str().unwrap().contains(&theirs_down), "{text}");
    c.show(
        &format!("#/endpoints/{mine}"),
        "document.getElementById('rotate')",
    )
    .await;
    c.assert_no_errors();

    // A read-only token: the same view, no action offered.
    let (status, minted) = c
        .daemon
        .client()
        .post("/v1/tokens", json!({"partner_id": "acme-health", "environment": "production", "ttl": "1d", "read_only": true}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{minted}");
    c.page.click("#logout").await;
    c.login(minted["token"].as_str().unwrap()).await;
    c.page.wait_for_text("read-only").await;
    c.show(
        &format!("#/endpoints/{mine}"),
        "document.body.innerText.includes('This token is read-only')",
    )
    .await;
    assert_eq!(
        c.page
            .eval("document.querySelectorAll('#rotate, #disable, #send-sample').length")
            .await,
        json!(0)
    );
    c.show(
        "#/dead-letters",
        "document.getElementById('dead-letters').innerText.includes('dl_')",
    )
    .await;
    assert_eq!(
        c.page
            .eval("document.querySelectorAll('button.retry, button.delete, #retry-all').length")
            .await,
        json!(0)
    );
    c.show(
        "#/events/evt_acme_1",
        "document.querySelector('section.delivery')",
    )
    .await;
    assert_eq!(
        c.page
            .eval("document.querySelectorAll('#redeliver').length")
            .await,
        json!(0)
    );
    c.screenshot("partner-read-only").await;

    // Revoked: the next request sends the tab back to login.
    let id = minted["id"].as_str().unwrap();
    let (status, _) = c.daemon.client().delete(&format!("/v1/tokens/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    c.show(
        "#/overview",
        "document.body.innerText.includes('no longer accepts this token')",
    )
    .await;

    // The admin revokes the first one from the Tokens page; the list says so.
    c.login(&admin).await;
    c.show("#/tokens", "document.querySelector('button.revoke')")
        .await;
    c.page.click("button.revoke").await;
    c.page.click("button.revoke").await;
    c.page
        .wait_for(
            "document.querySelectorAll('button.revoke').length === 0",
            Duration::from_secs(30),
        )
        .await;
    let (_, listed) = c.daemon.client().get("/v1/tokens").await;
    assert!(
        listed["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["status"] == "revoked"),
        "{listed}"
    );
    c.screenshot("tokens-revoked").await;
    c.assert_no_errors();
}

/// The endpoint's charts are drawn from the stats route: failed and succeeded attempts of this hour
/// in the rate chart, the success rate, and the latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_view_charts_the_last_24_hours() {
    let receiver = TestReceiver::start().await;
    receiver.script([Answer::status(500)]);
    let d = TestDaemon::start().await;
    let ep = endpoint(&d, "acme-health", &receiver, "/hooks").await;
    for n in 0..3 {
        event(&d, "acme-health", &format!("evt_chart_{n}")).await;
    }
    receiver.wait_for(4, Duration::from_secs(30)).await;
    let stats = wait_api(&d, &format!("/v1/endpoints/{ep}/stats"), |s| {
        s["buckets"].as_array().is_some_and(|b| {
            b.iter()
                .map(|x| x["succeeded"].as_u64().unwrap_or(0))
                .sum::<u64>()
                == 3
        })
    })
    .await;
    assert_eq!(stats["buckets"].as_array().unwrap().len(), 24, "{stats}");
    let c = Console::start(d).await;
    let token = c.daemon.token.clone();
    c.login(&token).await;
    c.show(
        &format!("#/endpoints/{ep}"),
        "document.querySelectorAll('#ep-stats svg.chart').length === 3",
    )
    .await;
    c.page
        .wait_for_text("4 attempts · success rate 75.0%")
        .await;
    // This hour: one bar of successes and one of failures stacked, a 75% bar, latency points.
    for (selector, n) in [
        ("#ep-stats svg.chart:nth-of-type(1) rect.bar.ok", 1),
        ("#ep-stats figure:nth-child(1) rect.bar.bad", 1),
        ("#ep-stats figure:nth-child(2) rect.bar", 1),
    ] {
        let _ = n;
        let count = c
            .page
            .eval(&format!(
                "document.querySelectorAll({}).length",
                serde_json::to_string(selector).unwrap()
            ))
            .await;
        assert!(count.as_u64().unwrap() >= 1, "{selector}: {count}");
    }
    assert_eq!(
        c.page
            .eval("document.querySelectorAll('#ep-stats figure:nth-child(3) circle.dot, #ep-stats figure:nth-child(3) polyline').length")
            .await,
        json!(2)
    );
    // Recent deliveries: the three events, each delivered.
    c.page.wait_for_text("evt_chart_2").await;
    c.screenshot("endpoint-charts").await;
    c.assert_no_errors();
}

/// Markup in server data (an event's payload, an endpoint's description, a receiver's response
/// body) is shown as text: no element is made from it and nothing of it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_data_is_shown_as_text_never_as_markup() {
    const MARKUP: &str = "<img src=x onerror=\"window.pwned=1\"><b id=injected>bold</b>";
    let receiver = TestReceiver::start().await;
    receiver.set_default(Answer::status(200).body(MARKUP));
    let d = TestDaemon::start().await;
    let client = d.client();
    let (status, ep) = client
        .post(
            "/v1/endpoints",
            json!({"partner_id": "acme-health", "url": receiver.url("/hooks"), "event_types": ["*"],
                   "description": MARKUP}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ep}");
    let ep = ep["id"].as_str().unwrap().to_string();
    let (status, body) = client
        .post_event(
            "acme-health",
            "production",
            "evt_markup",
            "audit.completed",
            json!({"note": MARKUP}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    receiver.wait_for(1, Duration::from_secs(30)).await;
    let c = Console::start(d).await;
    let token = c.daemon.token.clone();
    c.login(&token).await;
    c.show(
        &format!("#/endpoints/{ep}"),
        "document.getElementById('ep-state')",
    )
    .await;
    c.page.wait_for_text("<b id=injected>bold</b>").await;
    c.show(
        "#/events/evt_markup",
        "document.querySelector('li.attempt details')",
    )
    .await;
    c.page
        .eval("document.querySelectorAll('details').forEach(d => d.open = true)")
        .await;
    c.page.wait_for_text("onerror=").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        c.page
            .eval("[document.querySelectorAll('#main img, #injected').length, window.pwned === undefined]")
            .await,
        json!([0, true])
    );
    c.screenshot("markup-as-text").await;
    c.assert_no_errors();
    c.assert_same_origin();
}
