//! Hooks (reboot/upgrade hooks of a rolling maintenance): named in the
//! agent's config (`[hooks]`), asked for by name, run with `sh -c` and a
//! timeout; the output tail goes into the result.

use nodemaint_proto::pb::{self, error::Code};
use std::collections::BTreeMap;
use std::time::Duration;

/// The command line of the hook `h` names in `hooks`, or the refusal: the
/// name is invalid, or this node has no such hook (the known ones named).
#[allow(clippy::result_large_err)]
pub fn resolve<'a>(
    hooks: &'a BTreeMap<String, String>,
    node: &str,
    h: &pb::RunHook,
) -> Result<&'a str, pb::CommandResult> {
    nodemaint_proto::guard::validate_hook_name(&h.name)
        .map_err(|e| failure(Code::InvalidArgument, e, -1, String::new()))?;
    hooks.get(&h.name).map(String::as_str).ok_or_else(|| {
        let known = if hooks.is_empty() {
            "none configured".to_string()
        } else {
            hooks.keys().cloned().collect::<Vec<_>>().join(", ")
        };
        failure(
            Code::NotFound,
            format!(
                "{node} has no hook {:?} (known hooks: {known}; set in the agent's config [hooks])",
                h.name
            ),
            -1,
            String::new(),
        )
    })
}

/// How much of a hook's output is kept in its result.
const OUTPUT_TAIL: usize = 4096;

/// Runs hook `name`, whose command line is `command`.
pub async fn run(name: &str, command: &str, timeout_s: u32) -> pb::CommandResult {
    let timeout = Duration::from_secs(if timeout_s > 0 { timeout_s } else { 600 } as u64);
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, child).await {
        Err(_) => failure(
            Code::Timeout,
            format!(
                "hook {:?} did not finish within {} s",
                name,
                timeout.as_secs()
            ),
            -1,
            String::new(),
        ),
        Ok(Err(e)) => failure(
            Code::Internal,
            format!("cannot run hook {:?}: {e}", name),
            -1,
            String::new(),
        ),
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            let tail = tail(&text);
            let code = out.status.code().unwrap_or(-1);
            if out.status.success() {
                pb::CommandResult {
                    ok: true,
                    message: format!("hook {:?} succeeded", name),
                    exit_code: code,
                    output: tail,
                    ..Default::default()
                }
            } else {
                failure(
                    Code::Aborted,
                    format!("hook {:?} exited with {code}", name),
                    code,
                    tail,
                )
            }
        }
    }
}

fn tail(text: &str) -> String {
    let mut start = text.len().saturating_sub(OUTPUT_TAIL);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

fn failure(code: Code, message: String, exit_code: i32, output: String) -> pb::CommandResult {
    pb::CommandResult {
        ok: false,
        message: message.clone(),
        error: Some(pb::Error::new(code, message)),
        exit_code,
        output,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_code_and_output_are_reported() {
        let r = run("x", "echo hi; exit 3", 5).await;
        assert!(!r.ok);
        assert_eq!(r.exit_code, 3);
        assert_eq!(r.output.trim(), "hi");
        let r = run("x", "true", 5).await;
        assert!(r.ok);
    }

    #[tokio::test]
    async fn a_hanging_hook_times_out() {
        let r = run("x", "sleep 30", 1).await;
        assert_eq!(r.error.unwrap().code, Code::Timeout as i32);
    }

    #[test]
    fn only_configured_names_resolve() {
        let hooks: BTreeMap<String, String> =
            [("reboot".to_string(), "systemctl reboot".to_string())].into();
        let ask = |name: &str| pb::RunHook {
            name: name.into(),
            timeout_s: 5,
        };
        assert_eq!(
            resolve(&hooks, "n1", &ask("reboot")).unwrap(),
            "systemctl reboot"
        );
        let e = resolve(&hooks, "n1", &ask("upgrade")).unwrap_err();
        let err = e.error.unwrap();
        assert_eq!(err.code, Code::NotFound as i32);
        assert!(
            err.message.contains("known hooks: reboot"),
            "{}",
            err.message
        );
        let e = resolve(&hooks, "n1", &ask("touch /tmp/pwned")).unwrap_err();
        assert_eq!(e.error.unwrap().code, Code::InvalidArgument as i32);
        let e = resolve(&BTreeMap::new(), "n1", &ask("reboot")).unwrap_err();
        assert!(e.message.contains("none configured"), "{}", e.message);
    }
}
