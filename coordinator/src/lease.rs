//! Leader lease in the `leader` KV bucket: of several running coordinators
//! only the holder answers the API and runs jobs; the others wait and take
//! over when the lease expires. Acquire is put-if-absent (`create`) or a
//! compare-and-set on an expired lease, so two replicas cannot both win.
//! Expiry is measured on each reader's monotonic clock (see [`Lease`]), and
//! the revision at which a leader took the lease is its fencing token
//! ([`Elector::epoch`]), carried by every command it sends.

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const KEY: &str = "coordinator";

/// The stored lease. It holds no expiry time: whoever reads it measures the
/// lease's age on its own monotonic clock from when it saw the current
/// revision, so no two machines' wall clocks are ever compared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    /// How long the holder may go without renewing (its configured TTL).
    #[serde(default)]
    pub ttl_ms: u64,
}

/// What this process has observed of the stored lease: the revision, and
/// for how long (on its monotonic clock) it has seen that revision unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub revision: u64,
    pub for_ms: u64,
}

/// What to do with the lease as it is stored (pure).
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it: create it.
    Create,
    /// Ours, or not renewed for a whole TTL: take/renew it at this revision.
    Update(u64),
    /// Somebody else's, still being renewed.
    Wait,
}

/// `seen` is what the caller observed of `current`'s revision. A foreign
/// lease expires only once the same revision has been seen for its TTL:
/// the holder renews (changing the revision) several times per TTL.
pub fn decide(current: Option<(Lease, u64)>, me: &str, seen: Seen, own_ttl_ms: u64) -> Decision {
    match current {
        None => Decision::Create,
        Some((l, rev)) if l.holder == me => Decision::Update(rev),
        Some((l, rev)) => {
            let ttl = if l.ttl_ms > 0 { l.ttl_ms } else { own_ttl_ms };
            if seen.revision == rev && seen.for_ms >= ttl {
                Decision::Update(rev)
            } else {
                Decision::Wait
            }
        }
    }
}

/// Outcome of one attempt to take or renew the lease.
#[derive(Debug, PartialEq, Eq)]
pub enum Hold {
    /// Ours until then (local monotonic time).
    Held(Instant),
    /// Somebody else holds a valid lease (or won the race for it).
    Taken,
    /// NATS did not answer (server restart, cluster election): unknown.
    Unknown,
}

/// While renewals fail for transport reasons, a leader keeps acting until
/// shortly before its last lease runs out; then it must step down, as a
/// standby may take the lease (pure). `held_until` counts from *before* the
/// renewal was sent, and a standby counts from *after* it saw the revision,
/// so the leader always stops first.
pub fn may_keep_acting(held_until: Instant, now: Instant, margin: Duration) -> bool {
    now + margin < held_until
}

pub struct Elector {
    kv: kv::Store,
    pub me: String,
    pub ttl: Duration,
    seen: Mutex<Option<(u64, Instant)>>,
    epoch: AtomicU64,
    /// The revision of this process's last lease write that is known to
    /// have landed: a renewal is a compare-and-set on it, with no read.
    written: Mutex<Option<u64>>,
}

impl Elector {
    pub fn new(kv: kv::Store, ttl: Duration) -> Self {
        Elector {
            kv,
            me: uuid::Uuid::new_v4().to_string(),
            ttl,
            seen: Mutex::new(None),
            epoch: AtomicU64::new(0),
            written: Mutex::new(None),
        }
    }

    /// The fencing token of this leadership: the KV revision at which the
    /// lease was taken (0 before). Later leaders have larger ones.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Notes the revision read and returns how long it has been unchanged.
    fn observe(&self, revision: u64) -> Seen {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap();
        match *seen {
            Some((r, since)) if r == revision => Seen {
                revision,
                for_ms: now.duration_since(since).as_millis() as u64,
            },
            _ => {
                *seen = Some((revision, now));
                Seen {
                    revision,
                    for_ms: 0,
                }
            }
        }
    }

