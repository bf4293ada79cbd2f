//! The operator portal.
//!
//! Handler tests: the portal's router (`tower::ServiceExt::oneshot`, no
//! socket) on a real in-process coordinator, a real nats-server and
//! node-agents on libvirt's test driver. Every page and action, logins,
//! sessions, CSRF, permissions and refusals.
//!
//! End-to-end: `coordinator serve --http` driven by a real headless
//! Chromium through chromedriver (WebDriver); it saves screenshots of the
//! main pages to `docs/screenshots/`. Without chromium/chromedriver it skips
//! with a reason, except under `CI=true`, where it fails.

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use nodemaint_coordinator::config::CoordinatorConfig;
use nodemaint_coordinator::portal;
use nodemaint_coordinator::server::Coordinator;
use nodemaint_proto::model::{NodeStatus, VmState};
use nodemaint_tests::*;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

// ------------------------------------------------------------- harness

struct Env {
    fleet: Fleet,
    coord: Arc<Coordinator>,
    app: Router,
}

/// node1: the VFWs of cs1 and cs2, two user VMs and a VM its tenant shut
/// off; node2: cs3's VFW and a VM; node3: one VM.
fn add_agents(f: &mut Fleet) {
    f.add_agent(
        "node1",
        &[
            Dom::vfw("cs1"),
            Dom::vfw("cs2"),
            Dom::user("vm-a", "cs1"),
            Dom::user("vm-b", "cs2"),
            Dom::user("tenant-off", "cs1").off(),
        ],
    );
    f.add_agent("node2", &[Dom::vfw("cs3"), Dom::user("vm-c", "cs3")]);
    f.add_agent("node3", &[Dom::user("vm-d", "cs3")]);
}

/// A coordinator in this process (so the router can be called directly),
/// answering the API for the CLI too, with three test-driver agents.
async fn env() -> Env {
    env_with(|_| {}).await
}

