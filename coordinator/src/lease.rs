//! Leader lease in the `leader` KV bucket: of several running coordinators
//! only the holder answers the API and runs jobs; the others wait and take
//! over when the lease expires. Acquire is put-if-absent (`create`) or a
//! compare-and-set on an expired lease, so two replicas cannot both win.

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use std::time::Duration;

const KEY: &str = "coordinator";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    pub expires_ms: i64,
}

/// What to do with the lease as it is stored (pure).
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it: create it.
    Create,
    /// Ours or expired: take/renew it at this revision.
    Update(u64),
    /// Somebody else's, valid until then.
    Wait(i64),
}

pub fn decide(current: Option<(Lease, u64)>, me: &str, now_ms: i64) -> Decision {
    match current {
        None => Decision::Create,
        Some((l, rev)) if l.holder == me || l.expires_ms < now_ms => Decision::Update(rev),
        Some((l, _)) => Decision::Wait(l.expires_ms),
    }
}

pub struct Elector {
    kv: kv::Store,
    pub me: String,
    pub ttl: Duration,
}

impl Elector {
    pub fn new(kv: kv::Store, ttl: Duration) -> Self {
        Elector {
            kv,
            me: uuid::Uuid::new_v4().to_string(),
            ttl,
        }
    }

    /// One attempt to take or renew the lease; true when we hold it.
    pub async fn try_hold(&self) -> bool {
        let now = nodemaint_proto::now_ms();
        let current = match self.kv.entry(KEY).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                serde_json::from_slice::<Lease>(&e.value)
                    .ok()
                    .map(|l| (l, e.revision))
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read leader lease");
                return false;
            }
        };
        let lease = Lease {
            holder: self.me.clone(),
            expires_ms: now + self.ttl.as_millis() as i64,
        };
        let bytes: bytes::Bytes = serde_json::to_vec(&lease).expect("lease serializes").into();
        match decide(current, &self.me, now) {
            Decision::Create => self.kv.create(KEY, bytes).await.is_ok(),
            Decision::Update(rev) => self.kv.update(KEY, bytes, rev).await.is_ok(),
            Decision::Wait(_) => false,
        }
    }

    /// Waits until this coordinator holds the lease.
    pub async fn acquire(&self) {
        let mut logged = false;
        while !self.try_hold().await {
            if !logged {
                tracing::info!("another coordinator holds the lease; standing by");
                logged = true;
            }
            tokio::time::sleep(self.ttl / 3).await;
        }
        tracing::info!(id = %self.me, "holding the leader lease");
    }

    /// Renews the lease until a renewal fails; returns when leadership is lost.
    pub async fn keep(&self) {
        loop {
            tokio::time::sleep(self.ttl / 3).await;
            if !self.try_hold().await {
                // One retry before giving up: a single slow request is not a loss.
                tokio::time::sleep(Duration::from_millis(200)).await;
                if !self.try_hold().await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, expires_ms: i64) -> Option<(Lease, u64)> {
        Some((
            Lease {
                holder: holder.into(),
                expires_ms,
            },
            7,
        ))
    }

    #[test]
    fn free_lease_is_created() {
        assert_eq!(decide(None, "a", 0), Decision::Create);
    }

    #[test]
    fn own_lease_is_renewed_and_expired_one_taken() {
        assert_eq!(decide(lease("a", 100), "a", 50), Decision::Update(7));
        assert_eq!(decide(lease("b", 100), "a", 101), Decision::Update(7));
    }

    #[test]
    fn valid_foreign_lease_means_wait() {
        assert_eq!(decide(lease("b", 100), "a", 99), Decision::Wait(100));
    }
}
