//! JetStream plumbing shared by agents and the coordinator: the streams and
//! buckets (created idempotently by whoever starts first), event publishing,
//! and compare-and-set updates of KV records.

use crate::pb;
use crate::subjects::{EventKind, Subjects};
use async_nats::jetstream::{self, kv, stream};
use prost::Message;
use serde::{de::DeserializeOwned, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Splits a server list (`nats://a:4222,nats://b:4222`; a single URL is a
/// list of one) into URLs; the error names the entry that is not a URL.
pub fn server_list(urls: &str) -> Result<Vec<String>, BoxError> {
    let list: Vec<String> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if list.is_empty() {
        return Err("no NATS server URL given".into());
    }
    for u in &list {
        u.parse::<async_nats::ServerAddr>()
            .map_err(|e| format!("bad NATS server URL {u:?}: {e}"))?;
    }
    Ok(list)
}

/// How a process authenticates to NATS and which servers it trusts, in the
/// `nats` CLI's terms (its flags, environment and context fields) plus
/// nodemaint's own credentials file. All optional: without them the
/// connection is anonymous and plain.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// A credentials file of either format: nodemaint's own (`user = …` and
    /// `nkey_seed = …` or `password = …`, what `gen-auth` writes) or a NATS
    /// `.creds` file. From a config's `nats_creds`, `NODEMAINT_CREDS` or
    /// `--nodemaint-creds`.
    pub creds: Option<PathBuf>,
    /// A standard NATS `.creds` file (a user JWT and its nkey seed) only:
    /// `NATS_CREDS`, `--creds`, a context's `creds`, which the `nats` CLI
    /// reads as its own.
    pub nats_creds: Option<PathBuf>,
    /// A file holding a user nkey seed (`SU…`): `NATS_NKEY`, `--nkey`, a
    /// context's or config's `nkey`.
    pub nkey: Option<PathBuf>,
    /// With `password`, user/password authentication; alone, the name of the
    /// principal (its reply inbox prefix) that an nkey does not carry.
    pub user: Option<String>,
    pub password: Option<String>,
    /// The CA that signed the servers' certificates (turns TLS on).
    pub ca: Option<PathBuf>,
    /// A client certificate and its key, for servers that verify clients.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("creds", &self.creds)
            .field("nats_creds", &self.nats_creds)
            .field("nkey", &self.nkey)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl Security {
    /// The environment: `NODEMAINT_CREDS` (nodemaint's own file) and the
    /// `nats` CLI's `NATS_CREDS`, `NATS_NKEY`, `NATS_USER`, `NATS_PASSWORD`,
    /// `NATS_CA`, `NATS_CERT`, `NATS_KEY` (empty means unset).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let path = |k: &str| var(k).map(PathBuf::from);
        let text = |k: &str| var(k).map(|v| v.to_string_lossy().into_owned());
        Security {
            creds: path("NODEMAINT_CREDS"),
            nats_creds: path("NATS_CREDS"),
            nkey: path("NATS_NKEY"),
            user: text("NATS_USER"),
            password: text("NATS_PASSWORD"),
            ca: path("NATS_CA"),
            cert: path("NATS_CERT"),
            key: path("NATS_KEY"),
        }
    }

    /// Whether a secret is configured (a user name alone is none).
    pub fn has_auth(&self) -> bool {
        self.creds.is_some()
            || self.nats_creds.is_some()
            || self.nkey.is_some()
            || self.password.is_some()
    }

    /// What a daemon lacks to run on a secured bus (credentials, a CA for
    /// TLS); empty when it has both.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if !self.has_auth() {
            m.push(
                "a credentials file or nkey (nats_creds or nats_nkey, NODEMAINT_CREDS, \
                 NATS_CREDS, NATS_NKEY, --creds or --nkey)",
            );
        }
        if self.ca.is_none() {
            m.push("the servers' CA for TLS (nats_ca, NATS_CA or --ca)");
        }
        m
    }

    /// Closed by default: a daemon without credentials and TLS refuses to
    /// start unless its operator said `--insecure`. Returns the warning to
    /// log at every start of an insecure daemon.
    pub fn require(&self, insecure: bool, who: &str) -> Result<Option<String>, String> {
        let missing = self.missing();
        match (missing.is_empty(), insecure) {
            (true, _) => Ok(None),
            (false, true) => Ok(Some(format!(
                "{who} runs WITHOUT {} (--insecure): anyone who can reach the NATS \
                 server can read and command this fleet",
                missing.join(" and ")
            ))),
            (false, false) => Err(format!(
                "{who} refuses to run without {}: anyone who can reach the NATS server \
                 could command the fleet. Set them up (docs/security.md), or pass \
                 --insecure (NODEMAINT_INSECURE=1) for a lab or test bus",
                missing.join(" and ")
            )),
        }
    }

    /// `self`'s settings, else `fallback`'s (flags over environment over
    /// config). The secret comes whole from one source, never a file from
    /// one and a password from another; TLS files setting by setting.
    pub fn or(self, fallback: Security) -> Security {
        let (creds, nats_creds, nkey, password, user) = if self.has_auth() {
            (
                self.creds,
                self.nats_creds,
                self.nkey,
                self.password,
                self.user.or(fallback.user),
            )
        } else {
            (
                fallback.creds,
                fallback.nats_creds,
                fallback.nkey,
                fallback.password,
                self.user.or(fallback.user),
            )
        };
        Security {
            creds,
            nats_creds,
            nkey,
            user,
            password,
            ca: self.ca.or(fallback.ca),
            cert: self.cert.or(fallback.cert),
            key: self.key.or(fallback.key),
        }
    }

    /// nodemaint's own credentials, when `creds` names a file in that format.
    pub fn credentials(&self) -> Result<Option<Credentials>, BoxError> {
        Ok(match self.login()? {
            Some(Login {
                secret: LoginSecret::Nodemaint(c),
                ..
            }) => Some(c),
            _ => None,
        })
    }

    /// How to log in, read from the configured files: the first of `creds`,
    /// `nats_creds`, `nkey`, `user` with `password`. Every error names the
    /// file and, for a file in the wrong format, the setting it belongs in.
    pub fn login(&self) -> Result<Option<Login>, BoxError> {
        if let Some(path) = &self.creds {
            let text = read_secret_file(path)?;
            return Ok(Some(if is_standard_creds(&text) {
                standard_login(path, &text)?
            } else {
                let c = Credentials::parse(&text).map_err(|message| CredentialsError::Invalid {
                    path: path.clone(),
                    message,
                })?;
                Login {
                    name: Some(c.user.clone()),
                    source: path.display().to_string(),
                    secret: LoginSecret::Nodemaint(c),
                }
            }));
        }
        if let Some(path) = &self.nats_creds {
            let text = read_secret_file(path)?;
            if !is_standard_creds(&text) {
                let message = if Credentials::parse(&text).is_ok() {
                    format!(
                        "it is a nodemaint credentials file (user = …, nkey_seed = …), not a \
                         NATS .creds file (a user JWT and its seed), which is what NATS_CREDS \
                         and --creds mean here as in the `nats` CLI: pass it as \
                         NODEMAINT_CREDS={p} (or --nodemaint-creds {p}) instead",
                        p = path.display()
                    )
                } else {
                    "not a NATS .creds file: it has no -----BEGIN NATS USER JWT----- block"
                        .to_string()
                };
                return Err(Box::new(CredentialsError::Invalid {
                    path: path.clone(),
                    message,
                }));
            }
            return Ok(Some(standard_login(path, &text)?));
        }
        if let Some(path) = &self.nkey {
            let text = read_secret_file(path)?;
            let seed = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.starts_with('#'))
                .flat_map(str::split_whitespace)
                .find(|t| t.starts_with("SU"))
                .map(str::to_string);
            let Some(seed) = seed else {
                let hint = if Credentials::parse(&text).is_ok() {
                    ": it is a nodemaint credentials file; pass it as NODEMAINT_CREDS \
                     (or --nodemaint-creds) instead"
                } else {
                    ""
                };
                return Err(Box::new(CredentialsError::Invalid {
                    path: path.clone(),
                    message: format!("no user nkey seed (SU…) in it{hint}"),
                }));
            };
            return Ok(Some(Login {
                name: self.user.clone(),
                source: path.display().to_string(),
                secret: LoginSecret::Nkey(seed),
            }));
        }
        if let Some(password) = &self.password {
            let user = self
                .user
                .clone()
                .ok_or("a NATS password needs a user (--user or NATS_USER)")?;
            return Ok(Some(Login {
                name: Some(user.clone()),
                source: format!("user {user}"),
                secret: LoginSecret::Password(user, password.clone()),
            }));
        }
        Ok(None)
    }
}

