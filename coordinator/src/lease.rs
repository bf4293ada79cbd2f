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

/// Outcome of one attempt to take or renew the lease.
#[derive(Debug, PartialEq, Eq)]
pub enum Hold {
    /// Ours until then.
    Held(i64),
    /// Somebody else holds a valid lease (or won the race for it).
    Taken,
    /// NATS did not answer (server restart, cluster election): unknown.
    Unknown,
}

/// While renewals fail for transport reasons, a leader keeps acting until
/// shortly before its last lease runs out; then it must step down, as a
/// standby may take the lease (pure).
pub fn may_keep_acting(held_until_ms: i64, now_ms: i64, margin_ms: i64) -> bool {
    now_ms < held_until_ms - margin_ms
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

    /// One attempt to take or renew the lease.
    pub async fn try_hold(&self) -> Hold {
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
                return Hold::Unknown;
            }
        };
        let lease = Lease {
            holder: self.me.clone(),
            expires_ms: now + self.ttl.as_millis() as i64,
        };
        let bytes: bytes::Bytes = serde_json::to_vec(&lease).expect("lease serializes").into();
        let written = match decide(current, &self.me, now) {
            Decision::Create => self
                .kv
                .create(KEY, bytes)
                .await
                .map_err(|e| (nodemaint_proto::bus::create_conflict(&e), e.to_string())),
            Decision::Update(rev) => self
                .kv
                .update(KEY, bytes, rev)
                .await
                .map_err(|e| (nodemaint_proto::bus::update_conflict(&e), e.to_string())),
            Decision::Wait(_) => return Hold::Taken,
        };
        match written {
            Ok(_) => Hold::Held(lease.expires_ms),
            // Somebody else wrote first.
            Err((true, _)) => Hold::Taken,
            Err((false, e)) => {
                tracing::warn!(error = %e, "cannot write leader lease");
                Hold::Unknown
            }
        }
    }

    /// Waits until this coordinator holds the lease; returns its expiry.
    pub async fn acquire(&self) -> i64 {
        let mut logged = false;
        loop {
            if let Hold::Held(until) = self.try_hold().await {
                tracing::info!(id = %self.me, "holding the leader lease");
                return until;
            }
            if !logged {
                tracing::info!("another coordinator holds the lease; standing by");
                logged = true;
            }
            // Look often: a long TTL (cluster) must not lengthen takeovers more.
            tokio::time::sleep((self.ttl / 3).min(Duration::from_secs(2))).await;
        }
    }

    /// Renews the lease until leadership is lost: somebody else holds it,
    /// or renewals kept failing until our lease (nearly) ran out. A NATS
    /// blip shorter than that is ridden out.
    pub async fn keep(&self, mut held_until_ms: i64) {
        let margin = (self.ttl.as_millis() as i64 / 6).max(200);
        loop {
            tokio::time::sleep(self.ttl / 4).await;
            match self.try_hold().await {
                Hold::Held(until) => held_until_ms = until,
                Hold::Taken => return,
                Hold::Unknown => {
                    if !may_keep_acting(held_until_ms, nodemaint_proto::now_ms(), margin) {
                        return;
                    }
                    tracing::warn!("leader lease not renewed (NATS unavailable); retrying");
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
    fn a_leader_rides_out_failed_renewals_until_its_lease_nearly_ends() {
        assert!(may_keep_acting(10_000, 8_000, 1_000));
        assert!(!may_keep_acting(10_000, 9_000, 1_000));
        assert!(!may_keep_acting(10_000, 12_000, 1_000));
    }

    #[test]
    fn valid_foreign_lease_means_wait() {
        assert_eq!(decide(lease("b", 100), "a", 99), Decision::Wait(100));
    }
}
