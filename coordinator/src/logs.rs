//! Log setup and the job span: every line a job's executor logs carries the
//! job id and its node, as text or as JSON (`--log-format json`).

use crate::jobs::Job;

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (the span fields appear as `job{job_id=… node=…}:`).
    #[default]
    Text,
    /// One JSON object per line, with the event's fields and its spans'.
    Json,
}

/// Installs the global subscriber: `RUST_LOG` filters, `default` otherwise.
pub fn init(format: LogFormat, default: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

/// The span a job's executor runs in: `job{job_id, kind, node}`. The node is
/// the job's node, or for a rolling job the node set (each node's pipeline
/// has its own `node` span inside).
pub fn job_span(job: &Job) -> tracing::Span {
    let node = match (&job.node, &job.spec) {
        (Some(n), _) => n.clone(),
        (None, crate::jobs::JobSpec::Rolling(r)) => r.nodes.join(","),
        (None, _) => String::new(),
    };
    tracing::info_span!("job", job_id = %job.id, kind = %job.kind(), node = %node)
}

/// Logs how a job's executor left it (inside the job span).
pub async fn job_ended(c: &crate::server::Coordinator, id: &str) {
    match c.jobs.get(id).await {
        Some(j) => tracing::info!(
            state = ?j.state,
            outcome = j.outcome.as_deref().unwrap_or(""),
            "job executor finished"
        ),
        None => tracing::warn!("job executor finished; the job record is gone"),
    }
}