/// How [`connect`] logs in: the secret, the principal's name when known
/// (its reply inboxes are `_INBOX.<name>`), and where it came from.
#[derive(Clone)]
pub struct Login {
    pub name: Option<String>,
    pub source: String,
    pub secret: LoginSecret,
}

#[derive(Clone)]
pub enum LoginSecret {
    /// nodemaint's own credentials file.
    Nodemaint(Credentials),
    /// The text of a standard `.creds` file (async-nats parses it).
    Creds(String),
    Nkey(String),
    Password(String, String),
}

fn is_standard_creds(text: &str) -> bool {
    text.contains("-----BEGIN NATS USER JWT-----")
}

fn standard_login(path: &Path, text: &str) -> Result<Login, CredentialsError> {
    let invalid = |message: String| CredentialsError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let jwt = creds_block(text, "NATS USER JWT").ok_or_else(|| invalid("no user JWT".into()))?;
    if creds_block(text, "USER NKEY SEED").is_none() {
        return Err(invalid("no -----BEGIN USER NKEY SEED----- block".into()));
    }
    Ok(Login {
        name: jwt_name(jwt),
        source: path.display().to_string(),
        secret: LoginSecret::Creds(text.to_string()),
    })
}

/// The first non-empty line after `-----BEGIN {what}-----`.
fn creds_block<'a>(text: &'a str, what: &str) -> Option<&'a str> {
    let begin = format!("-----BEGIN {what}-----");
    let rest = &text[text.find(&begin)? + begin.len()..];
    rest.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .filter(|l| !l.starts_with("---"))
}

/// The `name` claim of a JWT (base64url JSON payload), the user's name.
fn jwt_name(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let mut bits = 0u32;
    let mut n = 0;
    let mut bytes = Vec::new();
    for c in payload.bytes().take_while(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        bits = bits << 6 | v as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            bytes.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims["name"].as_str().map(str::to_string)
}

/// A secret file's text, refusing one that others may read.
fn read_secret_file(path: &Path) -> Result<String, CredentialsError> {
    let read = |source| CredentialsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(CredentialsError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    std::fs::read_to_string(path).map_err(read)
}

/// A principal's NATS credentials: its name (the subject token its
/// permissions are written for) and a password or an nkey seed.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub secret: Secret,
}

#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Password(String),
    NkeySeed(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.secret {
            Secret::Password(_) => "password",
            Secret::NkeySeed(_) => "nkey",
        };
        write!(f, "Credentials({}, {kind})", self.user)
    }
}

