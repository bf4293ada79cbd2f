//! Child processes: the binaries, the CLI, virsh, timed and checked runs.

use crate::*;

pub fn bin_dir() -> PathBuf {
    bin("coordinator")
        .parent()
        .expect("target dir")
        .to_path_buf()
}

pub fn repo_dir() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    p.canonicalize().unwrap_or(p)
}

/// The `coordinator` CLI against `url` as `user`.
pub fn cli(url: &str, user: &str, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(bin("coordinator"));
    c.args(args)
        .env("NATS_URL", url)
        .env("NODEMAINT_USER", user)
        .env_remove("NODEMAINT_PREFIX")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

pub fn virsh(uri: &str, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("virsh");
    c.arg("-c")
        .arg(uri)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// Runs a command to its end; its wall time and output.
pub async fn timed(mut cmd: tokio::process::Command) -> Result<(Duration, std::process::Output)> {
    let t0 = Instant::now();
    let out = cmd.output().await.context("cannot run command")?;
    Ok((t0.elapsed(), out))
}

pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub async fn checked(what: &str, cmd: tokio::process::Command) -> Result<(Duration, String)> {
    let (d, out) = timed(cmd).await?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, text(&out).trim());
    }
    Ok((d, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The job id in the CLI's "… accepted as job ID" line.
pub fn job_id_of(output: &str) -> Option<String> {
    let i = output.find("accepted as job ")?;
    output[i + "accepted as job ".len()..]
        .split_whitespace()
        .next()
        .map(str::to_string)
}
