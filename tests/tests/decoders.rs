//! Every decoder of wire and file input (tests/src/fuzz.rs) never panics on
//! arbitrary and structure-aware input: it decodes or returns a typed error
//! with a message. 1,000 cases each here (about 3 s); `bench fuzz` runs
//! 100,000+ per decoder.

use nodemaint_tests::fuzz::{decoders, show_input};
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::sync::atomic::{AtomicUsize, Ordering};

const CASES: u32 = 1000;

fn check(name: &str) {
    let dec = decoders()
        .into_iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("no decoder {name}"));
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let (oks, errs) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let res = runner.run(&(dec.input)(), |input| {
        match (dec.run)(&input) {
            Ok(()) => oks.fetch_add(1, Ordering::Relaxed),
            Err(msg) if msg.trim().is_empty() => {
                return Err(TestCaseError::fail(format!(
                    "an error without a message for {}",
                    show_input(&input)
                )))
            }
            Err(_) => errs.fetch_add(1, Ordering::Relaxed),
        };
        Ok(())
    });
    if let Err(e) = res {
        panic!("decoder {name}: {e}");
    }
    // The inputs reach both the accepting and the rejecting paths.
    let (oks, errs) = (oks.into_inner(), errs.into_inner());
    assert!(oks > 0, "{name}: no input was accepted ({errs} rejected)");
    assert!(errs > 0, "{name}: no input was rejected ({oks} accepted)");
}

macro_rules! decoder_tests {
    ($($test:ident => $name:literal,)*) => {
        $(#[test] fn $test() { check($name) })*

        #[test]
        fn every_decoder_has_a_test() {
            let tested = [$($name),*];
            for d in decoders() {
                assert!(tested.contains(&d.name), "decoder {} has no test", d.name);
            }
        }
    };
}

decoder_tests! {
    agent_command => "pb AgentCommand",
    event => "pb Event",
    api_request => "pb ApiRequest",
    api_reply => "pb ApiReply",
    command_result => "pb CommandResult",
    job_json => "job JSON (KV)",
    node_record_json => "node record JSON (KV)",
    lease_json => "lease JSON (KV)",
    fleet_json => "fleet file JSON",
    agent_toml => "agent TOML",
    coordinator_toml => "coordinator TOML",
    ovs_services => "ovs monitor services",
    ays_status => "ays status",
    systemd_is_active => "systemctl is-active",
    domain_metadata => "domain metadata XML",
    nats_subjects => "NATS subjects",
    portal_cookie => "portal Cookie header",
}