/// Why a credentials file is not usable; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read NATS credentials file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "NATS credentials file {path} is readable by group or others (mode {mode:04o}); \
         fix with `chmod 600 {path}`"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("invalid NATS credentials file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Credentials {
    /// Reads a credentials file, refusing one that others may read.
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let text = read_secret_file(path)?;
        Credentials::parse(&text).map_err(|message| CredentialsError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses `key = "value"` lines (`#` comments): `user` and exactly one
    /// of `password` or `nkey_seed`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (mut user, mut password, mut seed) = (None, None, None);
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("line {}: expected key = \"value\"", i + 1))?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
                .to_string();
            let slot = match k.trim() {
                "user" => &mut user,
                "password" => &mut password,
                "nkey_seed" => &mut seed,
                other => return Err(format!("line {}: unknown key {other:?}", i + 1)),
            };
            if slot.replace(v).is_some() {
                return Err(format!("line {}: {} given twice", i + 1, k.trim()));
            }
        }
        let user = user.ok_or("missing user")?;
        crate::subjects::validate_token(&user).map_err(|e| format!("user: {e}"))?;
        let secret = match (password, seed) {
            (Some(p), None) if !p.is_empty() => Secret::Password(p),
            (None, Some(s)) if s.starts_with("SU") => Secret::NkeySeed(s),
            (None, Some(_)) => return Err("nkey_seed must be a user seed (SU…)".into()),
            _ => return Err("give exactly one of password or nkey_seed".into()),
        };
        Ok(Credentials { user, secret })
    }
}

/// Connects to NATS within 5 s with `sec`'s credentials and CA; the error
/// names the URL, the credentials file and the likely fix. With
/// credentials, reply inboxes live under the principal's own prefix
/// (`_INBOX.<user>`), the only one its permissions let it subscribe to.
///
/// `urls` is a server list (comma-separated). Afterwards the client
/// reconnects on its own, forever, to any server of the list or of the
/// cluster (servers gossip their peers): a lost server is a pause, never the
/// end of a daemon.
pub async fn connect(
    urls: &str,
    name: &str,
    sec: &Security,
) -> Result<async_nats::Client, BoxError> {
    Ok(connect_watching(urls, name, sec).await?.0)
}

/// [`connect`], also returning a channel of the server's error messages
/// (permission violations arrive there, not as errors of the calls).
pub async fn connect_watching(
    urls: &str,
    name: &str,
    sec: &Security,
) -> Result<(async_nats::Client, tokio::sync::broadcast::Sender<String>), BoxError> {
    connect_watching_as(urls, name, sec, None).await
}

/// [`connect_watching`] for an API client acting as `user`: its reply
/// inboxes are `_INBOX.<user>.…` even without credentials, the only replies
/// the coordinator sends (with credentials, the credentials' user, which
/// the CLI checks is the same).
pub async fn connect_watching_as(
    urls: &str,
    name: &str,
    sec: &Security,
    user: Option<&str>,
) -> Result<(async_nats::Client, tokio::sync::broadcast::Sender<String>), BoxError> {
    let servers = server_list(urls)?;
    let url = urls;
    let (errors, _) = tokio::sync::broadcast::channel(16);
    let tx = errors.clone();
    let who = name.to_string();
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        // Quick first retries: a restarted server is back within a second or two.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 250).min(2_000))
        })
        .event_callback(move |ev| {
            let (tx, who) = (tx.clone(), who.clone());
            async move {
                match ev {
                    async_nats::Event::ServerError(e) => {
                        tracing::warn!(client = %who, error = %e, "NATS server error");
                        let _ = tx.send(e.to_string());
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!(client = %who, "NATS connection lost; reconnecting")
                    }
                    async_nats::Event::Connected => {
                        tracing::info!(client = %who, "NATS connection (re)established")
                    }
                    other => tracing::info!(client = %who, event = %other, "NATS event"),
                }
            }
        });
    let login = sec.login()?;
    if let Some(l) = &login {
        opts = match &l.secret {
            LoginSecret::Nodemaint(c) => match &c.secret {
                Secret::Password(p) => opts.user_and_password(c.user.clone(), p.clone()),
                Secret::NkeySeed(s) => opts.nkey(s.clone()),
            },
            LoginSecret::Creds(text) => opts
                .credentials(text)
                .map_err(|e| format!("invalid NATS .creds file {}: {e}", l.source))?,
            LoginSecret::Nkey(seed) => opts.nkey(seed.clone()),
            LoginSecret::Password(u, p) => opts.user_and_password(u.clone(), p.clone()),
        };
        if let Some(name) = &l.name {
            crate::subjects::validate_token(name)
                .map_err(|e| format!("NATS user name of {}: {e}", l.source))?;
            opts = opts.custom_inbox_prefix(crate::subjects::inbox_prefix(name));
        }
    }
    if let Some(u) = user {
        crate::subjects::validate_token(u).map_err(|e| format!("user: {e}"))?;
        opts = opts.custom_inbox_prefix(crate::subjects::inbox_prefix(u));
    }
    if let Some(ca) = &sec.ca {
        std::fs::File::open(ca)
            .map_err(|e| format!("cannot read NATS CA file {}: {e}", ca.display()))?;
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    match (&sec.cert, &sec.key) {
        (Some(cert), Some(key)) => {
            for f in [cert, key] {
                std::fs::File::open(f)
                    .map_err(|e| format!("cannot read TLS client file {}: {e}", f.display()))?;
            }
            opts = opts
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        (None, None) => {}
        _ => return Err("a TLS client certificate needs both --tlscert and --tlskey".into()),
    }
    let who = match &login {
        Some(l) => match &l.name {
            Some(n) if !l.source.ends_with(&format!("user {n}")) => {
                format!(" as {n} ({})", l.source)
            }
            _ => format!(" ({})", l.source),
        },
        None => String::new(),
    };
    let total = Duration::from_secs(6) * servers.len().min(5) as u32;
    let failed = |failure, message| -> BoxError { Box::new(ConnectError { failure, message }) };
    match tokio::time::timeout(total, opts.connect(servers.as_slice())).await {
        Err(_) => Err(failed(
            ConnectFailure::Unreachable,
            format!("NATS server at {url} not reachable within 5 s"),
        )),
        Ok(Err(e)) => {
            use async_nats::ConnectErrorKind as K;
            // rustls' certificate errors come as I/O errors.
            let tls = e.kind() == K::Tls || e.to_string().contains("certificate");
            let hint = match e.kind() {
                _ if tls && sec.ca.is_none() => {
                    ": the server's certificate is not trusted; set NATS_CA to the CA that signed it"
                }
                _ if tls => {
                    ": TLS failed: the server's certificate is not signed by this CA \
                     (or not for this host name)"
                }
                K::AuthorizationViolation => {
                    if login.is_some() {
                        ": the server refused these credentials (wrong or unknown user/secret)"
                    } else {
                        ": the server requires credentials (NODEMAINT_CREDS for nodemaint's \
                         credentials file, NATS_CREDS for a NATS .creds file, --nkey, \
                         --user/--password or --context)"
                    }
                }
                _ => "",
            };
            let failure = if tls || e.kind() == K::AuthorizationViolation {
                ConnectFailure::Refused
            } else {
                ConnectFailure::Unreachable
            };
            Err(failed(
                failure,
                format!("cannot connect to NATS at {url}{who}: {e}{hint}"),
            ))
        }
        Ok(Ok(c)) => Ok((c, errors)),
    }
}

/// Why [`connect_watching_as`] could not connect (its other errors are the
/// caller's settings: URLs, credentials or CA file, user name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectFailure {
    /// No server answered: down, unreachable, or the wrong address.
    Unreachable,
    /// A server answered but refused us: credentials, or TLS trust.
    Refused,
}

