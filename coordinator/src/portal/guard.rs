//! Pure checks of the login: where a login may send the browser next, and
//! how many wrong passwords a user name or an address may try. No I/O; the
//! clock is passed in.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where to go after login: `next` when it is a path of this portal, else
/// `/`.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if is_local_path(n) => n.to_string(),
        _ => "/".to_string(),
    }
}

/// Whether `n` is a same-origin path. A browser reads `//host`, `/\host`
/// (and `/<tab>/host`: it drops tabs and newlines anywhere in a URL) as
/// another host, and anything not starting with `/` may carry a scheme. The
/// percent-decoded form must pass too, in case something on the way decodes
/// once more.
pub fn is_local_path(n: &str) -> bool {
    const MAX: usize = 2048;
    fn ok(b: &[u8]) -> bool {
        b.first() == Some(&b'/')
            && !matches!(b.get(1), Some(b'/' | b'\\'))
            && !b
                .iter()
                .any(|&c| c.is_ascii_control() || c == b'\\' || !c.is_ascii())
    }
    n.len() <= MAX
        && !n.contains(' ')
        && ok(n.as_bytes())
        && percent_decode(n).is_some_and(|d| ok(&d))
}

/// `%XX` decoded; `None` on a malformed escape.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Failed logins per user name and per client address within a sliding
/// window. An attempt is counted when it starts (so parallel attempts
/// cannot all slip under the limit) and forgiven for the user name when it
/// succeeds; a refused attempt costs no password check.
pub struct Throttle {
    window: Duration,
    per_user: usize,
    per_address: usize,
    /// "u:NAME" / "a:ADDRESS" → start times of counted attempts, oldest first.
    seen: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// Keys kept before expired ones are swept (user names are the client's
/// choice).
const SWEEP_AT: usize = 10_000;

impl Throttle {
    pub fn new(window: Duration, per_user: u32, per_address: u32) -> Self {
        Throttle {
            window: window.max(Duration::from_secs(1)),
            per_user: per_user.max(1) as usize,
            per_address: per_address.max(1) as usize,
            seen: Mutex::default(),
        }
    }

    fn keys(user: &str, addr: Option<IpAddr>) -> (String, Option<String>) {
        (
            format!("u:{user}"),
            addr.map(|a| format!("a:{}", addr_key(a))),
        )
    }

    /// Counts an attempt of `user` from `addr` at `now`, or refuses it with
    /// how long until the oldest counted failure leaves the window.
    pub fn begin(&self, user: &str, addr: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let (u, a) = Self::keys(user, addr);
        let mut seen = self.seen.lock().unwrap();
        if seen.len() > SWEEP_AT {
            let w = self.window;
            seen.retain(|_, v| v.back().is_some_and(|t| now.duration_since(*t) < w));
        }
        let mut wait = Duration::ZERO;
        let checks = [(Some(&u), self.per_user), (a.as_ref(), self.per_address)];
        for (key, limit) in checks {
            let Some(key) = key else { continue };
            if let Some(v) = seen.get_mut(key) {
                while v
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.window)
                {
                    v.pop_front();
                }
                if v.len() >= limit {
                    // The attempt that frees a place is the len-limit+1-th oldest.
                    let t = v[v.len() - limit];
                    wait = wait.max(self.window - now.duration_since(t));
                }
            }
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        for key in [Some(u), a].into_iter().flatten() {
            seen.entry(key).or_default().push_back(now);
        }
        Ok(())
    }

