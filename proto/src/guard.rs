//! What one side may hand the other to execute or open, checked by both:
//! the coordinator when its config loads and before it sends, the agent
//! before it acts. Pure functions, no I/O.
//!
//! - A hook is a *name* from the agent's own config, never a command line.
//! - A migration or probe URI goes to one of a few remote transports over
//!   a plain address: no query parameters (libvirt's `qemu+ext` and
//!   `?command=`/`?socket=`/`?keyfile=` make it run or read what the URI
//!   says), no path but `/system`.

use std::net::{Ipv4Addr, Ipv6Addr};

/// libvirt transports a migration destination or a probe may use.
pub const LIBVIRT_TRANSPORTS: [&str; 3] = ["qemu+tcp", "qemu+tls", "qemu+ssh"];
/// Transports of the hypervisor's own migration stream (`migrate_uri`).
pub const MIGRATE_TRANSPORTS: [&str; 2] = ["tcp", "tls"];
/// Drivers that open no connection and run nothing (libvirt's `test:`
/// driver, the simulated fleet's `sim:`); allowed only when a config says
/// `test_drivers = true` (the fast tests and the simulated fleet).
pub const TEST_DRIVERS: [&str; 2] = ["test", "sim"];

/// A hook name: `[a-z0-9_-]{1,32}`.
pub fn validate_hook_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid hook name {name:?}: a hook is named, [a-z0-9_-]{{1,32}}, and its command \
             is set in each agent's config ([hooks])"
        ))
    }
}

/// A node's address: an IPv4 address, a bracketed IPv6 address or a DNS
/// host name, with an optional `:port`; nothing else.
pub fn validate_address(addr: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid address {addr:?}: {why}"));
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return bad("unclosed [");
        };
        if v6.parse::<Ipv6Addr>().is_err() {
            return bad("not an IPv6 address inside [ ]");
        }
        match after {
            "" => return Ok(()),
            _ => match after.strip_prefix(':') {
                Some(p) => (None, Some(p)),
                None => return bad("only :PORT may follow ]"),
            },
        }
    } else {
        match addr.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(addr), None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err() {
            return bad("the port must be a number up to 65535");
        }
    }
    match host {
        None => Ok(()),
        Some(h) if h.parse::<Ipv4Addr>().is_ok() => Ok(()),
        Some(h) if is_dns_name(h) => Ok(()),
        Some(_) => bad("expected an IP address or a DNS host name, with an optional :PORT"),
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner
/// hyphens, 63 bytes each, 253 in all; not all digits (that is an IPv4
/// address or garbage).
fn is_dns_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && !h.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Splits `scheme://rest`, refusing what no URI of ours contains: query,
/// fragment, whitespace or control characters.
fn split(uri: &str) -> Result<(&str, &str), String> {
    if let Some(c) = uri
        .chars()
        .find(|c| matches!(c, '?' | '#') || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "URI {uri:?} refused: it contains {c:?} (no query parameters or fragments are allowed)"
        ));
    }
    uri.split_once("://")
        .ok_or_else(|| format!("URI {uri:?} refused: not of the form TRANSPORT://ADDRESS"))
}

/// A libvirt URI another node's libvirt is reached at (migration
/// destination, pre-flight probe): `qemu+{tcp,tls,ssh}://[USER@]ADDRESS/system`,
/// or with `test_drivers` also `test:` and `sim:` ones.
pub fn check_libvirt_uri(uri: &str, test_drivers: bool) -> Result<(), String> {
    let (scheme, rest) = split(uri)?;
    if test_drivers && TEST_DRIVERS.contains(&scheme) {
        return Ok(());
    }
    if !LIBVIRT_TRANSPORTS.contains(&scheme) {
        return Err(format!(
            "URI {uri:?} refused: transport {scheme:?} is not one of {}",
            LIBVIRT_TRANSPORTS.join(", ")
        ));
    }
    let Some((authority, path)) = rest.split_once('/') else {
        return Err(format!("URI {uri:?} refused: no /system path"));
    };
    if path != "system" {
        return Err(format!(
            "URI {uri:?} refused: the path must be /system, not /{path}"
        ));
    }
    let host = match authority.rsplit_once('@') {
        Some((user, host)) => {
            let ok = !user.is_empty()
                && user.len() <= 32
                && !user.starts_with('-')
                && user
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
            if !ok {
                return Err(format!("URI {uri:?} refused: invalid user {user:?}"));
            }
            host
        }
        None => authority,
    };
    validate_address(host).map_err(|e| format!("URI {uri:?} refused: {e}"))
}