/// A failed connection, with what kind of failure it was (the CLI's exit
/// code tells "try again later" from "fix the credentials").
#[derive(Debug)]
pub struct ConnectError {
    pub failure: ConnectFailure,
    pub message: String,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConnectError {}

/// What waiting can and cannot fix: a failed bus call is either
/// temporary (retry it) or permanent (report it and stop).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A stream or bucket not there yet (or not yet on this cluster member),
    /// no responders, a timeout, a leader election, a lost connection.
    Transient,
    /// Credentials, permissions, TLS, or a configuration the server rejects.
    Permanent,
}

/// Classifies a bus error by its message. Anything not known to be
/// permanent is transient: a daemon that waits too long on a permanent error
/// says so in its log every few seconds, one that exits on a transient
/// error takes a node out of service.
pub fn classify(message: &str) -> Verdict {
    const PERMANENT: &[&str] = &[
        "permissions violation",
        "authorization violation",
        "authentication",
        "credentials",
        "certificate",
        "tls",
        // A stream or bucket that exists with another configuration.
        "already in use",
        "invalid",
        "jetstream not enabled",
        // Configuration read before any network: files, URLs.
        "cannot read",
        "nats server url",
    ];
    let m = message.to_ascii_lowercase();
    if PERMANENT.iter().any(|p| m.contains(p)) {
        Verdict::Permanent
    } else {
        Verdict::Transient
    }
}

/// Capped exponential backoff with jitter: each delay is drawn from
/// [d/2, d] where d doubles from `first` up to `cap`, so that many agents
/// retrying after one server restart do not come back in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Self {
        Backoff { next: first, cap }
    }

    /// The next delay (and doubles the one after).
    pub fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.cap);
        d / 2 + d.mul_f64(jitter() / 2.0)
    }

    /// Sleeps the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.delay()).await
    }
}

/// A number in [0, 1) that differs between processes and calls (std's
/// randomly keyed hasher; no cryptographic quality needed).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The one policy for waiting out what is temporary on the bus: runs an
/// operation until it succeeds, with [`Backoff`] between attempts, logging
/// what it waits for; stops on a [`Verdict::Permanent`] error, on a
/// permission refusal reported by the server meanwhile, or when the
/// patience (if any) has run out.
///
/// Daemons wait [`Retry::forever`]: a stream that a cluster member has not
/// seen yet, a server restart or an election ends by itself. Interactive
/// callers (the CLI) give a [`Retry::within`] patience.
pub struct Retry {
    what: String,
    deadline: Option<tokio::time::Instant>,
    backoff: Backoff,
    refusals: Option<tokio::sync::broadcast::Receiver<String>>,
}

impl Retry {
    pub fn forever(what: impl Into<String>) -> Self {
        Retry {
            what: what.into(),
            deadline: None,
            backoff: Backoff::default(),
            refusals: None,
        }
    }

    pub fn within(what: impl Into<String>, patience: Duration) -> Self {
        Retry {
            deadline: Some(tokio::time::Instant::now() + patience),
            ..Retry::forever(what)
        }
    }

    /// Also stop when the server reports a permissions violation (a
    /// refused JetStream request is not answered; the refusal arrives on
    /// the connection's error channel, see [`connect_watching`]).
    pub fn refusals(mut self, rx: tokio::sync::broadcast::Receiver<String>) -> Self {
        self.refusals = Some(rx);
        self
    }

    pub async fn run<T, E, F, Fut>(mut self, mut op: F) -> Result<T, BoxError>
    where
        E: Into<BoxError>,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let mut attempt = 0u32;
        loop {
            let e: BoxError = match op().await {
                Ok(v) => {
                    if attempt > 0 {
                        tracing::info!(what = %self.what, attempts = attempt + 1, "ready");
                    }
                    return Ok(v);
                }
                Err(e) => e.into(),
            };
            attempt += 1;
            if let Some(refusal) = self.refused() {
                return Err(format!("{e}; the NATS server refused it: {refusal}").into());
            }
            if classify(&e.to_string()) == Verdict::Permanent {
                return Err(e);
            }
            let delay = self.backoff.delay();
            if self
                .deadline
                .is_some_and(|d| tokio::time::Instant::now() + delay >= d)
            {
                return Err(format!("{e} (still failing after {attempt} attempts)").into());
            }
            tracing::warn!(what = %self.what, attempt, error = %e, retry_in_ms = delay.as_millis() as u64,
                "waiting for NATS");
            tokio::time::sleep(delay).await;
        }
    }

    fn refused(&mut self) -> Option<String> {
        let rx = self.refusals.as_mut()?;
        loop {
            match rx.try_recv() {
                Ok(m) if classify(&m) == Verdict::Permanent => return Some(m),
                Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => return None,
            }
        }
    }
}

