//! Shell completions and man pages, generated from the command line's own
//! definition (so they cannot drift from it).

use super::Cli;
use clap::CommandFactory;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The completion script of `shell` for the `coordinator` binary.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "coordinator", &mut script);
    script
}

/// `coordinator completions SHELL`: the script on stdout. A reader that
/// went away (`| head`) ends it quietly (clap_complete's own writer panics).
pub fn print_completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out
        .write_all(&completions(shell))
        .and_then(|()| out.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// One man page per visible command into `dir` (created if missing):
/// `coordinator.1`, `coordinator-node.1`, `coordinator-node-list.1`, …
/// Returns the pages written, parents after their subcommands.
pub fn man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn walk(cmd: clap::Command, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub.clone(), dir, out)?;
        }
        out.push(clap_mangen::Man::new(cmd).generate_to(dir)?);
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    // Built once at the top so that every subcommand's display name is its
    // full path (coordinator-node-list), which names its page.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    walk(cmd, dir, &mut pages)?;
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap_complete::Shell;

    /// The top-level commands operators type most.
    const MAIN: [&str; 10] = [
        "serve",
        "node",
        "vm",
        "vfw",
        "events",
        "plan",
        "job",
        "maintenance",
        "rolling",
        "completions",
    ];

    #[test]
    fn completion_scripts_know_the_commands() {
        let bash = String::from_utf8(completions(Shell::Bash)).unwrap();
        assert!(bash.contains("complete -F _coordinator"), "{bash}");
        for c in MAIN {
            assert!(
                bash.contains(&format!("coordinator,{c})")),
                "bash lacks {c}"
            );
        }
        // Second-level commands and options too.
        for s in [
            "coordinator__subcmd__maintenance,start)",
            "--deadline",
            "--since",
        ] {
            assert!(bash.contains(s), "bash lacks {s}");
        }
        for shell in [Shell::Zsh, Shell::Fish] {
            let script = String::from_utf8(completions(shell)).unwrap();
            for c in MAIN {
                assert!(script.contains(c), "{shell} lacks {c}");
            }
        }
    }

    #[test]
    fn one_man_page_per_command() {
        fn visible(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
            out.push(format!("{path}.1"));
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                if sub.get_name() != "help" {
                    visible(sub, &format!("{path}-{}", sub.get_name()), out);
                }
            }
        }
        let mut want = Vec::new();
        visible(&Cli::command(), "coordinator", &mut want);
        want.sort();
        let dir = tempfile::tempdir().unwrap();
        let pages = man_pages(&dir.path().join("man1")).unwrap();
        let mut got: Vec<String> = std::fs::read_dir(dir.path().join("man1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        got.sort();
        assert_eq!(got, want);
        assert_eq!(pages.len(), want.len());
        assert!(want.len() > 40, "only {} commands?", want.len());
        let page = std::fs::read_to_string(dir.path().join("man1/coordinator-maintenance-start.1"))
            .unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
        assert!(page.contains("deadline") && page.contains("maintenance start node2"));
    }
}
