//! Login, sessions and CSRF protection.
//!
//! - Operators are the coordinator config's `[users.NAME]` entries with a
//!   `password_hash` (argon2 PHC string, `coordinator hash-password` makes
//!   one). A user without a hash cannot log in to the portal.
//! - A successful login creates a session ([`super::session`]): a random
//!   256-bit token in the cookie `nodemaint_session` (HttpOnly,
//!   SameSite=Strict, Path=/, `Secure` under TLS), kept in a KV bucket that
//!   every coordinator's portal reads, with an idle and an absolute expiry;
//!   logging out ends it everywhere.
//! - Each session has its own random CSRF token, embedded in every form and
//!   compared (in constant time) on every POST; a missing or different token
//!   is refused with 403 and changes nothing.
//! - Groups are read from the config on every request, so the actions a
//!   user may take follow the config, not the login.

use super::guard::safe_next;
use super::html::{self, Nav};
use super::Portal;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::{html, Markup};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

pub const COOKIE: &str = "nodemaint_session";

/// An argon2id hash (PHC string) of `password` with a random salt and the
/// crate's default cost.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash password: {e}"))
}

/// Whether `password` matches the PHC string `hash` (with the algorithm and
/// cost the hash names). A malformed hash matches nothing.
pub fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash to verify against for unknown users, so a login attempt costs
/// the same whether or not the user exists.
fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| hash_password("nodemaint-dummy").unwrap_or_default())
}

/// 32 random bytes, hex.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).expect("operating system randomness");
    crate::jobs::hex(&b)
}

/// Compares two strings without an early exit on the first difference.
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The session cookie's value, if the request has one.
pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    cookie_value(headers, COOKIE)
}

/// The logged-in user of a request.
#[derive(Clone, Debug)]
pub struct Auth {
    pub user: String,
    pub groups: Vec<String>,
    pub csrf: String,
    pub token: String,
}

impl Auth {
    /// Whether the config lets this user change the fleet (Level2/Level3);
    /// the API decides again on every request.
    pub fn can_act(&self) -> bool {
        self.groups
            .iter()
            .any(|g| crate::config::OPERATOR_GROUPS.contains(&g.as_str()))
    }

    /// Checks a form's CSRF token against the session's.
    #[allow(clippy::result_large_err)]
    pub fn check_csrf(&self, token: &str) -> Result<(), Response> {
        if !token.is_empty() && same(token, &self.csrf) {
            return Ok(());
        }
        Err(html::error_page(
            Some(self),
            StatusCode::FORBIDDEN,
            "Stale or foreign form",
            "the form's security token (CSRF) is missing or does not belong to your session: \
             it is stale (you logged in again or the coordinator restarted) or it was not sent \
             from this portal. Reload the page and try again.",
        ))
    }
}

impl FromRequestParts<Arc<Portal>> for Auth {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<Portal>) -> Result<Self, Response> {
        let session = match cookie_token(&parts.headers) {
            Some(t) => st.sessions.get(&t).await.map(|s| (t, s)),
            None => None,
        };
        // A user removed from the config loses access at once.
        let found = session.and_then(|(token, s)| {
            let groups = st.c.cfg.users.get(&s.user)?.groups.clone();
            Some(Auth {
                user: s.user,
                groups,
                csrf: s.csrf,
                token,
            })
        });
        match found {
            Some(a) => Ok(a),
            None => {
                let path = parts.uri.path();
                if path.starts_with("/api/")
                    || path.starts_with("/events/")
                    || parts.method != "GET"
                {
                    let msg = "not logged in (or the session expired): log in at /login";
                    if parts.method == "GET" {
                        return Err((StatusCode::UNAUTHORIZED, msg).into_response());
                    }
                    return Err(html::error_page(
                        None,
                        StatusCode::UNAUTHORIZED,
                        "Not logged in",
                        msg,
                    ));
                }
                let next = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                Err(Redirect::to(&format!("/login?next={}", html::url(next))).into_response())
            }
        }
    }
}

#[derive(Deserialize, Default)]
pub struct NextQuery {
    #[serde(default)]
    next: Option<String>,
}

/// The login form's own CSRF token (double submit): a random value in this
/// cookie, scoped to `/login`, and the same value in a hidden field. A page
/// of another site can make a browser post the form but can neither read
/// nor set the cookie, so it cannot log a victim in to the attacker's
/// account.
pub const LOGIN_COOKIE: &str = "nodemaint_login";

/// One `Set-Cookie` value: HttpOnly, SameSite=Strict, `Secure` when the
/// portal is reached over TLS.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age_s: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path={path}; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}")
}

/// A cookie's value among the request's cookies.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The login token of this browser: its cookie's when well-formed, else a
/// new one.
fn login_token(headers: &HeaderMap) -> String {
    cookie_value(headers, LOGIN_COOKIE)
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(random_token)
}

pub fn login_form(next: &str, error: Option<&str>, user: &str, token: &str) -> Markup {
    let body = html! {
        div class="login" {
            h1 { "Operator portal" }
            p class="muted" { "Maintenance mode for libvirt/KVM clouds. Log in with your operator account." }
            @if let Some(e) = error {
                div class="alert error" role="alert" id="error" { (e) }
            }
            form method="post" action="/login" class="stack-form" {
                input type="hidden" name="next" value=(next);
                input type="hidden" name="login_csrf" value=(token);
                label {
                    "User name "
                    input name="username" id="username" autocomplete="username" required autofocus value=(user);
                }
                label {
                    "Password "
                    input name="password" id="password" type="password" autocomplete="current-password" required;
                }
                button type="submit" class="primary" id="login" { "Log in" }
            }
        }
    };
    html::page(None, Nav::None, "Log in", body)
}