/// Opens a stream that someone else creates (an agent's view: the
/// coordinator owns the JetStream layout), waiting until it exists.
pub async fn existing_stream(
    js: &jetstream::Context,
    name: &str,
    retry: Retry,
) -> Result<stream::Stream, BoxError> {
    retry.run(|| js.get_stream(name)).await
}

/// Opens a KV bucket that someone else creates, waiting until it exists.
pub async fn existing_bucket(
    js: &jetstream::Context,
    name: &str,
    retry: Retry,
) -> Result<kv::Store, BoxError> {
    retry.run(|| js.get_key_value(name)).await
}

/// Creates (or checks) the commands and events streams.
/// `replicas` is 1 on a single server, 3 on a 3-node cluster (a stream
/// that exists already keeps its replica count).
pub async fn ensure_streams(
    js: &jetstream::Context,
    s: &Subjects,
    replicas: usize,
) -> Result<(), BoxError> {
    js.get_or_create_stream(stream::Config {
        name: s.commands_stream(),
        subjects: vec![s.agent_cmd_all()],
        // A command is removed once its agent acks it.
        retention: stream::RetentionPolicy::WorkQueue,
        // Resending a command id within this window is de-duplicated by the
        // server; the agents' result bucket covers everything beyond it.
        duplicate_window: Duration::from_secs(120),
        max_age: Duration::from_secs(7 * 24 * 3600),
        num_replicas: replicas.max(1),
        ..Default::default()
    })
    .await?;
    let want = s.stored_events();
    let events = js
        .get_or_create_stream(stream::Config {
            name: s.events_stream(),
            subjects: want.clone(),
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 1 << 30,
            // No one subject (one node's progress, say) crowds out the rest.
            max_messages_per_subject: 10_000,
            num_replicas: replicas.max(1),
            ..Default::default()
        })
        .await?;
    // A stream made by an older release captures every kind (`events.*.*`),
    // heartbeats included: narrow it, keeping the rest of its configuration
    // (replicas, limits an operator changed) and everything it stored.
    let have = &events.cached_info().config;
    if have.subjects != want {
        let mut narrowed = have.clone();
        narrowed.subjects = want;
        js.update_stream(narrowed).await?;
        tracing::info!(stream = %s.events_stream(), "events stream no longer stores heartbeats");
    }
    Ok(())
}