/// The hypervisor's migration stream URI: `tcp://ADDRESS` or `tls://ADDRESS`.
pub fn check_migrate_uri(uri: &str) -> Result<(), String> {
    let (scheme, rest) = split(uri)?;
    if !MIGRATE_TRANSPORTS.contains(&scheme) {
        return Err(format!(
            "migration URI {uri:?} refused: transport {scheme:?} is not one of {}",
            MIGRATE_TRANSPORTS.join(", ")
        ));
    }
    validate_address(rest).map_err(|e| format!("migration URI {uri:?} refused: {e}"))
}

/// `template` with `{node}` and `{address}` replaced; the caller checks the
/// result ([`check_libvirt_uri`], [`check_migrate_uri`]) and validated
/// `address` ([`validate_address`]) and `node` (a subject token) before.
pub fn render(template: &str, node: &str, address: &str) -> String {
    template
        .replace("{node}", node)
        .replace("{address}", address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_names() {
        for ok in ["reboot", "a", "upgrade-kernel_2", &"x".repeat(32)] {
            validate_hook_name(ok).unwrap();
        }
        for bad in [
            "",
            "systemctl reboot",
            "Reboot",
            "reboot;id",
            "$(id)",
            "a/b",
            &"x".repeat(33),
        ] {
            let e = validate_hook_name(bad).unwrap_err();
            assert!(e.contains("[hooks]"), "{e}");
        }
    }

    #[test]
    fn addresses() {
        for ok in [
            "10.0.0.2",
            "10.0.0.2:16509",
            "node1",
            "node-1.example.org",
            "[fd00::1]",
            "[fd00::1]:49152",
        ] {
            validate_address(ok).unwrap_or_else(|e| panic!("{e}"));
        }
        for bad in [
            "",
            "10.0.0.2/system?command=x",
            "a b",
            "-oProxyCommand=x",
            "host:port",
            "host:70000",
            "fd00::1",
            "[fd00::1",
            "[nothex]",
            "user@host",
            "x..y",
            "999.1.1.1",
            "host:",
            "[::1]x",
        ] {
            assert!(validate_address(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn libvirt_uris_allowlisted_transports_without_queries() {
        for ok in [
            "qemu+tcp://10.0.0.2/system",
            "qemu+tls://node2.example:16514/system",
            "qemu+ssh://root@10.0.0.2/system",
            "qemu+tcp://[fd00::2]/system",
        ] {
            check_libvirt_uri(ok, false).unwrap_or_else(|e| panic!("{e}"));
        }
        for (bad, why) in [
            ("qemu+ext:///system?command=/bin/touch%20/tmp/pwned", "?"),
            ("qemu+ext://x/system", "qemu+ext"),
            ("qemu+tcp://10.0.0.2/system?socket=/tmp/s", "?"),
            ("qemu+ssh://h/system?keyfile=/etc/shadow", "?"),
            ("qemu+ssh://-oProxyCommand=id/system", "address"),
            ("qemu+unix:///system", "qemu+unix"),
            ("qemu:///system", "qemu"),
            ("qemu+tcp://10.0.0.2/session", "/system"),
            ("qemu+tcp://10.0.0.2", "/system"),
            ("qemu+tcp://10.0.0.2/system#x", "#"),
            ("qemu+tcp://a b/system", "' '"),
            ("test:///default", "test"),
            ("sim://node1", "sim"),
            ("qemu+tcp:10.0.0.2/system", "TRANSPORT://"),
        ] {
            let e = check_libvirt_uri(bad, false).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        // Test drivers only when allowed, and never with a query.
        check_libvirt_uri("test:///tmp/x/node1.xml", true).unwrap();
        check_libvirt_uri("sim://node1", true).unwrap();
        assert!(check_libvirt_uri("test:///default?x=1", true).is_err());
        assert!(check_libvirt_uri("qemu+ext:///system", true).is_err());
    }

    #[test]
    fn migrate_uris() {
        check_migrate_uri("tcp://10.0.0.2").unwrap();
        check_migrate_uri("tls://node2:49152").unwrap();
        for bad in [
            "tcp://10.0.0.2/x",
            "unix:///tmp/s",
            "tcp://10.0.0.2?x=1",
            "rdma://10.0.0.2",
            "",
        ] {
            assert!(check_migrate_uri(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn templates_render_node_and_address() {
        assert_eq!(
            render("qemu+tcp://{address}/system", "n1", "10.0.0.1:16509"),
            "qemu+tcp://10.0.0.1:16509/system"
        );
        assert_eq!(render("sim://{node}", "n1", ""), "sim://n1");
    }
}
