//! Hook commands (reboot/upgrade hooks of a rolling maintenance), run with
//! `sh -c` and a timeout; the output tail goes into the result.

use nodemaint_proto::pb::{self, error::Code};
use std::time::Duration;

/// How much of a hook's output is kept in its result.
const OUTPUT_TAIL: usize = 4096;

pub async fn run(h: &pb::RunHook) -> pb::CommandResult {
    let timeout = Duration::from_secs(if h.timeout_s > 0 { h.timeout_s } else { 600 } as u64);
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&h.command)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, child).await {
        Err(_) => failure(
            Code::Timeout,
            format!(
                "hook {:?} did not finish within {} s",
                h.command,
                timeout.as_secs()
            ),
            -1,
            String::new(),
        ),
        Ok(Err(e)) => failure(
            Code::Internal,
            format!("cannot run hook {:?}: {e}", h.command),
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
                    message: format!("hook {:?} succeeded", h.command),
                    exit_code: code,
                    output: tail,
                    ..Default::default()
                }
            } else {
                failure(
                    Code::Aborted,
                    format!("hook {:?} exited with {code}", h.command),
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
        let r = run(&pb::RunHook {
            command: "echo hi; exit 3".into(),
            timeout_s: 5,
        })
        .await;
        assert!(!r.ok);
        assert_eq!(r.exit_code, 3);
        assert_eq!(r.output.trim(), "hi");
        let r = run(&pb::RunHook {
            command: "true".into(),
            timeout_s: 5,
        })
        .await;
        assert!(r.ok);
    }

    #[tokio::test]
    async fn a_hanging_hook_times_out() {
        let r = run(&pb::RunHook {
            command: "sleep 30".into(),
            timeout_s: 1,
        })
        .await;
        assert_eq!(r.error.unwrap().code, Code::Timeout as i32);
    }
}