/// Opens a KV bucket, creating it with `replicas` copies when missing.
pub async fn bucket(
    js: &jetstream::Context,
    name: &str,
    history: i64,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, BoxError> {
    match js.get_key_value(name).await {
        Ok(store) => Ok(store),
        Err(_) => Ok(js
            .create_key_value(kv::Config {
                bucket: name.to_string(),
                history,
                max_age,
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await?),
    }
}

/// Wraps a body in an [`pb::Event`] and publishes it on the node's subject
/// for that kind. Heartbeats are plain core NATS messages (no stream stores
/// them, see [`EventKind::is_stored`]); progress is stored but not waited
/// for (losing one is harmless); everything else waits for the stream's ack.
pub async fn publish_event(
    js: &jetstream::Context,
    s: &Subjects,
    node: &str,
    op_id: &str,
    body: pb::event::Body,
) -> Result<(), BoxError> {
    if let Some(ack) = send_event(js, s, node, op_id, body).await? {
        ack.await?;
    }
    Ok(())
}

/// [`publish_event`] in two halves: sends the event now and returns the
/// stream's ack still to await (`None` for heartbeats and progress), so a
/// caller can send several events and await their acks together instead of
/// one round trip after the other. Events sent on one connection reach
/// their stream in the order they were sent.
pub async fn send_event(
    js: &jetstream::Context,
    s: &Subjects,
    node: &str,
    op_id: &str,
    body: pb::event::Body,
) -> Result<Option<jetstream::context::PublishAckFuture>, BoxError> {
    let kind = match &body {
        pb::event::Body::Heartbeat(_) => EventKind::Heartbeat,
        pb::event::Body::Inventory(_) => EventKind::Inventory,
        pb::event::Body::Progress(_) => EventKind::Progress,
        pb::event::Body::Result(_) => EventKind::Result,
        pb::event::Body::Checks(_) => EventKind::Checks,
        pb::event::Body::Job(_) => EventKind::Job,
        pb::event::Body::Error(_) => EventKind::Error,
    };
    let event = pb::Event {
        node: node.to_string(),
        ts_ms: crate::now_ms(),
        op_id: op_id.to_string(),
        body: Some(body),
    };
    let subject = s.event(node, kind);
    let payload = bytes::Bytes::from(event.encode_to_vec());
    Ok(match kind {
        // Captured by no stream: a plain message, no ack to wait for.
        EventKind::Heartbeat => {
            js.client().publish(subject, payload).await?;
            None
        }
        EventKind::Progress => {
            js.publish(subject, payload).await?;
            None
        }
        _ => Some(js.publish(subject, payload).await?),
    })
}

/// nats-server in cluster mode answers a compare-and-set conflict with error
/// code 10164 ("wrong last sequence"), which async-nats 0.51 classifies as
/// `Other`, not as a conflict; on a single server it is code 10071, which it
/// does classify. Both mean: another writer won.
fn says_conflict(e: &impl std::fmt::Display) -> bool {
    e.to_string().contains("wrong last sequence")
}

/// A KV `create` failed because the key exists (another writer won).
pub fn create_conflict(e: &kv::CreateError) -> bool {
    e.kind() == kv::CreateErrorKind::AlreadyExists || says_conflict(e)
}

/// A KV `update` failed because the revision moved on (another writer won).
pub fn update_conflict(e: &kv::UpdateError) -> bool {
    e.kind() == kv::UpdateErrorKind::WrongLastRevision || says_conflict(e)
}

/// How long [`leader_entry`] waits for the stream leader's answer.
const LEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The latest entry of `key` as the bucket's stream leader holds it (`None`:
/// never written; a deleted or purged key is an entry whose operation says
/// so). Every read that a decision rests on goes through here: a CAS's
/// read, "is the record gone", locks, the leader lease.
///
/// Why not `Store::entry`/`get`: async-nats creates buckets with
/// `allow_direct: true`, so those are DIRECT GETs, which any replica answers,
/// including a follower that has not applied the latest acknowledged writes
/// (just restarted, or lagging after a failover). On a 3-server cluster
/// that made a job record written a moment before look absent ("job …
/// vanished", drain halted). This is a STREAM.MSG.GET, which only the
/// stream leader answers. Why not buckets with `allow_direct: false`
/// instead: the flag lives in each bucket's stream config (existing
/// buckets would need a stream update that `update_key_value` cannot make,
/// it forces `true`), and every client that opened the bucket before the
/// change keeps the cached flag; agents may only DIRECT GET their own keys
/// (a MSG.GET request names no key, so no permission can limit it). The
/// cost is one JetStream API round trip to the leader instead of the
/// nearest replica: negligible next to the replicated write that a
/// decision read precedes.
pub async fn leader_entry(store: &kv::Store, key: &str) -> Result<Option<kv::Entry>, BoxError> {
    use stream::LastRawMessageErrorKind as Kind;
    let subject = format!("{}{key}", store.prefix);
    // A stream without a leader (a cluster electing one) leaves the request
    // unanswered: give up sooner than the context's 5 s, so that retries
    // reach the new leader soon after it is elected. An error here never
    // means "absent", so a slow answer only costs a retry.
    let read = store.stream.get_last_raw_message_by_subject(&subject);
    let answer = tokio::time::timeout(LEADER_READ_TIMEOUT, read)
        .await
        .map_err(|_| {
            format!(
                "KV read from the leader of {}: timed out",
                store.stream_name
            )
        })?;
    match answer {
        Ok(m) => Ok(Some(kv::Entry {
            bucket: store.name.clone(),
            key: key.to_string(),
            operation: kv_operation(
                m.headers.get("KV-Operation").map(|v| v.as_str()),
                m.headers.get("Nats-Marker-Reason").map(|v| v.as_str()),
            ),
            value: m.payload,
            revision: m.sequence,
            created: m.time,
            delta: 0,
            seen_current: false,
        })),
        Err(e) if e.kind() == Kind::NoMessageFound => Ok(None),
        // Worded for `classify`: a timeout here is transient.
        Err(e) => Err(format!("KV read from the leader of {}: {e}", store.stream_name).into()),
    }
}

/// A KV message's operation from its headers, as async-nats decodes it:
/// `KV-Operation` (absent on a plain put), else a server marker's reason
/// (an expired or purged key, a removed message).
fn kv_operation(op: Option<&str>, marker: Option<&str>) -> kv::Operation {
    match (op, marker) {
        (Some("DEL"), _) | (None, Some("Remove")) => kv::Operation::Delete,
        (Some("PURGE"), _) | (None, Some("MaxAge" | "Purge")) => kv::Operation::Purge,
        _ => kv::Operation::Put,
    }
}

/// Outcome of a read-modify-write: the new value and its revision.
pub struct Updated<T> {
    pub value: T,
    pub revision: u64,
}

/// Why a compare-and-set update did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CasError<E> {
    /// The closure refused the change (its error, untouched).
    #[error(transparent)]
    Rejected(E),
    #[error("KV store error: {0}")]
    Store(BoxError),
    #[error("too much contention on key {0}")]
    Contention(String),
}

/// How long a read-modify-write keeps retrying while the KV store does not
/// answer (a server restarting, a cluster electing a stream leader): a
/// journal entry must survive a NATS blip, not be dropped with a warning.
const STORE_PATIENCE: Duration = Duration::from_secs(30);

/// Read-modify-write of a JSON record with compare-and-set: `f` sees the
/// current value as the stream leader has it (or `None`) and returns the new one or refuses; on a
/// concurrent write (wrong last revision) it is re-read and `f` runs again.
/// Transport errors are retried for up to 30 s.
pub async fn cas_update<T, E>(
    store: &kv::Store,
    key: &str,
    mut f: impl FnMut(Option<T>) -> Result<T, E>,
) -> Result<Updated<T>, CasError<E>>
where
    T: Serialize + DeserializeOwned,
{
    let deadline = tokio::time::Instant::now() + STORE_PATIENCE;
    let mut conflicts = 0;
    let mut unconfirmed: Option<bytes::Bytes> = None;
    let mut backoff = Backoff::default();
    // Waits before the next attempt after a transport error, or gives up.
    let mut unavailable = |e: BoxError| {
        let delay = backoff.delay();
        async move {
            if tokio::time::Instant::now() >= deadline
                || classify(&e.to_string()) == Verdict::Permanent
            {
                return Err(CasError::Store(e));
            }
            tracing::warn!(key, error = %e, "KV store unavailable; retrying");
            tokio::time::sleep(delay).await;
            Ok(())
        }
    };
    while conflicts < 64 {
        let entry = match leader_entry(store, key).await {
            Ok(e) => e,
            Err(e) => {
                unavailable(e).await?;
                continue;
            }
        };
        let (current, revision) = match entry {
            // Our write timed out but did land: done.
            Some(e) if unconfirmed.as_ref() == Some(&e.value) => {
                let value = serde_json::from_slice(&e.value).map_err(|err| {
                    CasError::Store(format!("record {key} is corrupt: {err}").into())
                })?;
                return Ok(Updated {
                    value,
                    revision: e.revision,
                });
            }
            Some(e) if e.operation == kv::Operation::Put => {
                let v = serde_json::from_slice(&e.value).map_err(|err| {
                    CasError::Store(format!("record {key} is corrupt: {err}").into())
                })?;
                (Some(v), Some(e.revision))
            }
            Some(e) => (None, Some(e.revision)),
            None => (None, None),
        };
        let new = f(current).map_err(CasError::Rejected)?;
        let bytes = bytes::Bytes::from(serde_json::to_vec(&new).expect("serializable record"));
        unconfirmed = None;
        let written: Result<u64, Option<BoxError>> = match revision {
            Some(rev) => store.update(key, bytes.clone(), rev).await.map_err(|e| {
                if update_conflict(&e) {
                    None
                } else {
                    Some(e.into())
                }
            }),
            None => store.create(key, bytes.clone()).await.map_err(|e| {
                if create_conflict(&e) {
                    None
                } else {
                    Some(e.into())
                }
            }),
        };
        match written {
            Ok(revision) => {
                return Ok(Updated {
                    value: new,
                    revision,
                })
            }
            // Somebody else wrote first: re-read.
            Err(None) => conflicts += 1,
            // Maybe written, maybe not: the re-read tells.
            Err(Some(e)) => {
                unconfirmed = Some(bytes);
                unavailable(e).await?
            }
        }
    }
    Err(CasError::Contention(key.to_string()))
}

/// Reads a JSON record from the stream leader ([`leader_entry`]); `None`
/// when there is none (never written, deleted or purged). Transport errors
/// (no stream leader while a cluster elects one) are retried for up to
/// 30 s, as in [`cas_update`]: callers decide on `None`, so it must mean
/// "the leader says absent", not "no answer yet".
pub async fn get_json<T: DeserializeOwned>(
    store: &kv::Store,
    key: &str,
) -> Result<Option<T>, BoxError> {
    let value = Retry::within(format!("KV record {key}"), STORE_PATIENCE)
        .run(|| leader_value(store, key))
        .await?;
    match value {
        Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        None => Ok(None),
    }
}

/// The value of `key` from the stream leader ([`leader_entry`]); `None`
/// when there is none (never written, deleted or purged).
pub async fn leader_value(store: &kv::Store, key: &str) -> Result<Option<bytes::Bytes>, BoxError> {
    Ok(leader_entry(store, key)
        .await?
        .filter(|e| e.operation == kv::Operation::Put)
        .map(|e| e.value))
}

/// Every record of a bucket, in key order.
pub async fn all_json<T: DeserializeOwned>(
    store: &kv::Store,
) -> Result<Vec<(String, T)>, BoxError> {
    use futures::StreamExt;
    let mut keys: Vec<String> = Vec::new();
    let mut stream = store.keys().await?;
    while let Some(k) = stream.next().await {
        keys.push(k?);
    }
    keys.sort();
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        if let Some(v) = get_json(store, &k).await? {
            out.push((k, v));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kv_message_is_a_put_unless_its_headers_say_delete_or_purge() {
        use kv::Operation::*;
        for (op, marker, want) in [
            (None, None, Put),
            (Some("PUT"), None, Put),
            (Some("DEL"), None, Delete),
            (Some("PURGE"), None, Purge),
            (None, Some("MaxAge"), Purge),
            (None, Some("Purge"), Purge),
            (None, Some("Remove"), Delete),
        ] {
            assert_eq!(kv_operation(op, marker), want, "{op:?} {marker:?}");
        }
    }

    #[test]
    fn waiting_fixes_missing_streams_and_timeouts_not_refusals() {
        for transient in [
            "no stream found for given subject",
            "stream not found",
            "timed out",
            "requested JetStream resource does not exist",
            "JetStream system temporarily unavailable",
            "NATS server at nats://a:4222 not reachable within 5 s",
            "cannot connect to NATS at nats://a:4222: IO error: Connection refused",
        ] {
            assert_eq!(classify(transient), Verdict::Transient, "{transient}");
        }
        for permanent in [
            "Permissions Violation for Publish to \"$JS.API.STREAM.CREATE.x\"",
            "cannot connect to NATS at u: authorization violation: the server refused these credentials",
            "stream name already in use with a different configuration",
            "cannot read NATS CA file /x: No such file",
        ] {
            assert_eq!(classify(permanent), Verdict::Permanent, "{permanent}");
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_below_each_step() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let steps: Vec<Duration> = (0..8).map(|_| b.delay()).collect();
        for (d, nominal) in steps
            .iter()
            .zip([100u64, 200, 400, 800, 1000, 1000, 1000, 1000])
        {
            let nominal = Duration::from_millis(nominal);
            assert!(*d >= nominal / 2 && *d <= nominal, "{d:?} vs {nominal:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_at_a_permanent_error_and_at_its_patience() {
        let mut calls = 0;
        let e = Retry::forever("x")
            .run(|| {
                calls += 1;
                let r: Result<(), BoxError> = Err(if calls < 3 {
                    "timed out".into()
                } else {
                    "authorization violation".into()
                });
                async move { r }
            })
            .await
            .unwrap_err();
        assert_eq!(calls, 3);
        assert!(e.to_string().contains("authorization"));
        let e = Retry::within("x", Duration::from_secs(2))
            .run(|| async { Err::<(), BoxError>("timed out".into()) })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("still failing"), "{e}");
        let mut n = 0;
        let v = Retry::forever("x")
            .run(|| {
                n += 1;
                let r: Result<u32, BoxError> = if n < 20 {
                    Err("timed out".into())
                } else {
                    Ok(n)
                };
                async move { r }
            })
            .await
            .unwrap();
        assert_eq!(v, 20);
    }

    #[test]
    fn credentials_parse_password_and_nkey() {
        let c = Credentials::parse("# x\nuser = \"node1\"\npassword = \"s3cret\"\n").unwrap();
        assert_eq!(c.user, "node1");
        assert!(c.secret == Secret::Password("s3cret".into()));
        let c = Credentials::parse("user = op\nnkey_seed = SUAB\n").unwrap();
        assert!(c.secret == Secret::NkeySeed("SUAB".into()));
        assert!(!format!("{c:?}").contains("SUAB"), "Debug leaks the seed");
    }

    #[test]
    fn bad_credentials_are_named() {
        for (text, want) in [
            ("password = x", "missing user"),
            ("user = a.b\npassword = x", "invalid name"),
            ("user = a", "exactly one"),
            ("user = a\npassword = x\nnkey_seed = SUx", "exactly one"),
            ("user = a\nnkey_seed = SOx", "user seed"),
            ("user = a\nuser = b", "twice"),
            ("user = a\ntoken = x", "unknown key"),
            ("garbage", "line 1"),
        ] {
            let e = Credentials::parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn exposed_credentials_file_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("nm-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("op.creds");
        std::fs::write(&path, "user = op\npassword = x\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Credentials::load(&path).unwrap_err().to_string();
        assert!(
            e.contains(&path.display().to_string())
                && e.contains("chmod 600")
                && e.contains("0644"),
            "{e}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Credentials::load(&path).unwrap().user, "op");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn server_lists_split_on_commas_and_name_bad_entries() {
        assert_eq!(
            server_list("nats://a:4222, nats://b:4223,").unwrap(),
            ["nats://a:4222", "nats://b:4223"]
        );
        assert_eq!(server_list("nats://a:4222").unwrap(), ["nats://a:4222"]);
        assert!(server_list(" , ")
            .unwrap_err()
            .to_string()
            .contains("no NATS"));
        let e = server_list("nats://a:4222,nats://b:x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nats://b:x"), "{e}");
    }
}

#[cfg(test)]
mod login_tests {
    use super::*;

    /// A private file in a fresh directory (mode 0600).
    fn secret(dir: &Path, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    fn dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("nm-login-{tag}-{}", std::process::id()))
    }

    // base64url of {"name":"alice","sub":"UX"}
    const JWT: &str = "eyJ0eXAiOiJKV1QifQ.eyJuYW1lIjoiYWxpY2UiLCJzdWIiOiJVWCJ9.c2ln";

    fn standard() -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{JWT}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\n\
             -----BEGIN USER NKEY SEED-----\nSUAXAMPLE\n------END USER NKEY SEED------\n"
        )
    }

    #[test]
    fn jwt_name_is_the_users_name() {
        assert_eq!(jwt_name(JWT).as_deref(), Some("alice"));
        assert_eq!(jwt_name("a.!!.c"), None);
        assert_eq!(creds_block(&standard(), "NATS USER JWT"), Some(JWT));
        assert_eq!(
            creds_block(&standard(), "USER NKEY SEED"),
            Some("SUAXAMPLE")
        );
    }

    #[test]
    fn nats_creds_takes_only_the_standard_format_and_names_the_fix() {
        let d = dir("std");
        let private = secret(
            &d,
            "alice.creds",
            "user = \"alice\"\nnkey_seed = \"SUAB\"\n",
        );
        let sec = Security {
            nats_creds: Some(private.clone()),
            ..Default::default()
        };
        let e = sec.login().err().unwrap().to_string();
        let p = private.display().to_string();
        assert!(
            e.contains(&p) && e.contains(&format!("NODEMAINT_CREDS={p}")),
            "{e}"
        );
        // The same file is fine where nodemaint's own format belongs.
        let sec = Security {
            creds: Some(private),
            ..Default::default()
        };
        let l = sec.login().unwrap().unwrap();
        assert_eq!(l.name.as_deref(), Some("alice"));
        assert!(matches!(l.secret, LoginSecret::Nodemaint(_)));
        // A standard file in either place; its user is the JWT's name.
        let std_file = secret(&d, "std.creds", &standard());
        for sec in [
            Security {
                nats_creds: Some(std_file.clone()),
                ..Default::default()
            },
            Security {
                creds: Some(std_file.clone()),
                ..Default::default()
            },
        ] {
            let l = sec.login().unwrap().unwrap();
            assert_eq!(l.name.as_deref(), Some("alice"));
            assert!(matches!(l.secret, LoginSecret::Creds(_)));
        }
        let junk = secret(&d, "junk.creds", "hello\n");
        let e = Security {
            nats_creds: Some(junk),
            ..Default::default()
        }
        .login()
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("BEGIN NATS USER JWT"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn nkey_files_and_passwords() {
        let d = dir("nkey");
        let nk = secret(&d, "alice.nk", "# alice\nSUAB3XAMPLE\n");
        let sec = Security {
            nkey: Some(nk),
            user: Some("alice".into()),
            ..Default::default()
        };
        let l = sec.login().unwrap().unwrap();
        assert!(matches!(&l.secret, LoginSecret::Nkey(s) if s == "SUAB3XAMPLE"));
        assert_eq!(l.name.as_deref(), Some("alice"));
        let private = secret(&d, "p.creds", "user = a\npassword = x\n");
        let e = Security {
            nkey: Some(private),
            ..Default::default()
        }
        .login()
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("NODEMAINT_CREDS") && e.contains("p.creds"),
            "{e}"
        );
        let e = Security {
            password: Some("pw".into()),
            ..Default::default()
        }
        .login()
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("needs a user"), "{e}");
        let l = Security {
            user: Some("bob".into()),
            password: Some("pw".into()),
            ..Default::default()
        }
        .login()
        .unwrap()
        .unwrap();
        assert!(matches!(&l.secret, LoginSecret::Password(u, p) if u == "bob" && p == "pw"));
        assert!(!format!(
            "{:?}",
            Security {
                password: Some("pw".into()),
                ..Default::default()
            }
        )
        .contains("pw"));
        assert!(Security {
            user: Some("bob".into()),
            ..Default::default()
        }
        .login()
        .unwrap()
        .is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_secret_comes_whole_from_the_first_source() {
        let env = Security {
            nats_creds: Some("/env.creds".into()),
            ..Default::default()
        };
        let config = Security {
            creds: Some("/config.creds".into()),
            ca: Some("/ca.pem".into()),
            ..Default::default()
        };
        let s = env.or(config.clone());
        assert_eq!(s.nats_creds, Some("/env.creds".into()));
        assert_eq!(s.creds, None);
        assert_eq!(s.ca, Some("/ca.pem".into()));
        let named = Security {
            user: Some("c".into()),
            ..Default::default()
        };
        let s = named.or(config);
        assert_eq!(s.creds, Some("/config.creds".into()));
        assert_eq!(s.user.as_deref(), Some("c"));
    }
}