/// [`env`] with the coordinator's config changed by `edit` first.
async fn env_with(edit: impl FnOnce(&mut CoordinatorConfig)) -> Env {
    let mut fleet = Fleet::start_bare();
    let mut cfg = CoordinatorConfig::load(&fleet.config).expect("config");
    cfg.nats_url = fleet.nats.url.clone();
    edit(&mut cfg);
    let coord = Coordinator::start(cfg).await.expect("coordinator starts");
    tokio::spawn(coord.clone().serve(std::future::pending::<()>()));
    tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(20), "coordinator to answer", || {
            fleet.cli("alice", &["node", "list"]).status.success()
        });
        add_agents(&mut fleet);
        fleet.wait_registered();
    });
    let app = portal::router(coord.clone()).await.expect("portal router");
    Env { fleet, coord, app }
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Resp {
    fn location(&self) -> String {
        self.headers
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn send(app: &Router, req: Request<Body>) -> Resp {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[derive(Clone)]
struct Sess {
    cookie: String,
    csrf: String,
}

async fn get(app: &Router, s: Option<&Sess>, path: &str) -> Resp {
    let mut b = Request::get(path);
    if let Some(s) = s {
        b = b.header(header::COOKIE, &s.cookie);
    }
    send(app, b.body(Body::empty()).unwrap()).await
}

async fn post(app: &Router, s: Option<&Sess>, path: &str, fields: &[(&str, &str)]) -> Resp {
    let mut b =
        Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(s) = s {
        b = b.header(header::COOKIE, &s.cookie);
    }
    send(app, b.body(Body::from(form(fields))).unwrap()).await
}

/// The CSRF token embedded in a page's forms.
fn csrf_of(page: &str) -> String {
    let i = page
        .find(r#"name="csrf" value=""#)
        .unwrap_or_else(|| panic!("no CSRF field in page: {page}"));
    let rest = &page[i + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// The login form's CSRF cookie (`name=value`) and hidden field, as a
/// browser gets them from `GET /login`.
async fn login_form_token(app: &Router) -> (String, String) {
    let r = get(app, None, "/login").await;
    assert_eq!(r.status, StatusCode::OK);
    let set = r.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(set.starts_with("nodemaint_login="), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let i = r
        .body
        .find(r#"name="login_csrf" value=""#)
        .expect("login CSRF field");
    let rest = &r.body[i + r#"name="login_csrf" value=""#.len()..];
    let token = rest[..rest.find('"').unwrap()].to_string();
    assert_eq!(cookie, format!("nodemaint_login={token}"));
    (cookie, token)
}

/// `POST /login` as the login page's form does (its CSRF cookie and
/// field), from `peer` when given.
async fn post_login(app: &Router, fields: &[(&str, &str)], peer: Option<&str>) -> Resp {
    let (cookie, token) = login_form_token(app).await;
    let mut fields = fields.to_vec();
    fields.push(("login_csrf", &token));
    let mut req = Request::post("/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::COOKIE, cookie)
        .body(Body::from(form(&fields)))
        .unwrap();
    if let Some(p) = peer {
        let addr: std::net::SocketAddr = p.parse().unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(addr));
    }
    send(app, req).await
}

async fn login(app: &Router, user: &str) -> Sess {
    let r = post_login(
        app,
        &[
            ("username", user),
            ("password", &format!("{user}-pw")),
            ("next", "/"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "login {user}: {}", r.body);
    let set = r.headers[header::SET_COOKIE].to_str().unwrap().to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    let page = get(
        app,
        Some(&Sess {
            cookie: cookie.clone(),
            csrf: String::new(),
        }),
        "/",
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    Sess {
        csrf: csrf_of(&page.body),
        cookie,
    }
}

/// Polls `/api/jobs/{id}` until the job ends; returns its record.
async fn wait_job(app: &Router, s: &Sess, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = get(app, Some(s), &format!("/api/jobs/{id}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let j = r.json();
        if ["SUCCEEDED", "FAILED", "ABORTED"].contains(&j["state"].as_str().unwrap_or("")) {
            return j;
        }
        assert!(Instant::now() < deadline, "job {id} did not end: {j}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn job_id_from(location: &str) -> String {
    location
        .strip_prefix("/jobs/")
        .unwrap_or_else(|| panic!("not a job location: {location:?}"))
        .to_string()
}

/// The part of a page between an element id and the end of its table.
fn section<'a>(page: &'a str, id: &str) -> &'a str {
    let i = page
        .find(&format!(r#"id="{id}""#))
        .unwrap_or_else(|| panic!("no #{id} in page"));
    let rest = &page[i..];
    &rest[..rest.find("</table>").unwrap_or(rest.len())]
}

/// Reads SSE frames until `stop` matches the text so far, or the timeout.
async fn read_sse(
    app: &Router,
    s: &Sess,
    path: &str,
    secs: u64,
    stop: impl Fn(&str) -> bool,
) -> String {
    let req = Request::get(path)
        .header(header::COOKIE, &s.cookie)
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()[header::CONTENT_TYPE].to_str().unwrap(),
        "text/event-stream"
    );
    let mut body = res.into_body();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !stop(&text) {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    text.push_str(&String::from_utf8_lossy(d));
                }
            }
            Ok(_) => break,
            Err(_) => panic!("SSE {path}: timed out; got so far:\n{text}"),
        }
    }
    text
}

fn status(c: &Coordinator, node: &str) -> NodeStatus {
    c.registry.get(node).unwrap().status
}

fn vm_state(c: &Coordinator, node: &str, vm: &str) -> VmState {
    c.registry
        .get(node)
        .unwrap()
        .domains
        .iter()
        .find(|d| d.name == vm)
        .unwrap_or_else(|| panic!("{vm} not on {node}"))
        .state
}

// ------------------------------------------------------ handler tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sessions_and_csrf() {
    let e = env().await;
    let app = &e.app;

    // Without a session: pages redirect to the login, API and events say 401.
    let r = get(app, None, "/stacks/node1").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/login?next=%2Fstacks%2Fnode1");
    assert_eq!(
        get(app, None, "/api/stacks").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(app, None, "/events/stacks").await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = post(app, None, "/stacks/node1/enable", &[("csrf", "x")]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // The login page.
    let r = get(app, None, "/login?next=/jobs").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains(r#"name="password""#) && r.body.contains(r#"value="/jobs""#));
    assert!(r.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));

    // Wrong password, unknown user, empty password: 401, no cookie.
    for (u, p) in [("alice", "wrong"), ("mallory", "mallory-pw"), ("alice", "")] {
        let r = post_login(app, &[("username", u), ("password", p)], None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{u}/{p}");
        assert!(r
            .headers
            .get_all(header::SET_COOKIE)
            .iter()
            .all(|c| !c.to_str().unwrap().starts_with("nodemaint_session")));
        assert!(
            r.body.contains("Unknown user name or wrong password"),
            "{}",
            r.body
        );
    }

    // Right password: an HttpOnly, SameSite=Strict session cookie and the
    // redirect to `next` (local paths only).
    let r = post_login(
        app,
        &[
            ("username", "alice"),
            ("password", "alice-pw"),
            ("next", "/jobs"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/jobs");
    let set = r.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(set.starts_with("nodemaint_session="), "{set}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(flag), "{flag} missing: {set}");
    }
    let r = post_login(
        app,
        &[
            ("username", "bob"),
            ("password", "bob-pw"),
            ("next", "//evil.example/"),
        ],
        None,
    )
    .await;
    assert_eq!(r.location(), "/");

    let alice = login(app, "alice").await;
    let bob = login(app, "bob").await;
    assert_ne!(alice.csrf, bob.csrf);
    let page = get(app, Some(&alice), "/").await;
    assert!(page.body.contains("alice") && page.body.contains("Level2"));

    // A forged cookie is no session.
    let forged = Sess {
        cookie: "nodemaint_session=0000".into(),
        csrf: alice.csrf.clone(),
    };
    assert_eq!(
        get(app, Some(&forged), "/").await.status,
        StatusCode::SEE_OTHER
    );

    // CSRF: another session's token, or none, is refused and changes nothing.
    let jobs_before = e.coord.jobs.list(0).total;
    for token in ["", bob.csrf.as_str(), "0123"] {
        let r = post(
            app,
            Some(&alice),
            "/stacks/node1/maintenance",
            &[
                ("csrf", token),
                ("mode", "stop"),
                ("ack_vfw_downtime", "yes"),
            ],
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "token {token:?}");
        assert!(r.body.contains("CSRF"), "{}", r.body);
    }
    assert_eq!(status(&e.coord, "node1"), NodeStatus::Enabled);
    assert_eq!(e.coord.jobs.list(0).total, jobs_before);

    // Logout needs the token too, then ends the session.
    let r = post(app, Some(&alice), "/logout", &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = post(app, Some(&alice), "/logout", &[("csrf", &alice.csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/login");
    assert!(r.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(
        get(app, Some(&alice), "/").await.status,
        StatusCode::SEE_OTHER
    );
    // Bob's session is unaffected.
    assert_eq!(get(app, Some(&bob), "/").await.status, StatusCode::OK);
    drop(e.fleet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_needs_its_csrf_token_is_throttled_and_redirects_locally_only() {
    let e = env_with(|c| {
        c.portal.login_failures_per_user = 5;
        c.portal.login_failures_per_address = 8;
    })
    .await;
    let app = &e.app;
    let no_session = |r: &Resp| {
        r.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .all(|c| !c.to_str().unwrap().starts_with("nodemaint_session"))
    };
    let right = |u: &'static str| [("username", u), ("password", leak(format!("{u}-pw")))];

    // CSRF: a right password posted without the login page's token (a
    // cross-site form), with a token but no cookie, or with another
    // browser's cookie, is refused 403 and logs no one in.
    let r = post(app, None, "/login", &right("alice")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(no_session(&r) && r.body.contains("CSRF"), "{}", r.body);
    let (cookie_a, token_a) = login_form_token(app).await;
    let (cookie_b, _) = login_form_token(app).await;
    assert_ne!(cookie_a, cookie_b);
    let mut with_token = right("alice").to_vec();
    with_token.push(("login_csrf", &token_a));
    for cookie in [None, Some(cookie_b.as_str())] {
        let mut b = Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, c);
        }
        let r = send(app, b.body(Body::from(form(&with_token))).unwrap()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "cookie {cookie:?}");
        assert!(no_session(&r));
    }
    let r = send(
        app,
        Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, &cookie_a)
            .body(Body::from(form(&with_token)))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);

    // next= leaves this origin in no spelling: `/<tab>/host` is `//host`
    // to a browser.
    for next in [
        "/\t/evil.example",
        "/%09/evil.example",
        "//evil.example",
        "/\\evil.example",
        "https://evil.example/",
    ] {
        let next = next.to_string();
        let r = post_login(
            app,
            &[("username", "bob"), ("password", "bob-pw"), ("next", &next)],
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER);
        assert_eq!(r.location(), "/", "next={next:?}");
        let page = get(app, None, &format!("/login?next={}", enc(&next))).await;
        assert!(page.body.contains(r#"name="next" value="/""#), "{next:?}");
    }
    let page = get(app, None, "/login?next=/%09/evil.example").await;
    assert!(page.body.contains(r#"name="next" value="/""#));

    // Throttling per user: five wrong passwords, then even the right one
    // is refused 429 with Retry-After, without a session.
    let me = Some("10.1.1.1:5000");
    for _ in 0..5 {
        let r = post_login(app, &[("username", "alice"), ("password", "guess")], me).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = post_login(app, &right("alice"), me).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    let retry: u64 = r.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&retry), "Retry-After {retry}");
    assert!(no_session(&r) && r.body.contains("Too many failed logins"));
    // From another address too: it is the user name that is throttled.
    let r = post_login(app, &right("alice"), Some("10.2.2.2:5000")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // Other users from the same address may still log in.
    let r = post_login(app, &right("bob"), me).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);

    // Throttling per address: three more failures under other names make
    // eight from 10.1.1.1; then carol (right password) is refused from
    // there, but not from elsewhere.
    for u in ["bob", "carol", "mallory"] {
        let r = post_login(app, &[("username", u), ("password", "guess")], me).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{u}");
    }
    let r = post_login(app, &right("carol"), me).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    let r = post_login(app, &right("carol"), Some("10.3.3.3:5000")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    drop(e.fleet);
}

/// Sessions live in a KV bucket: a login on one coordinator's portal is a
/// session on another coordinator's (sharing the NATS server), as after a
/// leader change; logging out on either ends it on both. With
/// `secure_cookies` the cookies are `Secure`; a session ends at its
/// absolute lifetime however active it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_shared_by_coordinators_secure_and_end_at_their_lifetime() {
    let e = env_with(|c| {
        c.portal.secure_cookies = true;
        c.portal.session_lifetime_s = 3;
    })
    .await;
    let a = &e.app;
    // A second coordinator on the same NATS (a standby: it does not serve
    // the API, its portal reads).
    let cfg_b = e.coord.cfg.clone();
    let coord_b = Coordinator::start(cfg_b).await.expect("second coordinator");
    let b = &portal::router(coord_b.clone()).await.unwrap();

    let (cookie, token) = login_form_token(a).await;
    let r = send(
        a,
        Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, &cookie)
            .body(Body::from(form(&[
                ("username", "alice"),
                ("password", "alice-pw"),
                ("login_csrf", &token),
            ])))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let logged_in = Instant::now();
    let cookies: Vec<String> = r
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let session = cookies
        .iter()
        .find(|c| c.starts_with("nodemaint_session="))
        .expect("session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Secure", "Max-Age=3"] {
        assert!(session.contains(flag), "{flag} missing: {session}");
    }
    assert!(
        cookies.iter().all(|c| c.contains("; Secure")),
        "{cookies:?}"
    );
    let sess = Sess {
        cookie: session.split(';').next().unwrap().to_string(),
        csrf: String::new(),
    };
    // The other coordinator's portal knows the session, CSRF token included.
    let on_a = get(a, Some(&sess), "/").await;
    let on_b = get(b, Some(&sess), "/").await;
    assert_eq!(on_b.status, StatusCode::OK, "{}", on_b.body);
    assert!(on_b.body.contains("alice"));
    assert_eq!(csrf_of(&on_a.body), csrf_of(&on_b.body));
    // The bucket's key is not the cookie's token.
    let kv = e
        .coord
        .link
        .js
        .get_key_value(e.coord.link.subjects.portal_sessions_bucket())
        .await
        .unwrap();
    let token = sess.cookie.split_once('=').unwrap().1;
    assert!(kv.get(token).await.unwrap().is_none());

    // Absolute lifetime (3 s here): used all along, it still ends.
    loop {
        let r = get(b, Some(&sess), "/").await;
        let age = logged_in.elapsed();
        if r.status == StatusCode::SEE_OTHER {
            assert!(age >= Duration::from_millis(2500), "ended after {age:?}");
            break;
        }
        assert_eq!(r.status, StatusCode::OK);
        assert!(age < Duration::from_secs(10), "session alive after {age:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get(a, Some(&sess), "/").await.status, StatusCode::SEE_OTHER);

    // Logout on one portal ends the session on the other.
    let bob = login(a, "bob").await;
    assert_eq!(get(b, Some(&bob), "/").await.status, StatusCode::OK);
    let r = post(b, Some(&bob), "/logout", &[("csrf", &bob.csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(get(a, Some(&bob), "/").await.status, StatusCode::SEE_OTHER);
    drop(e.fleet);
}

/// Reads until the server closes the connection; what it sent and how long
/// it took. Panics when it is still open after `within`.
async fn read_until_closed(
    s: &mut tokio::net::TcpStream,
    started: Instant,
    within: Duration,
) -> (String, Duration) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "connection still open after {within:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

/// The portal's server (not the router): a client that never finishes its
/// headers or its body is disconnected after the configured time, and
/// clients beyond the connection limit wait for a free place instead of
/// being served, so slow clients hold at most `max_connections` sockets
/// for at most the timeout each, and a normal request still gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_cannot_hold_the_portal() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let e = env_with(|c| {
        c.portal.header_timeout_s = 1;
        c.portal.body_timeout_s = 1;
        c.portal.max_connections = 2;
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(portal::serve_on(e.coord.clone(), listener));
    let limit = Duration::from_secs(8);

    // Half the headers, then nothing: closed after ~1 s.
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /login HTTP/1.1\r\nHost: portal\r\nUser-Agent: slo")
        .await
        .unwrap();
    let (_, took) = read_until_closed(&mut s, t, limit).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");

    // Nothing at all: closed too.
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    read_until_closed(&mut s, t, limit).await;

    // Headers, then only part of the promised body: 408, then closed.
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /login HTTP/1.1\r\nHost: portal\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nusername=al",
    )
    .await
    .unwrap();
    let (reply, took) = read_until_closed(&mut s, t, limit).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");

    // A body larger than any form: 413, closed.
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let big = vec![b'a'; 70 * 1024];
    s.write_all(
        format!(
            "POST /login HTTP/1.1\r\nHost: portal\r\nContent-Length: {}\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let _ = s.write_all(&big).await;
    let (reply, _) = read_until_closed(&mut s, t, limit).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");

    // Connection limit 2: two slow clients take both places; a third
    // client's complete request waits until the server cuts one of them
    // off, then is answered (queued, not served beyond the limit, not
    // starved).
    let t = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: por").await.unwrap();
        slow.push(s);
    }
    let normal = tokio::spawn(async move {
        let asked = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /login HTTP/1.1\r\nHost: portal\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        read_until_closed(&mut s, asked, Duration::from_secs(8)).await
    });
    for s in &mut slow {
        read_until_closed(s, t, limit).await;
    }
    let (reply, waited) = normal.await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        waited >= Duration::from_millis(500),
        "answered after {waited:?}: served beyond the connection limit"
    );
    // The places are free again.
    let asked = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /login HTTP/1.1\r\nHost: portal\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (reply, _) = read_until_closed(&mut s, asked, limit).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    drop(e.fleet);
}

/// One HTTP/1.1 exchange over TLS with the portal at `addr`, trusting only
/// the CA in `ca`; the whole response.
async fn https(addr: std::net::SocketAddr, ca: &std::path::Path, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{self, pki_types::pem::PemObject, pki_types::CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the portal");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("portal answers over TLS");
    String::from_utf8_lossy(&out).into_owned()
}

/// The `Set-Cookie` values of a raw HTTP response.
fn set_cookies(reply: &str) -> Vec<String> {
    reply
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("set-cookie")
                .then(|| v.trim().to_string())
        })
        .collect()
}

/// `[portal] tls_cert`/`tls_key`: the portal serves HTTPS (rustls) with a
/// certificate of a CA made by `deploy/nats/gen-tls` (openssl) in the test;
/// every cookie is `Secure`; the TLS handshake is bounded by the header
/// timeout; a half configuration or a missing file is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_serves_tls_with_secure_cookies() {
    let tls = tempfile::tempdir().unwrap();
    let gen = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/gen-tls");
    let out = std::process::Command::new(gen)
        .arg(tls.path())
        .arg("127.0.0.1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (cert, key, ca) = (
        tls.path().join("server.pem"),
        tls.path().join("server.key"),
        tls.path().join("ca.pem"),
    );
    let e = env_with(|c| {
        c.portal.tls_cert = Some(cert.clone());
        c.portal.tls_key = Some(key.clone());
        c.portal.header_timeout_s = 1;
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(portal::serve_on(e.coord.clone(), listener));

    // The login page over TLS: its CSRF cookie is Secure.
    let reply = https(
        addr,
        &ca,
        "GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let cookies = set_cookies(&reply);
    let login_cookie = cookies
        .iter()
        .find(|c| c.starts_with("nodemaint_login="))
        .unwrap_or_else(|| panic!("no login cookie: {cookies:?}"));
    assert!(login_cookie.contains("; Secure"), "{login_cookie}");
    let pair = login_cookie.split(';').next().unwrap();
    let token = pair.split_once('=').unwrap().1;

    // Logging in: the session cookie is Secure, HttpOnly, SameSite=Strict.
    let body = form(&[
        ("username", "alice"),
        ("password", "alice-pw"),
        ("login_csrf", token),
    ]);
    let reply = https(
        addr,
        &ca,
        &format!(
            "POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nCookie: {pair}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 303"), "{reply}");
    let cookies = set_cookies(&reply);
    let session = cookies
        .iter()
        .find(|c| c.starts_with("nodemaint_session="))
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"));
    for flag in ["; Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(session.contains(flag), "{flag} missing: {session}");
    }
    let session = session.split(';').next().unwrap();
    let reply = https(
        addr,
        &ca,
        &format!(
            "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nCookie: {session}\r\n\r\n"
        ),
    )
    .await;
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("alice"),
        "{reply}"
    );

    // Plain HTTP on the TLS port gets no page; a client that never starts
    // the handshake is cut off after the header timeout.
    {
        use tokio::io::AsyncWriteExt;
        let t = Instant::now();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (reply, _) = read_until_closed(&mut s, t, Duration::from_secs(8)).await;
        assert!(!reply.contains("HTTP/1.1 200"), "{reply}");
        let t = Instant::now();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        read_until_closed(&mut s, t, Duration::from_secs(8)).await;
    }

    // A certificate without its key, or a file that is not there: no start.
    let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let mut half = e.coord.cfg.portal.clone();
    half.tls_key = None;
    let err = portal::listen::serve(axum::Router::new(), bind().await, &half)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("tls_cert and tls_key"), "{err}");
    let mut missing = e.coord.cfg.portal.clone();
    missing.tls_cert = Some(tls.path().join("nope.pem"));
    let err = portal::listen::serve(axum::Router::new(), bind().await, &missing)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.pem"), "{err}");
    // The daemon does not start without its certificate either.
    let mut cfg = e.coord.cfg.clone();
    cfg.portal = missing;
    let path = e.fleet.dir.path().join("bad-tls.toml");
    write_coordinator_config(&path, &cfg);
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(bin("coordinator"))
            .args(["serve", "--config"])
            .arg(&path)
            .args(["--http", "127.0.0.1:0"])
            .env("NATS_URL", &e.fleet.nats.url)
            .env(INSECURE.0, INSECURE.1)
            .output()
            .unwrap()
    });
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nope.pem"), "{}", stderr(&out));
    drop(e.fleet);
}

/// A `&'static str` for a test's field tables.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_show_the_fleet() {
    let e = env().await;
    let app = &e.app;
    let alice = login(app, "alice").await;
    let bob = login(app, "bob").await;

    // Stacks: every node with status, VMs running/total, memory, boot time.
    let r = get(app, Some(&bob), "/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    for n in ["node1", "node2", "node3"] {
        assert!(r.body.contains(&format!(r#"<tr data-node="{n}">"#)), "{n}");
    }
    let row1 = &r.body[r.body.find(r#"data-node="node1""#).unwrap()..];
    let row1 = &row1[..row1.find("</tr>").unwrap()];
    assert!(row1.contains("ENABLED"), "{row1}");
    assert!(row1.contains("4 / 5"), "running/total: {row1}");
    assert!(row1.contains("896 MiB / 8192 MiB"), "memory: {row1}");
    assert!(row1.contains("Z</td>"), "boot time: {row1}");
    assert!(r.body.contains(r#"data-live="/events/stacks""#));

    // The same as JSON.
    let j = get(app, Some(&bob), "/api/stacks").await.json();
    let n1 = j
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node1")
        .unwrap();
    assert_eq!(n1["status"], "ENABLED");
    assert_eq!(n1["reachable"], true);
    assert_eq!(
        (n1["vms_running"].as_u64(), n1["vms_total"].as_u64()),
        (Some(4), Some(5))
    );
    assert_eq!(
        get(app, Some(&bob), "/api/stacks?node=nope").await.status,
        StatusCode::NOT_FOUND
    );

    // Live: the first SSE message carries the rendered table.
    let sse = read_sse(app, &bob, "/events/stacks", 10, |t| t.contains("\n\n")).await;
    assert!(sse.starts_with("event: fragments"), "{sse}");
    assert!(
        sse.contains("stacks-body") && sse.contains("node3"),
        "{sse}"
    );
    let sse = read_sse(app, &bob, "/events/stacks?node=node1", 10, |t| {
        t.contains("\n\n")
    })
    .await;
    assert!(
        sse.contains("system-vms-body") && sse.contains("cs2-vfw"),
        "{sse}"
    );
    assert_eq!(
        get(app, Some(&bob), "/events/stacks?node=nope")
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // Stack Details: user VMs and, separately, the VFWs.
    let r = get(app, Some(&alice), "/stacks/node1").await;
    assert_eq!(r.status, StatusCode::OK);
    let users = section(&r.body, "user-vms");
    let system = section(&r.body, "system-vms");
    for vm in ["vm-a", "vm-b", "tenant-off"] {
        assert!(
            users.contains(vm) && !system.contains(&format!(r#"data-vm="{vm}""#)),
            "{vm}"
        );
    }
    for vm in ["cs1-vfw", "cs2-vfw"] {
        assert!(
            system.contains(vm) && !users.contains(&format!(r#"data-vm="{vm}""#)),
            "{vm}"
        );
    }
    // The Actions menu and the confirm dialog: Move All (preferred, with the
    // planner's destinations) and Stop All (the VFW warning, the cloudspaces
    // and the acknowledgement).
    assert!(r
        .body
        .contains(r#"id="action-maintenance" data-open="maint-dialog""#));
    assert!(r.body.contains("Move All Virtual Machines"));
    assert!(r
        .body
        .contains(r#"<span class="badge pref">preferred</span>"#));
    assert!(
        r.body.contains("Planned destinations"),
        "plan preview missing"
    );
    assert!(r.body.contains("Stop All Virtual Machines"));
    let warn = &r.body[r.body.find(r#"id="stop-warning""#).unwrap()..];
    assert!(warn.contains("<li>cs1</li><li>cs2</li>"), "{warn}");
    assert!(warn.contains(r#"name="ack_vfw_downtime""#));
    // Enable is not offered for an ENABLED node, and says why.
    assert!(r.body.contains(r#"id="action-enable" disabled"#));
    assert!(!r.body.contains(r#"id="enable-dialog""#));

    // Level1: read-only; the actions are disabled and say what they need.
    let r = get(app, Some(&bob), "/stacks/node1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r
        .body
        .contains(r#"id="action-maintenance" disabled title="requires Level2 or Level3""#));
    assert!(r.body.contains("requires Level2 or Level3"));
    assert!(!r.body.contains(r#"id="maint-dialog""#));

    // Unknown node: 404 naming the known ones.
    let r = get(app, Some(&bob), "/stacks/node9").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(
        r.body.contains("unknown node") && r.body.contains("node1, node2, node3"),
        "{}",
        r.body
    );

    // Virtual Machines with filters; the VFWs one click away.
    let r = get(app, Some(&bob), "/vms").await;
    assert!(r.body.contains("8 VMs"), "{}", r.body);
    assert!(r.body.contains(r#"href="/vms?kind=vfw""#));
    let r = get(app, Some(&bob), "/vms?kind=vfw").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("3 VMs"));
    for vm in ["cs1-vfw", "cs2-vfw", "cs3-vfw"] {
        assert!(r.body.contains(&format!(r#"data-vm="{vm}""#)), "{vm}");
    }
    assert!(!r.body.contains(r#"data-vm="vm-a""#));
    let r = get(app, Some(&bob), "/vms?node=node1&kind=user").await;
    assert!(r.body.contains("3 VMs") && r.body.contains(r#"data-vm="tenant-off""#));
    let r = get(app, Some(&bob), "/vms?cloudspace=cs3").await;
    assert!(r.body.contains("3 VMs"), "{}", r.body);
    let r = get(app, Some(&bob), "/vms?name=VM-&state=running").await;
    assert!(r.body.contains("4 VMs"), "{}", r.body);
    let r = get(app, Some(&bob), "/vms?kind=router").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("unknown kind"));
    let r = get(app, Some(&bob), "/vms?node=node9").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.contains("unknown node"));

    // Cloudspaces: where each VFW runs; Move VFW offers only accepted nodes.
    let r = get(app, Some(&bob), "/cloudspaces").await;
    for cs in ["cs1", "cs2", "cs3"] {
        assert!(
            r.body.contains(&format!(r#"data-cloudspace="{cs}""#)),
            "{cs}"
        );
    }
    let r = get(app, Some(&alice), "/cloudspaces/cs3").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains(r#"<dd id="vfw-name">cs3-vfw</dd>"#));
    assert!(r.body.contains(r#"href="/stacks/node2""#));
    let select = &r.body[r.body.find(r#"id="to-node""#).unwrap()..];
    let select = &select[..select.find("</select>").unwrap()];
    assert!(
        !select.contains(r#"value="node2""#),
        "current node offered: {select}"
    );
    assert!(select.contains(r#"value="node3""#), "{select}");
    let r = get(app, Some(&bob), "/cloudspaces/cs3").await;
    assert!(r.body.contains(r#"id="move-vfw-submit" disabled"#));
    assert!(r.body.contains("requires Level2 or Level3"));
    assert_eq!(
        get(app, Some(&bob), "/cloudspaces/nope").await.status,
        StatusCode::NOT_FOUND
    );

    // Jobs: empty yet; unknown job 404.
    let r = get(app, Some(&bob), "/jobs").await;
    assert!(r.body.contains("No job yet"));
    assert_eq!(
        get(app, Some(&bob), "/jobs/nope").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(app, Some(&bob), "/api/jobs/nope").await.status,
        StatusCode::NOT_FOUND
    );

    // Assets and the fallback.
    let r = get(app, None, "/static/portal.js").await;
    assert!(r.body.contains("EventSource"));
    let r = get(app, None, "/static/portal.css").await;
    assert!(r.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/css"));
    assert_eq!(get(app, None, "/nope").await.status, StatusCode::NOT_FOUND);
    drop(e.fleet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_all_and_enable_with_refusals() {
    let e = env().await;
    let (app, c) = (&e.app, &e.coord);
    let alice = login(app, "alice").await;
    let bob = login(app, "bob").await;
    let form_stop = |s: &Sess, ack: bool| {
        let mut f = vec![("csrf", s.csrf.clone()), ("mode", "stop".to_string())];
        if ack {
            f.push(("ack_vfw_downtime", "yes".into()));
        }
        f
    };
    let post_f = |s: Sess, path: &'static str, f: Vec<(&'static str, String)>| async move {
        let fields: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
        post(app, Some(&s), path, &fields).await
    };

    // Level1: refused by the API (403), nothing changes.
    let r = post_f(
        bob.clone(),
        "/stacks/node1/maintenance",
        form_stop(&bob, true),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(
        r.body.contains("Level2 or Level3 is required"),
        "{}",
        r.body
    );
    assert!(r.body.contains("Nothing was changed"));
    assert_eq!(status(c, "node1"), NodeStatus::Enabled);
    assert_eq!(c.jobs.list(0).total, 0);

    // Stop All without the acknowledgement: 409 naming the cloudspaces.
    let r = post_f(
        alice.clone(),
        "/stacks/node1/maintenance",
        form_stop(&alice, false),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(
        r.body.contains("cs1, cs2") && r.body.contains("VFW"),
        "{}",
        r.body
    );
    assert_eq!(status(c, "node1"), NodeStatus::Enabled);
    assert_eq!(c.jobs.list(0).total, 0);

    // No mode, or an unknown node: 400 and 404.
    let r = post(
        app,
        Some(&alice),
        "/stacks/node1/maintenance",
        &[("csrf", &alice.csrf)],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("give a mode"), "{}", r.body);
    let r = post_f(
        alice.clone(),
        "/stacks/node9/maintenance",
        form_stop(&alice, true),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.contains("unknown node"), "{}", r.body);
    let r = post(
        app,
        Some(&alice),
        "/stacks/node1/enable",
        &[("csrf", &alice.csrf)],
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.body.contains("not in maintenance"), "{}", r.body);
    assert_eq!(c.jobs.list(0).total, 0);

    // Stop All, acknowledged: accepted as a job recorded with alice.
    let r = post_f(
        alice.clone(),
        "/stacks/node1/maintenance",
        form_stop(&alice, true),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let id = job_id_from(&r.location());
    let page = get(app, Some(&bob), &format!("/jobs/{id}")).await;
    assert_eq!(page.status, StatusCode::OK);
    let job = wait_job(app, &alice, &id).await;
    assert_eq!(job["state"], "SUCCEEDED", "{job}");
    assert_eq!(job["user"], "alice");
    assert_eq!(job["kind"], "maintenance.start");
    assert_eq!(status(c, "node1"), NodeStatus::Maintenance);
    wait_until("node1's VMs to shut off", 20, || {
        ["cs1-vfw", "cs2-vfw", "vm-a", "vm-b"]
            .iter()
            .all(|vm| vm_state(c, "node1", vm) == VmState::Shutoff)
    })
    .await;

    // The job view: end report, journal; its event stream ends at once.
    let page = get(app, Some(&bob), &format!("/jobs/{id}")).await;
    assert!(page.body.contains(r#"id="job-end""#) && page.body.contains("SUCCEEDED"));
    assert!(page.body.contains(r#"id="report-done""#));
    assert!(page.body.contains("vm-a") && page.body.contains("alice"));
    let sse = read_sse(app, &bob, &format!("/events/jobs/{id}"), 10, |t| {
        t.contains("event: end")
    })
    .await;
    assert!(sse.contains("job-report"), "{sse}");
    let r = get(app, Some(&bob), "/jobs").await;
    assert!(
        r.body.contains(&format!(r#"data-job="{id}""#)) && r.body.contains("maintenance.start")
    );

    // Wrong state now: a second maintenance is refused (a stale form).
    let r = post_f(
        alice.clone(),
        "/stacks/node1/maintenance",
        form_stop(&alice, true),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.body.contains("already in maintenance"), "{}", r.body);

    // Stack Details: MAINTENANCE; Enable says which VMs restart (not the
    // one its tenant had shut off).
    let r = get(app, Some(&alice), "/stacks/node1").await;
    assert!(r.body.contains("MAINTENANCE"));
    assert!(r
        .body
        .contains(r#"id="action-enable" data-open="enable-dialog""#));
    let restart = &r.body[r.body.find(r#"id="enable-restart""#).unwrap()..];
    let restart = &restart[..restart.find("</ul>").unwrap()];
    for vm in ["cs1-vfw", "cs2-vfw", "vm-a", "vm-b"] {
        assert!(restart.contains(vm), "{vm} not announced: {restart}");
    }
    assert!(!restart.contains("tenant-off"));
    assert!(r.body.contains(r#"id="action-maintenance" disabled"#));

    // Enable: Level1 refused; alice's restarts exactly those VMs.
    let r = post(
        app,
        Some(&bob),
        "/stacks/node1/enable",
        &[("csrf", &bob.csrf)],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(status(c, "node1"), NodeStatus::Maintenance);
    let r = post(
        app,
        Some(&alice),
        "/stacks/node1/enable",
        &[("csrf", &alice.csrf)],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let id = job_id_from(&r.location());
    let job = wait_job(app, &alice, &id).await;
    assert_eq!(job["state"], "SUCCEEDED", "{job}");
    assert_eq!(
        (job["kind"].as_str(), job["user"].as_str()),
        (Some("node.enable"), Some("alice"))
    );
    assert_eq!(status(c, "node1"), NodeStatus::Enabled);
    wait_until("node1's VMs to run again", 20, || {
        ["cs1-vfw", "cs2-vfw", "vm-a", "vm-b"]
            .iter()
            .all(|vm| vm_state(c, "node1", vm) == VmState::Running)
    })
    .await;
    assert_eq!(vm_state(c, "node1", "tenant-off"), VmState::Shutoff);
    let r = post(
        app,
        Some(&alice),
        "/stacks/node1/enable",
        &[("csrf", &alice.csrf)],
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    drop(e.fleet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_all_and_move_vfw_end_with_their_reports() {
    let e = env().await;
    let (app, c) = (&e.app, &e.coord);
    let carol = login(app, "carol").await; // Level3

    // Move All on node2: the test driver cannot migrate, so the job ends
    // FAILED with a report naming each VM not moved; the node stays in
    // MAINTENANCE and every VM still runs exactly once.
    let r = post(
        app,
        Some(&carol),
        "/stacks/node2/maintenance",
        &[("csrf", &carol.csrf), ("mode", "move")],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let id = job_id_from(&r.location());
    // Follow it live: fragments until the end event.
    let sse = read_sse(app, &carol, &format!("/events/jobs/{id}"), 120, |t| {
        t.contains("event: end")
    })
    .await;
    assert!(
        sse.contains("job-progress-body") && sse.contains("cs3-vfw"),
        "{sse}"
    );
    assert!(
        sse.contains("report-not-done"),
        "no failure report in the stream: {sse}"
    );
    let job = wait_job(app, &carol, &id).await;
    assert_eq!(job["state"], "FAILED", "{job}");
    assert_eq!(job["user"], "carol");
    let not_done: Vec<&str> = job["report"]["not_done"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["vm"].as_str().unwrap())
        .collect();
    assert!(
        not_done.contains(&"vm-c") && not_done.contains(&"cs3-vfw"),
        "{job}"
    );
    assert_eq!(status(c, "node2"), NodeStatus::Maintenance);
    let page = get(app, Some(&carol), &format!("/jobs/{id}")).await;
    assert!(page.body.contains(r#"id="report-not-done""#) && page.body.contains("FAILED"));
    let r = post(
        app,
        Some(&carol),
        "/stacks/node2/enable",
        &[("csrf", &carol.csrf)],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let job = wait_job(app, &carol, &job_id_from(&r.location())).await;
    assert_eq!(job["state"], "SUCCEEDED", "{job}");

    // Move VFW: to a node the planner accepts, the job is accepted (and
    // fails on the test driver, saying so); to a bad target, refused.
    let r = post(
        app,
        Some(&carol),
        "/cloudspaces/cs3/move-vfw",
        &[("csrf", &carol.csrf), ("to_node", "node9")],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = post(
        app,
        Some(&carol),
        "/cloudspaces/cs3/move-vfw",
        &[("csrf", &carol.csrf), ("to_node", "node2")],
    )
    .await;
    assert!(r.status.is_client_error(), "{}: {}", r.status, r.body);
    assert!(r.body.contains("node2"), "{}", r.body);
    let r = post(
        app,
        Some(&carol),
        "/cloudspaces/nope/move-vfw",
        &[("csrf", &carol.csrf), ("to_node", "node3")],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = post(
        app,
        Some(&carol),
        "/cloudspaces/cs3/move-vfw",
        &[("csrf", &carol.csrf), ("to_node", "node3")],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let job = wait_job(app, &carol, &job_id_from(&r.location())).await;
    assert_eq!(job["kind"], "vm.move");
    assert_eq!(job["user"], "carol");
    assert_eq!(
        job["state"], "FAILED",
        "the test driver cannot migrate: {job}"
    );
    // Still on node2, once.
    assert_eq!(c.registry.find_vm("cs3-vfw").len(), 1);
    assert_eq!(c.registry.find_vm("cs3-vfw")[0].0.name, "node2");
    drop(e.fleet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_can_be_aborted_by_operators_only() {
    let e = env().await;
    let (app, c) = (&e.app, &e.coord);
    // A job the executor is not running (so it stays RUNNING while the
    // page and the action are checked); the abort goes through the API.
    let job = nodemaint_coordinator::jobs::Job::new(
        nodemaint_coordinator::jobs::JobSpec::Drain(Default::default()),
        "carol",
        Some("node3"),
    );
    c.jobs.create(&job).await.unwrap();
    let bob = login(app, "bob").await; // Level1
    let page = get(app, Some(&bob), &format!("/jobs/{}", job.id)).await;
    assert!(!page.body.contains(r#"id="abort-submit""#), "{}", page.body);
    let r = post(
        app,
        Some(&bob),
        &format!("/jobs/{}/abort", job.id),
        &[("csrf", &bob.csrf)],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);

    let carol = login(app, "carol").await; // Level3
    let page = get(app, Some(&carol), &format!("/jobs/{}", job.id)).await;
    assert!(page.body.contains(r#"id="abort-submit""#), "{}", page.body);
    let r = post(
        app,
        Some(&carol),
        &format!("/jobs/{}/abort", job.id),
        &[("csrf", &carol.csrf)],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let j = c.jobs.get(&job.id).await.unwrap();
    assert_eq!(j.stop_reason.as_deref(), Some("aborted by carol"));
    assert!(
        j.steps
            .iter()
            .any(|s| s.message == "stop requested: aborted by carol"),
        "{:?}",
        j.steps
    );
    assert_eq!(c.stops.reason(&job.id).as_deref(), Some("aborted by carol"));
    // A finished job: refused, saying so.
    c.jobs
        .finish(
            &job.id,
            nodemaint_coordinator::jobs::JobState::Aborted,
            "x".into(),
        )
        .await;
    let r = post(
        app,
        Some(&carol),
        &format!("/jobs/{}/abort", job.id),
        &[("csrf", &carol.csrf)],
    )
    .await;
    assert!(r.status.is_client_error(), "{}", r.status);
    assert!(r.body.contains("already ended"), "{}", r.body);
    drop(e.fleet);
}

/// Rolling maintenance, checks and the overview at the handler level:
/// every refusal (viewer, stale form, bad input, wrong state, unknown run)
/// answers with a page saying why and changes nothing; operators pause,
/// resume and abort a run through the API's rolling.control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_checks_and_overview_refuse_what_they_must() {
    use nodemaint_coordinator::jobs::{self, Job, JobSpec, JobState};
    let e = env().await;
    let (app, c) = (&e.app, &e.coord);
    let bob = login(app, "bob").await; // Level1
    let alice = login(app, "alice").await; // Level2
    let rolling_count = || {
        c.jobs
            .list(1000)
            .jobs
            .iter()
            .filter(|j| matches!(j.spec, JobSpec::Rolling(_)))
            .count()
    };

    // Anyone reads the overview and the rolling list.
    let r = get(app, Some(&bob), "/overview").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains(r#"id="chart-memory""#) && r.body.contains("node1"));
    let r = get(app, Some(&bob), "/rolling").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("requires Level2 or Level3"), "{}", r.body);
    assert_eq!(
        get(app, None, "/overview").await.status,
        StatusCode::SEE_OTHER
    );

    // Start: refused for a viewer, a stale form, bad input, an unknown node.
    let start = |csrf: &str, extra: &[(&'static str, &'static str)]| {
        let mut f: Vec<(&str, String)> = vec![("csrf", csrf.to_string())];
        f.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        f
    };
    type Case<'a> = (&'a Sess, Vec<(&'a str, String)>, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (
            &bob,
            start(&bob.csrf, &[("node", "node3"), ("reboot", "continue")]),
            StatusCode::FORBIDDEN,
            "Level2 or Level3",
        ),
        (
            &alice,
            start("stale", &[("node", "node3"), ("reboot", "continue")]),
            StatusCode::FORBIDDEN,
            "CSRF",
        ),
        (
            &alice,
            start(
                &alice.csrf,
                &[("node", "node3"), ("max_unavailable", "abc")],
            ),
            StatusCode::BAD_REQUEST,
            "max unavailable",
        ),
        (
            &alice,
            start(
                &alice.csrf,
                &[
                    ("node", "node3"),
                    ("reboot", "continue"),
                    ("deadline", "999999999999999999d"),
                ],
            ),
            StatusCode::BAD_REQUEST,
            "deadline",
        ),
        (
            &alice,
            start(&alice.csrf, &[("node", "nope"), ("reboot", "continue")]),
            StatusCode::NOT_FOUND,
            "nope",
        ),
    ];
    for (who, fields, want, says) in cases {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = post(app, Some(who), "/rolling/start", &fields).await;
        assert_eq!(r.status, want, "{fields:?}: {}", r.body);
        assert!(r.body.contains(says), "{fields:?}: {}", r.body);
    }
    assert_eq!(rolling_count(), 0, "nothing started");

    // A run the executor is not running (it stays where it is put).
    let job = Job::new(
        JobSpec::Rolling(jobs::Rolling {
            nodes: vec!["node3".into()],
            groups: vec![vec!["node3".into()]],
            max_unavailable: 1,
            wait_for_continue: true,
            reboot_timeout_s: 900,
            ..Default::default()
        }),
        "carol",
        None,
    );
    c.jobs.create(&job).await.unwrap();
    let at = |what: &str| format!("/rolling/{}/{what}", job.id);
    let page = get(app, Some(&bob), &format!("/rolling/{}", job.id)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains(r#"id="rolling-pause" disabled"#),
        "{}",
        page.body
    );
    assert!(page.body.contains(r#"data-node="node3""#));
    let r = post(app, Some(&bob), &at("pause"), &[("csrf", &bob.csrf)]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = post(app, Some(&alice), &at("resume"), &[("csrf", &alice.csrf)]).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(r.body.contains("cannot resume"), "{}", r.body);
    let r = post(app, Some(&alice), &at("continue"), &[("csrf", &alice.csrf)]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = post(
        app,
        Some(&alice),
        &at("continue"),
        &[("csrf", &alice.csrf), ("node", "node3")],
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "not waiting: {}", r.body);
    let r = post(
        app,
        Some(&alice),
        &at("frobnicate"),
        &[("csrf", &alice.csrf)],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(c.jobs.get(&job.id).await.unwrap().state, JobState::Running);

    let r = post(app, Some(&alice), &at("pause"), &[("csrf", &alice.csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location(), format!("/rolling/{}", job.id));
    assert_eq!(c.jobs.get(&job.id).await.unwrap().state, JobState::Paused);
    let r = post(app, Some(&alice), &at("resume"), &[("csrf", &alice.csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(c.jobs.get(&job.id).await.unwrap().state, JobState::Running);
    let r = post(app, Some(&alice), &at("abort"), &[("csrf", &alice.csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let j = c.jobs.get(&job.id).await.unwrap();
    assert_eq!(j.state, JobState::Aborted);
    assert_eq!(j.stop_reason.as_deref(), Some("aborted by alice"));
    let page = get(app, Some(&alice), &format!("/rolling/{}", job.id)).await;
    assert!(page.body.contains("has ended") && !page.body.contains("data-live"));
    // Not a rolling run: unknown here.
    assert_eq!(
        get(app, Some(&bob), "/rolling/nope").await.status,
        StatusCode::NOT_FOUND
    );
    let r = post(
        app,
        Some(&alice),
        "/rolling/nope/pause",
        &[("csrf", &alice.csrf)],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);

    // Checks: starting services is for operators; a bad value is refused.
    let page = get(app, Some(&bob), "/stacks/node1").await;
    assert!(page.body.contains(r#"id="checks""#) && page.body.contains("No check has run"));
    let r = post(
        app,
        Some(&bob),
        "/stacks/node1/checks",
        &[("csrf", &bob.csrf), ("start_failed", "yes")],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = post(
        app,
        Some(&alice),
        "/stacks/node1/checks",
        &[("csrf", &alice.csrf), ("start_failed", "maybe")],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = post(
        app,
        Some(&alice),
        "/stacks/nope/checks",
        &[("csrf", &alice.csrf)],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert!(
        !c.jobs
            .list(1000)
            .jobs
            .iter()
            .any(|j| matches!(j.spec, JobSpec::Check(_))),
        "no check job from a refusal"
    );
    drop(e.fleet);
}

#[test]
fn hash_password_cli_makes_hashes_the_portal_accepts() {
    use std::io::Write;
    let mut child = std::process::Command::new(bin("coordinator"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret pass\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    let hash = hash.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(portal::verify_password("s3cret pass", hash));
    assert!(!portal::verify_password("s3cret", hash));
    // Each hash has its own salt.
    assert_ne!(hash, portal::hash_password("s3cret pass").unwrap());
}

// --------------------------------------------- headless Chromium (E2E)

mod browser {
    use super::*;
    use fantoccini::{Client, ClientBuilder, Locator};

    const CHROMIUM: &str = "/usr/bin/chromium";
    const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

    fn screenshots() -> std::path::PathBuf {
        let d = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// chromedriver on a free port and a WebDriver session of a headless
    /// Chromium with its own fresh profile. `None` (skip) when Chromium is
    /// not installed, unless under CI.
    async fn chrome(dir: &std::path::Path) -> Option<(Proc, Client)> {
        let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
            .into_iter()
            .filter(|p| !std::path::Path::new(p).exists())
            .collect();
        if !missing.is_empty() {
            let why = format!(
                "{} missing: `apt-get install chromium chromium-driver` (deploy/setup.sh does)",
                missing.join(", ")
            );
            assert!(!in_ci(), "under CI the browser tests must run: {why}");
            eprintln!("SKIPPED browser test: {why}");
            return None;
        }
        // Port 0: chromedriver picks a free one and says which.
        let mut driver = Proc::spawn(
            "chromedriver",
            std::process::Command::new(CHROMEDRIVER).arg("--port=0"),
            dir.join("chromedriver.log"),
        );
        let port: u16 = tokio::task::block_in_place(|| {
            wait_for_log(
                &mut driver,
                Duration::from_secs(20),
                "chromedriver to listen",
                |log| {
                    let rest = log.split("started successfully on port ").nth(1)?;
                    rest.split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse()
                        .ok()
                },
            )
        });
        let profile = dir.join(format!("chrome-profile-{port}"));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("WebDriver session: {e}"));
        Some((driver, client))
    }

    async fn shot(b: &Client, name: &str) {
        let png = b.screenshot().await.expect("screenshot");
        std::fs::write(screenshots().join(name), png).unwrap();
    }

    /// A live update replaced the element between finding and reading it:
    /// find it again (bounded).
    fn stale(e: &fantoccini::error::CmdError, attempt: u32) -> bool {
        attempt < 50 && e.to_string().contains("stale element")
    }

    async fn text(b: &Client, css: &str) -> String {
        for attempt in 0.. {
            let el = b
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("{css}: {e}"));
            match el.text().await {
                Ok(t) => return t,
                Err(e) if stale(&e, attempt) => {}
                Err(e) => panic!("{css}: {e}"),
            }
        }
        unreachable!()
    }

    /// Waits until the element's text contains `want` (live updates).
    async fn wait_text(b: &Client, css: &str, want: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let t = match b.find(Locator::Css(css)).await {
                Ok(el) => el.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if t.contains(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css}: waited {secs} s for {want:?}; text is {t:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn login(b: &Client, base: &str, user: &str) {
        b.goto(&format!("{base}/")).await.unwrap();
        // Redirected to the login page.
        assert!(b.current_url().await.unwrap().path().starts_with("/login"));
        b.find(Locator::Css("#username"))
            .await
            .unwrap()
            .send_keys(user)
            .await
            .unwrap();
        b.find(Locator::Css("#password"))
            .await
            .unwrap()
            .send_keys(&format!("{user}-pw"))
            .await
            .unwrap();
        b.find(Locator::Css("#login"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("#stacks"))
            .await
            .expect("Stacks after login");
    }

    async fn logout(b: &Client) {
        b.find(Locator::Css("header .user button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("#username"))
            .await
            .unwrap();
    }

    /// Opens the Actions menu and one of its dialogs.
    async fn open_action(b: &Client, item: &str) {
        b.find(Locator::Css("#actions summary"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.find(Locator::Css(item))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    /// On a job view: waits for the live view to reach the job's end.
    async fn wait_job_end(b: &Client, secs: u64) -> String {
        b.wait()
            .at_most(Duration::from_secs(secs))
            .for_element(Locator::Css("#job-end"))
            .await
            .expect("job view reaches its end");
        text(b, "#job-end").await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn browser_end_to_end() {
        let (mut fleet, base) = tokio::task::block_in_place(Fleet::start_with_portal);
        let Some((_driver, b)) = chrome(fleet.dir.path()).await else {
            return;
        };
        tokio::task::block_in_place(|| {
            add_agents(&mut fleet);
            fleet.wait_registered();
        });
        // Close the browser whatever happens, then report the failure.
        let res =
            futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(flow(&b, &fleet, &base)))
                .await;
        let _ = b.close().await;
        if let Err(panic) = res {
            eprintln!("coordinator log:\n{}", fleet.coordinator_log());
            std::panic::resume_unwind(panic);
        }
    }

    async fn flow(b: &Client, fleet: &Fleet, base: &str) {
        // --- Level1: read-only, actions disabled, a POST refused.
        b.goto(&format!("{base}/login")).await.unwrap();
        shot(b, "login.png").await;
        login(b, base, "bob").await;
        b.goto(&format!("{base}/stacks/node1")).await.unwrap();
        let m = b.find(Locator::Css("#action-maintenance")).await.unwrap();
        assert!(
            m.attr("disabled").await.unwrap().is_some(),
            "bob may not act"
        );
        assert!(text(b, "#needs-operator")
            .await
            .contains("requires Level2 or Level3"));
        b.find(Locator::Css("#actions summary"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        shot(b, "stack-details-level1.png").await;
        // A hand-made POST with bob's own (valid) CSRF token: the API refuses.
        b.execute(
            r#"const f = document.createElement('form');
               f.method = 'post'; f.action = '/stacks/node1/maintenance';
               for (const [k, v] of [['csrf', document.querySelector('input[name=csrf]').value],
                                     ['mode', 'stop'], ['ack_vfw_downtime', 'yes']]) {
                 const i = document.createElement('input'); i.type = 'hidden'; i.name = k; i.value = v; f.appendChild(i);
               }
               document.body.appendChild(f); f.submit();"#,
            vec![],
        )
        .await
        .unwrap();
        b.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("#error"))
            .await
            .unwrap();
        let err = text(b, "#error").await;
        assert!(
            err.contains("403") && err.contains("Level2 or Level3"),
            "{err}"
        );
        logout(b).await;
        assert_eq!(
            fleet.cli_json("bob", &["node", "show", "node1"])["node"]["status"],
            "ENABLED"
        );

        // --- Level2: Stacks, Stack Details, Put in Maintenance with Stop All.
        login(b, base, "alice").await;
        wait_text(b, "#stacks-body", "node3", 10).await;
        wait_text(b, "#live", "live", 10).await;
        shot(b, "stacks.png").await;
        b.find(Locator::LinkText("node1"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("#system-vms"))
            .await
            .unwrap();
        assert!(text(b, "#system-vms").await.contains("cs1-vfw"));
        assert!(text(b, "#user-vms").await.contains("vm-a"));
        open_action(b, "#action-maintenance").await;
        let dialog = b.find(Locator::Css("#maint-dialog")).await.unwrap();
        assert!(dialog.is_displayed().await.unwrap());
        assert!(text(b, "#maint-dialog")
            .await
            .contains("Move All Virtual Machines"));
        // The warning is shown for Stop All only.
        assert!(!b
            .find(Locator::Css("#stop-warning"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap());
        shot(b, "stack-details-maintenance-dialog.png").await;
        b.find(Locator::Css("#mode-stop"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        assert!(b
            .find(Locator::Css("#stop-warning"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap());
        let warning = text(b, "#stop-warning").await;
        assert!(
            warning.contains("cs1") && warning.contains("cs2"),
            "{warning}"
        );
        shot(b, "stack-details-stop-all-warning.png").await;
        // Without the acknowledgement the browser does not submit.
        b.find(Locator::Css("#maint-submit"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(b
            .current_url()
            .await
            .unwrap()
            .path()
            .starts_with("/stacks/node1"));
        b.find(Locator::Css("#ack-vfw"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.find(Locator::Css("#maint-submit"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        // The job view follows the job to its end.
        b.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("#job-progress"))
            .await
            .unwrap();
        assert!(b.current_url().await.unwrap().path().starts_with("/jobs/"));
        let end = wait_job_end(b, 60).await;
        assert!(end.contains("SUCCEEDED"), "{end}");
        // Abort is offered while the job runs only: the live page drops it
        // (on the stream's end, which follows the last fragment).
        let deadline = Instant::now() + Duration::from_secs(10);
        while b.find(Locator::Css("#abort-form")).await.is_ok() {
            assert!(Instant::now() < deadline, "an ended job still offers Abort");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(text(b, "#job-progress").await.contains("100%"));
        assert!(text(b, "#job-facts").await.contains("alice"));
        shot(b, "job-view-stop-all.png").await;

        // The node is in MAINTENANCE and its VMs shut off (live updates).
        b.find(Locator::Css("#job-facts a[href='/stacks/node1']"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(b, "#node-badges", "MAINTENANCE", 10).await;
        wait_text(b, "#system-vms-body", "SHUTOFF", 20).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let t = format!(
                "{}{}",
                text(b, "#user-vms-body").await,
                text(b, "#system-vms-body").await
            );
            if !t.contains("RUNNING") {
                break;
            }
            assert!(Instant::now() < deadline, "VMs still running: {t}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Enable: the dialog says what restarts; then everything runs again.
        open_action(b, "#action-enable").await;
        let restart = text(b, "#enable-restart").await;
        for vm in ["cs1-vfw", "cs2-vfw", "vm-a", "vm-b"] {
            assert!(restart.contains(vm), "{vm}: {restart}");
        }
        assert!(!restart.contains("tenant-off"));
        shot(b, "stack-details-enable-dialog.png").await;
        b.find(Locator::Css("#enable-submit"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let end = wait_job_end(b, 60).await;
        assert!(end.contains("SUCCEEDED"), "{end}");
        b.goto(&format!("{base}/stacks/node1")).await.unwrap();
        wait_text(b, "#node-badges", "ENABLED", 10).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let t = text(b, "#system-vms-body").await;
            let u = text(b, "#user-vms-body").await;
            if !t.contains("SHUTOFF") && u.matches("RUNNING").count() == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "VMs not restarted: {t} {u}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        shot(b, "stack-details.png").await;

        // Virtual Machines filtered on the firewalls: one click.
        b.find(Locator::LinkText("Virtual Machines"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.find(Locator::Css("#q-vfw"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(b, "#vm-count", "3 VMs", 10).await;
        let t = text(b, "#vms").await;
        assert!(
            t.contains("cs1-vfw") && t.contains("cs3-vfw") && !t.contains("vm-a"),
            "{t}"
        );
        shot(b, "vms-vfw.png").await;

        // Cloudspace with Move VFW.
        b.find(Locator::LinkText("cs3"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(b, "#vfw-node", "node2", 10).await;
        shot(b, "cloudspace.png").await;

        // Move All on node2: the test driver cannot migrate; the job view
        // still reaches its end, with the report of what was not moved.
        b.goto(&format!("{base}/stacks/node2")).await.unwrap();
        open_action(b, "#action-maintenance").await;
        b.find(Locator::Css("#maint-submit"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let end = wait_job_end(b, 120).await;
        assert!(end.contains("FAILED"), "{end}");
        let report = text(b, "#report-not-done").await;
        assert!(
            report.contains("vm-c") && report.contains("cs3-vfw"),
            "{report}"
        );
        shot(b, "job-view-move-all-failed.png").await;

        // Jobs: all three, with their users.
        b.find(Locator::LinkText("Jobs"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let t = text(b, "#jobs").await;
        assert_eq!(t.matches("alice").count(), 3, "{t}");
        shot(b, "jobs.png").await;

        // A VM's page from the VM list: move (the planner's choice first,
        // each stack's free memory) and a stop that needs its box ticked.
        b.find(Locator::LinkText("Virtual Machines"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.find(Locator::LinkText("vm-d"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let picker = text(b, "#vm-to-node").await;
        assert!(
            picker.contains("(recommended)") && picker.contains("free"),
            "{picker}"
        );
        // The browser itself refuses an unconfirmed stop (required box).
        b.find(Locator::Css("#vm-stop-submit"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        assert!(b.current_url().await.unwrap().path().ends_with("/vms/vm-d"));
        shot(b, "vm-actions.png").await;
    }

    /// chromedriver and a browser for `fleet`'s portal at `base`; runs
    /// `flow`, closes the browser whatever happens, then reports a failure
    /// with the coordinator's log. Skips (returns) without Chromium.
    async fn with_browser<'a, F>(fleet: &'a Fleet, flow: impl FnOnce(Client) -> F)
    where
        F: std::future::Future<Output = ()> + 'a,
    {
        let Some((_driver, b)) = chrome(fleet.dir.path()).await else {
            return;
        };
        let res =
            futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(flow(b.clone()))).await;
        let _ = b.close().await;
        if let Err(panic) = res {
            eprintln!("coordinator log:\n{}", fleet.coordinator_log());
            std::panic::resume_unwind(panic);
        }
    }

    async fn click(b: &Client, css: &str) {
        for attempt in 0.. {
            let el = b
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("{css}: {e}"));
            match el.click().await {
                Ok(_) => return,
                Err(e) if stale(&e, attempt) => {}
                Err(e) => panic!("click {css}: {e}"),
            }
        }
    }

    async fn wait_el(b: &Client, css: &str, secs: u64) {
        b.wait()
            .at_most(Duration::from_secs(secs))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
    }

    async fn is_disabled(b: &Client, css: &str) -> bool {
        for attempt in 0.. {
            let el = b
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("{css}: {e}"));
            match el.is_enabled().await {
                Ok(enabled) => return !enabled,
                Err(e) if stale(&e, attempt) => {}
                Err(e) => panic!("{css}: {e}"),
            }
        }
        unreachable!()
    }

    /// Like `Fleet::wait_registered`, for nodes without a VM too.
    fn wait_reachable(fleet: &Fleet, nodes: &[&str]) {
        super::wait_for(Duration::from_secs(90), "agents to register", || {
            let v = fleet.cli_json("alice", &["node", "list"]);
            nodes.iter().all(|n| {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .any(|x| x["name"] == *n && x["reachable"] == true)
            })
        });
    }

    fn rolling_jobs(fleet: &Fleet) -> Vec<Value> {
        fleet
            .cli_json("bob", &["job", "list", "--limit", "1000"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["kind"] == "rolling")
            .cloned()
            .collect()
    }

    /// Rolling maintenance from the portal: Level1 sees the form disabled
    /// with the reason; bad input is refused on the page with nothing
    /// started; a run waiting for the operator's Continue is followed live
    /// node by node, paused, resumed, continued (the test "reboots" the node
    /// by changing its boot id) and aborted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn browser_rolling_maintenance() {
        let (mut fleet, base) = tokio::task::block_in_place(Fleet::start_with_portal);
        tokio::task::block_in_place(|| {
            // Empty nodes drain on libvirt's test driver (it cannot migrate).
            fleet.add_agent("node1", &[]);
            fleet.add_agent("node2", &[]);
            fleet.add_agent("node3", &[Dom::user("vm-d", "cs3")]);
            wait_reachable(&fleet, &["node1", "node2", "node3"]);
        });
        let f = &fleet;
        let base = base.as_str();
        with_browser(f, |b| async move {
            // --- Level1: the form is there, disabled, with the reason.
            login(&b, base, "bob").await;
            b.goto(&format!("{base}/rolling")).await.unwrap();
            assert!(text(&b, "#rolling-start-why")
                .await
                .contains("requires Level2 or Level3"));
            assert!(is_disabled(&b, "#rolling-start-submit").await);
            logout(&b).await;

            // --- Level2: bad input, refused on the page, nothing started.
            login(&b, base, "alice").await;
            b.find(Locator::LinkText("Rolling"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            wait_el(&b, "#rolling-start-form", 10).await;
            click(&b, "#rolling-start-submit").await;
            wait_el(&b, "#error", 10).await;
            let err = text(&b, "#error").await;
            assert!(
                err.contains("400") && err.contains("at least one node"),
                "{err}"
            );
            b.goto(&format!("{base}/rolling")).await.unwrap();
            click(&b, "input[name=node][value=node1]").await;
            let hook = b.find(Locator::Css("#hook")).await.unwrap();
            hook.clear().await.unwrap();
            hook.send_keys("Reboot Now!").await.unwrap();
            click(&b, "#rolling-start-submit").await;
            wait_el(&b, "#error", 10).await;
            let err = text(&b, "#error").await;
            assert!(err.contains("invalid hook name"), "{err}");
            assert!(
                rolling_jobs(f).is_empty(),
                "a refused start started nothing"
            );

            // --- Start: node1 and node2, one at a time, rebooted by hand.
            b.goto(&format!("{base}/rolling")).await.unwrap();
            click(&b, "input[name=node][value=node1]").await;
            click(&b, "input[name=node][value=node2]").await;
            click(&b, "#reboot-continue").await;
            click(&b, "#checks-must-pass").await;
            shot(&b, "rolling-start.png").await;
            click(&b, "#rolling-start-submit").await;
            wait_el(&b, "#rolling-phases", 10).await;
            let path = b.current_url().await.unwrap().path().to_string();
            let id = path
                .strip_prefix("/rolling/")
                .expect("the run's page")
                .to_string();
            let node1 = "#rolling-phases-body tr[data-node=node1]";
            let node2 = "#rolling-phases-body tr[data-node=node2]";
            wait_text(&b, node1, "waiting for your Continue", 60).await;
            assert!(text(&b, node2).await.contains("waiting for its group"));
            wait_text(&b, "#live", "live", 10).await;

            // Pause and resume (the state follows live; the buttons follow it).
            click(&b, "#rolling-pause").await;
            wait_text(&b, "#rolling-badge", "PAUSED", 20).await;
            assert!(is_disabled(&b, "#rolling-pause").await);
            assert!(text(&b, "#rolling-controls").await.contains("it is PAUSED"));
            assert_eq!(f.cli_json("bob", &["job", "show", &id])["state"], "PAUSED");
            click(&b, "#rolling-resume").await;
            wait_text(&b, "#rolling-badge", "RUNNING", 20).await;

            // Continue node1, then its "reboot": a new boot id.
            click(&b, "#continue-node1").await;
            wait_text(&b, node1, "waiting for a new boot id", 30).await;
            std::fs::write(f.dir.path().join("node1.boot_id"), "boot-node1-2\n").unwrap();
            wait_text(&b, &format!("{node1} .phase-detail"), "done", 90).await;
            // The next group: node2 waits for its Continue.
            wait_text(&b, node2, "waiting for your Continue", 90).await;
            assert!(text(&b, "#rolling-journal")
                .await
                .contains("continue requested"));
            shot(&b, "rolling-phases.png").await;

            // Abort: the run ends; node2 stays in maintenance, node1 is back.
            click(&b, "#rolling-abort").await;
            wait_text(&b, "#rolling-badge", "ABORTED", 30).await;
            wait_text(&b, "#rolling-controls", "has ended", 10).await;
            wait_text(&b, "#live", "ended", 10).await;
            let job = f.cli_json("bob", &["job", "show", &id]);
            assert_eq!(job["state"], "ABORTED", "{job}");
            assert_eq!(job["user"], "alice");
            assert_eq!(
                f.cli_json("bob", &["node", "show", "node1"])["node"]["status"],
                "ENABLED"
            );
            assert_eq!(
                f.cli_json("bob", &["node", "show", "node2"])["node"]["status"],
                "MAINTENANCE"
            );
            assert_eq!(rolling_jobs(f).len(), 1);
        })
        .await;
    }

    /// Post-reboot checks on Stack Details: anyone may run them and see each
    /// service; starting the failed ones is for operators (Level1 sees the
    /// button disabled with the reason); afterwards every service is ok.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn browser_post_reboot_checks() {
        use nodemaint_agent::checks::{CheckConfig, CheckKind};
        let (mut fleet, base) = tokio::task::block_in_place(Fleet::start_with_portal);
        let ovs = fake_ovs(fleet.dir.path(), &["ovs-arakoon-voldrv"])
            .display()
            .to_string();
        let check = CheckConfig {
            name: "ovs".into(),
            kind: CheckKind::OvsServices {
                command: format!("{ovs} monitor services"),
            },
            start: Some(format!("{ovs} start services")),
            timeout_s: 5,
        };
        fleet.agent_edits.insert(
            "node1".into(),
            Box::new(move |c| c.checks = vec![check.clone()]),
        );
        tokio::task::block_in_place(|| {
            fleet.add_agent("node1", &[Dom::user("vm-a", "cs1")]);
            fleet.wait_registered();
        });
        let f = &fleet;
        let base = base.as_str();
        with_browser(f, |b| async move {
            // --- Level1 runs the checks (they only read) and sees the failure.
            login(&b, base, "bob").await;
            b.goto(&format!("{base}/stacks/node1")).await.unwrap();
            assert!(text(&b, "#checks").await.contains("No check has run"));
            assert!(is_disabled(&b, "#checks-start-failed").await);
            click(&b, "#checks-run").await;
            let end = wait_job_end(&b, 60).await;
            assert!(
                end.contains("FAILED") && end.contains("ovs-arakoon-voldrv"),
                "{end}"
            );
            b.goto(&format!("{base}/stacks/node1")).await.unwrap();
            let row = text(&b, "#checks-table tr[data-service=ovs-arakoon-voldrv]").await;
            assert!(row.contains("FAILED") && row.contains("ovs"), "{row}");
            assert!(text(&b, "#checks-table tr[data-service=ovs-workers]")
                .await
                .contains("ok"));
            assert!(text(&b, "#checks-summary").await.contains("1 failed"));
            // Starting services changes the node: not for Level1.
            assert!(is_disabled(&b, "#checks-start-failed").await);
            assert!(text(&b, "#checks-start-failed-why")
                .await
                .contains("requires Level2 or Level3"));
            logout(&b).await;

            // --- Level2 starts the failed services; then all are ok.
            login(&b, base, "alice").await;
            b.goto(&format!("{base}/stacks/node1")).await.unwrap();
            wait_el(&b, "#checks-table", 10).await;
            assert!(!is_disabled(&b, "#checks-start-failed").await);
            b.execute("document.getElementById('checks').scrollIntoView()", vec![])
                .await
                .unwrap();
            shot(&b, "stack-details-checks.png").await;
            click(&b, "#checks-start-failed").await;
            let end = wait_job_end(&b, 60).await;
            assert!(end.contains("SUCCEEDED"), "{end}");
            assert!(text(&b, "#job-facts").await.contains("alice"));
            b.goto(&format!("{base}/stacks/node1")).await.unwrap();
            assert!(text(&b, "#checks-summary").await.contains("all ok"));
            let row = text(&b, "#checks-table tr[data-service=ovs-arakoon-voldrv]").await;
            assert!(row.contains("ok") && row.contains("started"), "{row}");
            assert!(text(&b, "#checks-job").await.contains("alice"));
            assert!(is_disabled(&b, "#checks-start-failed").await);
            assert!(text(&b, "#checks-start-failed-why")
                .await
                .contains("no failed service"));
            // The agent's own view agrees: the service runs again.
            assert!(f.cli("bob", &["node", "check", "node1"]).status.success());
        })
        .await;
    }

    /// The fleet overview, from the nav: memory and VMs per stack as bars,
    /// the stacks in maintenance and the jobs running.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn browser_fleet_overview() {
        let (mut fleet, base) = tokio::task::block_in_place(Fleet::start_with_portal);
        tokio::task::block_in_place(|| {
            add_agents(&mut fleet);
            fleet.wait_registered();
            fleet.add_agent("node4", &[]);
            wait_reachable(&fleet, &["node4"]);
        });
        // node3 in maintenance (its VM stopped), and a job that keeps
        // running: a rolling maintenance of node4 waiting for a Continue.
        let out = fleet.cli(
            "alice",
            &["maintenance", "start", "node3", "--mode", "stop"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let out = fleet.cli(
            "alice",
            &[
                "rolling",
                "start",
                "node4",
                "--wait-for-continue",
                "--yes",
                "--detach",
                "--output",
                "json",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let rolling: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        let rolling = rolling["job_id"].as_str().unwrap().to_string();
        let rolling = rolling.as_str();
        let f = &fleet;
        let base = base.as_str();
        with_browser(f, |b| async move {
            login(&b, base, "bob").await;
            b.find(Locator::LinkText("Overview"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            wait_el(&b, "#chart-memory", 10).await;
            assert_eq!(text(&b, "#ov-stacks").await, "4");
            // One bar per stack, as long as its memory in use.
            for (node, vms) in [("node1", 5), ("node2", 2), ("node3", 1), ("node4", 0)] {
                let g = b
                    .find(Locator::Css(&format!("#chart-vms g[data-node={node}]")))
                    .await
                    .unwrap();
                assert_eq!(
                    g.attr("data-total").await.unwrap().as_deref(),
                    Some(&*vms.to_string())
                );
                let m = b
                    .find(Locator::Css(&format!("#chart-memory g[data-node={node}]")))
                    .await
                    .unwrap();
                let used: u64 = m
                    .attr("data-value")
                    .await
                    .unwrap()
                    .unwrap()
                    .parse()
                    .unwrap();
                let want =
                    f.cli_json("bob", &["node", "show", node])["node"]["memory_used_mib"].as_u64();
                assert_eq!(Some(used), want, "{node}");
            }
            assert!(b
                .find(Locator::Css("#chart-memory g[data-node=node3].maint"))
                .await
                .is_ok());
            // node3, and node4 once its drain put it in maintenance.
            let maint = text(&b, "#overview-maintenance").await;
            assert!(maint.contains("node3"), "{maint}");
            let jobs = text(&b, "#overview-jobs").await;
            assert!(jobs.contains("rolling") && jobs.contains("alice"), "{jobs}");
            assert!(text(&b, "#ov-jobs").await.parse::<u32>().unwrap() >= 1);
            // The running rolling links to its phase view.
            b.find(Locator::Css(&format!(
                "#overview-jobs a[href='/rolling/{rolling}']"
            )))
            .await
            .expect("a link to the rolling's page");
            shot(&b, "overview.png").await;
        })
        .await;
    }
}

/// VM actions from the VM page: a viewer sees no forms and is refused; an
/// operator stops a running VM only after confirming (nothing is sent
/// otherwise), starts it again, and is offered the planner's destinations,
/// recommended first, with each stack's free memory. (The test driver
/// cannot migrate: the move is accepted as a job that fails, the VM stays.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_actions_start_stop_and_move_from_the_vm_page() {
    let e = env().await;
    let (app, c) = (&e.app, &e.coord);
    let bob = login(app, "bob").await; // Level1
    let list = get(app, Some(&bob), "/vms").await;
    assert!(
        list.body.contains(r#"<a href="/vms/vm-a">vm-a</a>"#),
        "{}",
        list.body
    );
    let page = get(app, Some(&bob), "/vms/vm-a").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("requires Level2 or Level3"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("vm-stop-form"), "{}", page.body);
    let r = post(
        app,
        Some(&bob),
        "/vms/vm-a/stop",
        &[("csrf", &bob.csrf), ("confirm", "yes")],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(
        get(app, Some(&bob), "/vms/nope").await.status,
        StatusCode::NOT_FOUND
    );

    let alice = login(app, "alice").await; // Level2
    let page = get(app, Some(&alice), "/vms/vm-a").await;
    assert!(page.body.contains(r#"id="vm-stop-form""#), "{}", page.body);
    // Destinations: node1's VM may go to node2 or node3, the first recommended.
    let picker = section(&page.body, "vm-to-node");
    let picker = &picker[..picker.find("</select>").unwrap()];
    assert!(picker.contains("(recommended)"), "{picker}");
    assert!(
        picker.contains("node2") && picker.contains("node3"),
        "{picker}"
    );
    assert!(!picker.contains(">node1"), "{picker}");
    assert!(picker.contains("free"), "{picker}");

    // Stop without the confirmation: refused, nothing sent.
    let jobs_before = c.jobs.list(0).total;
    let r = post(
        app,
        Some(&alice),
        "/vms/vm-a/stop",
        &[("csrf", &alice.csrf)],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains("confirm the stop of vm-a"), "{}", r.body);
    assert_eq!(c.jobs.list(0).total, jobs_before);

    // Confirmed: a stop job; the VM shuts off.
    let r = post(
        app,
        Some(&alice),
        "/vms/vm-a/stop",
        &[("csrf", &alice.csrf), ("confirm", "yes")],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let j = wait_job(app, &alice, &job_id_from(&r.location())).await;
    assert_eq!(j["state"], "SUCCEEDED", "{j}");
    wait_until("vm-a shut off", 20, || {
        c.registry
            .find_vm("vm-a")
            .first()
            .is_some_and(|(_, d)| d.state == nodemaint_proto::model::VmState::Shutoff)
    })
    .await;
    // Now the page offers Start (and no move or stop).
    let page = get(app, Some(&alice), "/vms/vm-a").await;
    assert!(page.body.contains(r#"id="vm-start-form""#), "{}", page.body);
    assert!(!page.body.contains("vm-move-form"), "{}", page.body);
    let r = post(
        app,
        Some(&alice),
        "/vms/vm-a/start",
        &[("csrf", &alice.csrf)],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let j = wait_job(app, &alice, &job_id_from(&r.location())).await;
    assert_eq!(j["state"], "SUCCEEDED", "{j}");

    // Move: a refusal names the problem (unknown stack) and changes nothing.
    let r = post(
        app,
        Some(&alice),
        "/vms/vm-c/move",
        &[("csrf", &alice.csrf), ("to_node", "nope")],
    )
    .await;
    assert!(r.status.is_client_error(), "{}", r.status);
    assert!(r.body.contains("nope"), "{}", r.body);
    let r = post(
        app,
        Some(&alice),
        "/vms/vm-c/move",
        &[("csrf", &alice.csrf), ("to_node", "node3")],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let j = wait_job(app, &alice, &job_id_from(&r.location())).await;
    assert_eq!(j["kind"], "vm.move", "{j}");
    assert_eq!(c.registry.find_vm("vm-c").len(), 1);
    drop(e.fleet);
}
