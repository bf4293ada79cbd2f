//! `nats-auth`: writes the NATS server's `auth.conf` include and one
//! credentials file and nkey seed file per principal (coordinator, each agent, each user of
//! the coordinator's config), from the coordinator's config and the list of
//! agents. Re-running keeps existing keys (only new principals get new
//! ones), so it is safe after adding a node or a user.

use clap::Parser;
use nodemaint_coordinator::config::CoordinatorConfig;
use nodemaint_coordinator::natsauth::{self, Principal};
use nodemaint_proto::bus::{Credentials, Secret};
use nodemaint_proto::subjects::Subjects;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Generate NATS authorization (nkeys + subject permissions) for nodemaint.
///
/// Example:
///   nats-auth --config /etc/nodemaint/coordinator.toml --agents node1,node2 --out /etc/nats/nodemaint
///   # then in nats-server.conf:  include /etc/nats/nodemaint/auth.conf
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// Coordinator config: its [users] and their groups are the operators.
    #[arg(long)]
    config: PathBuf,
    /// Node names of the agents (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    agents: Vec<String>,
    /// Principal name of the coordinator (shared by its replicas).
    #[arg(long, default_value = "coordinator")]
    coordinator: String,
    /// Output directory: auth.conf, creds/<principal>.creds (nodemaint's
    /// credentials file: NODEMAINT_CREDS, nats_creds) and creds/<principal>.nk
    /// (the nkey seed: --nkey of nodemaint and of the `nats` CLI), mode 0600.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nats-auth: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The principal's existing seed, or a new one.
fn seed_for(path: &Path) -> Result<String, String> {
    if path.exists() {
        let c = Credentials::load(path).map_err(|e| e.to_string())?;
        if let Secret::NkeySeed(s) = c.secret {
            return Ok(s);
        }
        return Err(format!("{} holds a password, not an nkey", path.display()));
    }
    nkeys::KeyPair::new_user()
        .seed()
        .map_err(|e| format!("cannot make an nkey: {e}"))
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    let e = |err: std::io::Error| format!("cannot write {}: {err}", path.display());
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(e)?;
    std::io::Write::write_all(&mut f, text.as_bytes()).map_err(e)?;
    std::fs::rename(&tmp, path).map_err(e)
}

fn run(a: Args) -> Result<(), String> {
    let cfg = CoordinatorConfig::load(&a.config).map_err(|e| e.to_string())?;
    let subjects = Subjects::new(&cfg.subject_prefix);
    let all = natsauth::principals(&a.coordinator, &a.agents, &cfg.users)?;
    let creds_dir = a.out.join("creds");
    std::fs::create_dir_all(&creds_dir)
        .map_err(|e| format!("cannot create {}: {e}", creds_dir.display()))?;
    std::fs::set_permissions(&creds_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot chmod {}: {e}", creds_dir.display()))?;
    let mut keyed: Vec<(Principal, String)> = Vec::new();
    for p in all {
        let path = creds_dir.join(format!("{}.creds", p.name()));
        let seed = seed_for(&path)?;
        let public = nkeys::KeyPair::from_seed(&seed)
            .map_err(|e| format!("{}: bad nkey seed: {e}", path.display()))?
            .public_key();
        write_private(&path, &natsauth::creds_file(&p, &seed))?;
        // The seed alone, as the `nats` CLI's --nkey (and nodemaint's) reads it.
        write_private(
            &creds_dir.join(format!("{}.nk", p.name())),
            &format!("{seed}\n"),
        )?;
        keyed.push((p, public));
    }
    let conf = a.out.join("auth.conf");
    // Public keys and permissions only: no secret in it.
    std::fs::write(&conf, natsauth::auth_conf(&subjects, &keyed))
        .map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
    println!(
        "wrote {} ({} principals) and {}/*.creds, *.nk",
        conf.display(),
        keyed.len(),
        creds_dir.display()
    );
    Ok(())
}
