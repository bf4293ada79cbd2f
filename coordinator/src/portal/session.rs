//! Portal sessions in a JetStream KV bucket, so that every coordinator's
//! portal knows them: a session survives a leader change or a restart.
//!
//! - The cookie holds a random 256-bit token; the bucket's key is its
//!   SHA-256, so whoever can read the bucket cannot use a session.
//! - A session ends `idle` after its last request and `lifetime` after its
//!   login, however active (checked here, on the coordinators' wall clocks).
//!   The bucket's max age is the lifetime too: the server drops what nobody
//!   deleted.
//! - The last-request time is written back at most once per
//!   [`refresh_every`], not on every request.

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// What the bucket holds per session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    pub user: String,
    /// The session's CSRF token (forms carry it).
    pub csrf: String,
    pub created_ms: i64,
    pub seen_ms: i64,
}

/// Whether a stored session is still valid at `now_ms`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid; `refresh` when its last-request time should be written back.
    Valid {
        refresh: bool,
    },
    Expired,
}

/// How stale the stored last-request time may get before it is written
/// back: a tenth of the idle time, at most a minute.
pub fn refresh_every(idle: Duration) -> Duration {
    (idle / 10).min(Duration::from_secs(60))
}

/// The pure rule: valid while within `idle` of the last request and within
/// `lifetime` of the login.
pub fn verdict(s: &Stored, now_ms: i64, idle: Duration, lifetime: Duration) -> Verdict {
    let ms = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
    if now_ms >= s.created_ms.saturating_add(ms(lifetime))
        || now_ms >= s.seen_ms.saturating_add(ms(idle))
    {
        return Verdict::Expired;
    }
    Verdict::Valid {
        refresh: now_ms - s.seen_ms >= ms(refresh_every(idle)),
    }
}

/// The bucket key of a cookie token.
fn key(token: &str) -> String {
    crate::jobs::hex(&Sha256::digest(token.as_bytes()))
}

/// The KV session store.
pub struct Sessions {
    kv: kv::Store,
    pub idle: Duration,
    pub lifetime: Duration,
}

/// A session as a request sees it.
#[derive(Clone, Debug)]
pub struct Session {
    pub user: String,
    pub csrf: String,
}

impl Sessions {
    /// Opens (creating when missing) the sessions bucket.
    pub async fn open(
        js: &async_nats::jetstream::Context,
        bucket: &str,
        replicas: usize,
        idle: Duration,
        lifetime: Duration,
    ) -> anyhow::Result<Self> {
        let kv = nodemaint_proto::bus::bucket(js, bucket, 1, lifetime, replicas)
            .await
            .map_err(|e| anyhow::anyhow!("portal sessions bucket {bucket}: {e}"))?;
        Ok(Sessions { kv, idle, lifetime })
    }

    /// A new session for `user`: (cookie token, session).
    pub async fn create(&self, user: &str) -> anyhow::Result<(String, Session)> {
        let token = super::auth::random_token();
        let now = nodemaint_proto::now_ms();
        let s = Stored {
            user: user.to_string(),
            csrf: super::auth::random_token(),
            created_ms: now,
            seen_ms: now,
        };
        self.kv
            .put(key(&token), serde_json::to_vec(&s)?.into())
            .await
            .map_err(|e| anyhow::anyhow!("cannot store the session: {e}"))?;
        Ok((
            token,
            Session {
                user: s.user,
                csrf: s.csrf,
            },
        ))
    }

    /// The live session of `token`. `None` when unknown or expired (an
    /// expired one is deleted), or when the bucket cannot be read (logged).
    pub async fn get(&self, token: &str) -> Option<Session> {
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let k = key(token);
        // From the leader: a session stored a moment ago (the login's
        // redirect) must not look unknown on a lagging replica.
        let bytes = match nodemaint_proto::bus::leader_value(&self.kv, &k).await {
            Ok(b) => b?,
            Err(e) => {
                tracing::warn!(error = %e, "portal: cannot read a session");
                return None;
            }
        };
        let mut s: Stored = serde_json::from_slice(&bytes).ok()?;
        let now = nodemaint_proto::now_ms();
        match verdict(&s, now, self.idle, self.lifetime) {
            Verdict::Expired => {
                let _ = self.kv.delete(&k).await;
                None
            }
            Verdict::Valid { refresh } => {
                if refresh {
                    s.seen_ms = now;
                    if let Ok(b) = serde_json::to_vec(&s) {
                        // Losing one refresh only shortens the idle time.
                        if let Err(e) = self.kv.put(&k, b.into()).await {
                            tracing::warn!(error = %e, "portal: cannot refresh a session");
                        }
                    }
                }
                Some(Session {
                    user: s.user,
                    csrf: s.csrf,
                })
            }
        }
    }

    /// Ends the session of `token` on every coordinator.
    pub async fn remove(&self, token: &str) {
        if let Err(e) = self.kv.delete(key(token)).await {
            tracing::warn!(error = %e, "portal: cannot delete a session");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(3600);

    fn stored(created_ms: i64, seen_ms: i64) -> Stored {
        Stored {
            user: "alice".into(),
            csrf: "c".into(),
            created_ms,
            seen_ms,
        }
    }

    #[test]
    fn a_session_ends_after_idle_time_or_lifetime_whichever_first() {
        let (idle, life) = (8 * H, 12 * H);
        let h = 3_600_000i64;
        let s = stored(0, 0);
        assert_eq!(
            verdict(&s, 0, idle, life),
            Verdict::Valid { refresh: false }
        );
        assert_eq!(
            verdict(&s, 8 * h - 1, idle, life),
            Verdict::Valid { refresh: true }
        );
        assert_eq!(verdict(&s, 8 * h, idle, life), Verdict::Expired);
        // Active all along: still ends 12 h after the login.
        let active = stored(0, 12 * h - 1000);
        assert_eq!(
            verdict(&active, 12 * h - 1, idle, life),
            Verdict::Valid { refresh: false }
        );
        assert_eq!(verdict(&active, 12 * h, idle, life), Verdict::Expired);
        assert_eq!(verdict(&active, 20 * h, idle, life), Verdict::Expired);
    }

    #[test]
    fn the_last_request_is_written_back_at_most_once_a_minute() {
        assert_eq!(refresh_every(8 * H), Duration::from_secs(60));
        assert_eq!(
            refresh_every(Duration::from_secs(100)),
            Duration::from_secs(10)
        );
        let s = stored(0, 0);
        assert_eq!(
            verdict(&s, 59_999, 8 * H, 12 * H),
            Verdict::Valid { refresh: false }
        );
        assert_eq!(
            verdict(&s, 60_000, 8 * H, 12 * H),
            Verdict::Valid { refresh: true }
        );
    }

    #[test]
    fn keys_are_hashes_of_the_token() {
        let t = "ab".repeat(32);
        assert_eq!(key(&t).len(), 64);
        assert_ne!(key(&t), t);
        assert_eq!(key(&t), key(&t));
    }
}