    /// A right password: the user name's failures are forgiven, and this
    /// attempt is not held against the address.
    pub fn succeeded(&self, user: &str, addr: Option<IpAddr>, started: Instant) {
        let (u, a) = Self::keys(user, addr);
        let mut seen = self.seen.lock().unwrap();
        seen.remove(&u);
        if let Some(v) = a.and_then(|a| seen.get_mut(&a)) {
            if let Some(i) = v.iter().rposition(|t| *t == started) {
                v.remove(i);
            }
        }
    }
}

/// An address as the throttle counts it: IPv4 as is, IPv6 by its /64 (one
/// host usually has a whole /64).
fn addr_key(a: IpAddr) -> String {
    match a {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_accepts_local_paths() {
        for p in [
            "/",
            "/jobs",
            "/stacks/node1",
            "/vms?kind=vfw&node=node%2D1",
            "/cloudspaces/cs1",
            "/a/b//c",
            "/jobs?x=%2F%2F",
        ] {
            assert!(is_local_path(p), "{p} refused");
            assert_eq!(safe_next(Some(p)), p);
        }
    }

    #[test]
    fn next_refuses_everything_that_leaves_the_origin() {
        let bad = [
            "",
            "jobs",
            "//evil.example",
            "//evil.example/",
            "///evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/\\/evil.example",
            "https://evil.example/",
            "http:/evil.example",
            "javascript:alert(1)",
            "data:text/html,x",
            " /jobs",
            "\t//evil.example",
            // Browsers drop tabs and newlines anywhere in a URL.
            "/\t/evil.example",
            "/\n/evil.example",
            "/\r/evil.example",
            "/\x0b/evil.example",
            "/\x00/evil.example",
            "/\x7f/evil.example",
            "/ /evil.example",
            // The same once more percent-encoded (a second decode).
            "/%09/evil.example",
            "/%0a/evil.example",
            "/%0D/evil.example",
            "/%2F/evil.example",
            "/%2f/evil.example",
            "/%5C/evil.example",
            "/%5cevil.example",
            "/%00",
            "/%zz",
            "/%4",
            "/%",
            // Non-ASCII (look-alike slashes) never appears in our paths.
            "/\u{2215}/evil.example",
            "/\u{ff0f}/evil.example",
        ];
        for n in bad {
            assert!(!is_local_path(n), "{n:?} accepted");
            assert_eq!(safe_next(Some(n)), "/", "{n:?}");
        }
        assert_eq!(safe_next(None), "/");
        assert!(!is_local_path(&format!("/{}", "a".repeat(3000))));
    }

    #[test]
    fn every_single_control_byte_after_the_slash_is_refused() {
        for c in (0u8..0x20).chain([0x7f]) {
            let raw = format!("/{}/evil.example", c as char);
            assert!(!is_local_path(&raw), "{raw:?}");
            let enc = format!("/%{c:02X}/evil.example");
            assert!(!is_local_path(&enc), "{enc}");
        }
    }

    #[test]
    fn throttle_refuses_after_the_limit_per_user_until_the_window_passes() {
        let t = Throttle::new(Duration::from_secs(60), 3, 100);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..3 {
            t.begin("alice", Some(a), t0 + Duration::from_secs(i))
                .unwrap();
        }
        let wait = t
            .begin("alice", Some(a), t0 + Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        // A refused attempt is not counted: once the first leaves the window,
        // one more may try.
        t.begin("alice", Some(a), t0 + Duration::from_secs(60))
            .unwrap();
        assert!(t
            .begin("alice", Some(a), t0 + Duration::from_secs(60))
            .is_err());
        // Another user is not affected.
        t.begin("bob", Some(a), t0 + Duration::from_secs(10))
            .unwrap();
    }

    #[test]
    fn throttle_counts_per_address_across_user_names() {
        let t = Throttle::new(Duration::from_secs(60), 100, 4);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let same64: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let now = Instant::now();
        for i in 0..4 {
            t.begin(&format!("user{i}"), Some(a), now).unwrap();
        }
        assert!(t.begin("user9", Some(same64), now).is_err());
        t.begin("user9", Some(other), now).unwrap();
        // Without a known address only the user name counts.
        t.begin("user9", None, now).unwrap();
    }

    #[test]
    fn a_right_password_forgives_the_user_but_the_address_keeps_its_failures() {
        let t = Throttle::new(Duration::from_secs(60), 2, 3);
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        // alice: one failure, then her password: her count starts over.
        t.begin("alice", Some(a), at(0)).unwrap();
        t.begin("alice", Some(a), at(1)).unwrap();
        t.succeeded("alice", Some(a), at(1));
        t.begin("alice", Some(a), at(2)).unwrap();
        t.begin("alice", Some(a), at(3)).unwrap();
        assert!(t.begin("alice", Some(a), at(4)).is_err());
        // The address has three failures (0, 2, 3): nobody else from there.
        assert!(t.begin("bob", Some(a), at(5)).is_err());
        assert_eq!(t.begin("bob", Some(a), at(5)).unwrap_err(), at(60) - at(5));
    }

    #[test]
    fn throttle_memory_is_swept() {
        let t = Throttle::new(Duration::from_secs(1), 5, 5);
        let t0 = Instant::now();
        for i in 0..=SWEEP_AT {
            t.begin(&format!("u{i}"), None, t0).unwrap();
        }
        t.begin("late", None, t0 + Duration::from_secs(2)).unwrap();
        assert!(t.seen.lock().unwrap().len() <= 2);
    }
}