    /// One attempt to take or renew the lease.
    pub async fn try_hold(&self) -> Hold {
        let sent = Instant::now();
        let lease = Lease {
            holder: self.me.clone(),
            ttl_ms: self.ttl.as_millis() as u64,
        };
        let bytes: bytes::Bytes = serde_json::to_vec(&lease).expect("lease serializes").into();
        // Renewal: compare-and-set on our own last write, no read first (a
        // read from the stream leader would add a round trip, and a whole
        // request timeout while a cluster elects one). It fails only if
        // someone wrote since, or our last write's answer was lost while it
        // landed: then read the lease and decide as below.
        let ours = *self.written.lock().unwrap();
        if let Some(rev) = ours {
            match self.kv.update(KEY, bytes.clone(), rev).await {
                Ok(revision) => {
                    *self.written.lock().unwrap() = Some(revision);
                    return Hold::Held(sent + self.ttl);
                }
                Err(e) if nodemaint_proto::bus::update_conflict(&e) => {
                    *self.written.lock().unwrap() = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write leader lease");
                    return Hold::Unknown;
                }
            }
        }
        // From the stream leader: a lagging replica's older revision would
        // make a renewal fail (and the lease look unchanged to a standby).
        let current = match nodemaint_proto::bus::leader_entry(&self.kv, KEY).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => {
                // An unreadable lease is somebody's: it expires like any.
                let l = serde_json::from_slice::<Lease>(&e.value).unwrap_or(Lease {
                    holder: String::from_utf8_lossy(&e.value).into_owned(),
                    ttl_ms: 0,
                });
                Some((l, e.revision))
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read leader lease");
                return Hold::Unknown;
            }
        };
        let ttl_ms = lease.ttl_ms;
        let seen = match &current {
            Some((_, rev)) => self.observe(*rev),
            None => Seen {
                revision: 0,
                for_ms: 0,
            },
        };
        let taking = current.as_ref().is_none_or(|(l, _)| l.holder != self.me);
        let written = match decide(current, &self.me, seen, ttl_ms) {
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
            Decision::Wait => return Hold::Taken,
        };
        match written {
            Ok(revision) => {
                if taking {
                    self.epoch.store(revision, Ordering::SeqCst);
                }
                *self.written.lock().unwrap() = Some(revision);
                Hold::Held(sent + self.ttl)
            }
            // Somebody else wrote first.
            Err((true, _)) => Hold::Taken,
            Err((false, e)) => {
                tracing::warn!(error = %e, "cannot write leader lease");
                Hold::Unknown
            }
        }
    }

    /// Waits until this coordinator holds the lease; returns until when.
    pub async fn acquire(&self) -> Instant {
        let mut logged = false;
        loop {
            if let Hold::Held(until) = self.try_hold().await {
                tracing::info!(id = %self.me, epoch = self.epoch(), "holding the leader lease");
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
    pub async fn keep(&self, mut held_until: Instant) {
        let margin = (self.ttl / 6).max(Duration::from_millis(200));
        loop {
            tokio::time::sleep(self.ttl / 4).await;
            match self.try_hold().await {
                Hold::Held(until) => held_until = until,
                Hold::Taken => return,
                Hold::Unknown => {
                    if !may_keep_acting(held_until, Instant::now(), margin) {
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

    fn lease(holder: &str, ttl_ms: u64) -> Option<(Lease, u64)> {
        Some((
            Lease {
                holder: holder.into(),
                ttl_ms,
            },
            7,
        ))
    }

    fn seen(revision: u64, for_ms: u64) -> Seen {
        Seen { revision, for_ms }
    }

    #[test]
    fn free_lease_is_created() {
        assert_eq!(decide(None, "a", seen(0, 0), 1000), Decision::Create);
    }

    #[test]
    fn own_lease_is_renewed_and_an_unrenewed_one_taken() {
        assert_eq!(
            decide(lease("a", 100), "a", seen(7, 0), 100),
            Decision::Update(7)
        );
        assert_eq!(
            decide(lease("b", 100), "a", seen(7, 100), 100),
            Decision::Update(7)
        );
    }

    #[test]
    fn a_renewed_foreign_lease_means_wait_whatever_the_clocks_say() {
        // Unchanged for less than its TTL: the holder may still be renewing.
        assert_eq!(
            decide(lease("b", 100), "a", seen(7, 99), 100),
            Decision::Wait
        );
        // A revision seen just now (it changed: a renewal) starts over.
        assert_eq!(
            decide(lease("b", 100), "a", seen(8, 5000), 100),
            Decision::Wait
        );
        // The holder's TTL counts, not the reader's.
        assert_eq!(
            decide(lease("b", 500), "a", seen(7, 200), 100),
            Decision::Wait
        );
        assert_eq!(
            decide(lease("b", 0), "a", seen(7, 200), 100),
            Decision::Update(7)
        );
    }

    #[test]
    fn a_leader_rides_out_failed_renewals_until_its_lease_nearly_ends() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert!(may_keep_acting(t0 + ms(10_000), t0 + ms(8_000), ms(1_000)));
        assert!(!may_keep_acting(t0 + ms(10_000), t0 + ms(9_000), ms(1_000)));
        assert!(!may_keep_acting(
            t0 + ms(10_000),
            t0 + ms(12_000),
            ms(1_000)
        ));
    }
}