/// The login page (status, optional error) with its CSRF cookie.
fn login_response(
    st: &Portal,
    status: StatusCode,
    next: &str,
    error: Option<&str>,
    user: &str,
    token: &str,
) -> Response {
    let mut res = html::respond(status, login_form(next, error, user, token));
    let cookie = set_cookie(LOGIN_COOKIE, token, "/login", 3600, st.secure);
    if let Ok(v) = header::HeaderValue::from_str(&cookie) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

pub async fn login_page(
    State(st): State<Arc<Portal>>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref());
    login_response(&st, StatusCode::OK, &next, None, "", &login_token(&headers))
}

#[derive(Deserialize, Default)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    login_csrf: String,
}

pub async fn login(
    State(st): State<Arc<Portal>>,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = safe_next(f.next.as_deref());
    // Cross-site login attempts first: no throttle entry, no hash.
    let cookie = cookie_value(&headers, LOGIN_COOKIE).unwrap_or_default();
    if cookie.is_empty() || !same(&cookie, &f.login_csrf) {
        tracing::info!(user = %f.username, "portal login refused: no or wrong login CSRF token");
        return html::error_page(
            None,
            StatusCode::FORBIDDEN,
            "Stale or foreign login form",
            "the login form's security token (CSRF) is missing or does not match this \
             browser's: it was not sent from this portal's login page, or the page is older \
             than an hour. Open /login and try again.",
        );
    }
    let addr = peer.map(|Extension(ConnectInfo(a))| a.ip());
    let started = Instant::now();
    if let Err(wait) = st.throttle.begin(&f.username, addr, started) {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        tracing::warn!(user = %f.username, addr = ?addr, "portal login throttled");
        let mut res = login_response(
            &st,
            StatusCode::TOO_MANY_REQUESTS,
            &next,
            Some(&format!(
                "Too many failed logins for this user name or from this address: try again in {secs} s."
            )),
            &f.username,
            &cookie,
        );
        res.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        return res;
    }
    let hash =
        st.c.cfg
            .users
            .get(&f.username)
            .and_then(|u| u.password_hash.clone());
    let known = hash.is_some();
    let hash = hash.unwrap_or_else(|| dummy_hash().to_string());
    let password = f.password.clone();
    // A few hashes at a time: each costs argon2's memory and a blocking thread.
    let ok = match st.verify_slots.acquire().await {
        Ok(_slot) => tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .unwrap_or(false),
        Err(_) => false,
    };
    if !(known && ok) {
        tracing::info!(user = %f.username, addr = ?addr, "portal login refused");
        return login_response(
            &st,
            StatusCode::UNAUTHORIZED,
            &next,
            Some("Unknown user name or wrong password (a user needs a password_hash in the coordinator's config)."),
            &f.username,
            &cookie,
        );
    }
    st.throttle.succeeded(&f.username, addr, started);
    let token = match st.sessions.create(&f.username).await {
        Ok((token, _)) => token,
        Err(e) => {
            tracing::error!(error = %e, "portal login: no session");
            return html::error_page(
                None,
                StatusCode::SERVICE_UNAVAILABLE,
                "Cannot log in now",
                &format!("the session could not be stored: {e}"),
            );
        }
    };
    tracing::info!(user = %f.username, "portal login");
    let mut res = Redirect::to(&next).into_response();
    for c in [
        set_cookie(
            COOKIE,
            &token,
            "/",
            st.sessions.lifetime.as_secs(),
            st.secure,
        ),
        set_cookie(LOGIN_COOKIE, "", "/login", 0, st.secure),
    ] {
        if let Ok(v) = header::HeaderValue::from_str(&c) {
            res.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    res
}

#[derive(Deserialize, Default)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

pub async fn logout(
    State(st): State<Arc<Portal>>,
    auth: Auth,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(r) = auth.check_csrf(&f.csrf) {
        return r;
    }
    st.sessions.remove(&auth.token).await;
    (
        [(
            header::SET_COOKIE,
            set_cookie(COOKIE, "", "/", 0, st.secure),
        )],
        Redirect::to("/login"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cheap hash (the cost is in the PHC string), so the test is quick
    /// in debug builds.
    fn cheap_hash(pw: &str) -> String {
        let params = argon2::Params::new(1024, 1, 1, None).unwrap();
        let a = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        a.hash_password(pw.as_bytes(), &salt).unwrap().to_string()
    }

    #[test]
    fn passwords_verify_against_their_hash_only() {
        let h = cheap_hash("s3cret");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("s3cret ", &h));
        assert!(!verify_password("s3cret", "not a hash"));
        assert!(!verify_password("", ""));
    }

    #[test]
    fn cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            "a=1; nodemaint_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_token(&h).as_deref(), Some("abc"));
        assert_eq!(cookie_token(&HeaderMap::new()), None);
    }

    #[test]
    fn cookies_are_secure_under_tls_only() {
        let plain = set_cookie(COOKIE, "t", "/", 60, false);
        assert_eq!(
            plain,
            "nodemaint_session=t; Path=/; HttpOnly; SameSite=Strict; Max-Age=60"
        );
        assert!(set_cookie(COOKIE, "t", "/", 60, true).ends_with("; Secure"));
    }

    #[test]
    fn constant_time_compare() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }
}
