//! Prometheus metrics shared by the coordinator and the agent: a small
//! in-process registry and the text exposition format (version 0.0.4).
//!
//! Hand-rolled instead of a client crate: the agent and the coordinator need
//! counters, gauges and histograms with a few labels, and the format is
//! simple. Each crate declares its metrics as [`Desc`] constants (name, help,
//! type, buckets) and updates them through one [`Registry`]; a scrape
//! renders every family, in name order, with its `# HELP` and `# TYPE`.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// What a metric is, in the exposition's `# TYPE` words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric family: name, help, type and, for histograms, the bucket
/// upper bounds (ascending; `+Inf` is implied).
#[derive(Debug)]
pub struct Desc {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub buckets: &'static [f64],
}

impl Desc {
    pub const fn counter(name: &'static str, help: &'static str) -> Desc {
        Desc {
            name,
            help,
            kind: Kind::Counter,
            buckets: &[],
        }
    }
    pub const fn gauge(name: &'static str, help: &'static str) -> Desc {
        Desc {
            name,
            help,
            kind: Kind::Gauge,
            buckets: &[],
        }
    }
    pub const fn histogram(
        name: &'static str,
        help: &'static str,
        buckets: &'static [f64],
    ) -> Desc {
        Desc {
            name,
            help,
            kind: Kind::Histogram,
            buckets,
        }
    }
}

/// Buckets for command latencies, in seconds (10 ms .. 10 min).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Buckets for migration durations, in seconds (100 ms .. 30 min).
pub const MIGRATION_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// `nodemaint_build_info{version,git} 1`, served by both binaries so a
/// dashboard shows which build runs where (and a mixed fleet mid-upgrade).
pub static BUILD_INFO: Desc = Desc::gauge(
    "nodemaint_build_info",
    "Always 1; the labels name this process's build (version, git commit).",
);

/// The commit this build is from: `NODEMAINT_GIT_COMMIT` at compile time
/// (`NODEMAINT_GIT_COMMIT=$(git rev-parse --short HEAD) cargo build`), else
/// `unknown`. An environment variable rather than a build script running
/// git, so a commit does not rebuild the whole workspace.
pub const GIT_COMMIT: &str = match option_env!("NODEMAINT_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// Sets [`BUILD_INFO`] for a binary of `version`.
pub fn set_build_info(r: &Registry, version: &str) {
    r.set(
        &BUILD_INFO,
        &[("version", version), ("git", GIT_COMMIT)],
        1.0,
    );
}

/// Label pairs of one series, as given (order is kept in the output).
pub type Labels<'a> = &'a [(&'static str, &'a str)];

#[derive(Clone, Debug)]
enum Series {
    Value(f64),
    Histogram {
        /// Non-cumulative count per bucket (same order as the bounds).
        counts: Vec<u64>,
        sum: f64,
        count: u64,
    },
}

struct Family {
    desc: &'static Desc,
    series: BTreeMap<Vec<(&'static str, String)>, Series>,
}

/// The metrics of one process. Cheap to update (one mutex, no allocation
/// for an existing series beyond the label key).
#[derive(Default)]
pub struct Registry {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

fn key(labels: Labels) -> Vec<(&'static str, String)> {
    labels.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    fn with_family<T>(&self, desc: &'static Desc, f: impl FnOnce(&mut Family) -> T) -> T {
        let mut fams = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let fam = fams.entry(desc.name).or_insert_with(|| Family {
            desc,
            series: BTreeMap::new(),
        });
        f(fam)
    }

    /// Makes the families appear in the output (`# HELP`, `# TYPE`)
    /// before their first update.
    pub fn describe(&self, descs: &[&'static Desc]) {
        for d in descs {
            self.with_family(d, |_| ());
        }
    }

    /// Like [`Registry::describe`], and sets an unlabeled series to 0 when
    /// absent (a gauge such as "migrations in flight" should read 0, not
    /// be missing).
    pub fn zero(&self, desc: &'static Desc) {
        self.with_family(desc, |fam| {
            fam.series.entry(Vec::new()).or_insert(Series::Value(0.0));
        });
    }

    /// Adds `v` to a counter or gauge.
    pub fn add(&self, desc: &'static Desc, labels: Labels, v: f64) {
        self.with_family(desc, |fam| {
            let s = fam.series.entry(key(labels)).or_insert(Series::Value(0.0));
            if let Series::Value(x) = s {
                *x += v;
            }
        });
    }

    /// Sets a gauge.
    pub fn set(&self, desc: &'static Desc, labels: Labels, v: f64) {
        self.with_family(desc, |fam| {
            fam.series.insert(key(labels), Series::Value(v));
        });
    }

    /// Replaces every series of a gauge family (for values computed at
    /// scrape time, so series that no longer exist disappear).
    pub fn replace(&self, desc: &'static Desc, series: Vec<(Vec<(&'static str, String)>, f64)>) {
        self.with_family(desc, |fam| {
            fam.series = series
                .into_iter()
                .map(|(k, v)| (k, Series::Value(v)))
                .collect();
        });
    }

    /// Records one observation in a histogram.
    pub fn observe(&self, desc: &'static Desc, labels: Labels, v: f64) {
        self.with_family(desc, |fam| {
            let s = fam
                .series
                .entry(key(labels))
                .or_insert_with(|| Series::Histogram {
                    counts: vec![0; desc.buckets.len()],
                    sum: 0.0,
                    count: 0,
                });
            if let Series::Histogram { counts, sum, count } = s {
                if let Some(i) = desc.buckets.iter().position(|b| v <= *b) {
                    counts[i] += 1;
                }
                *sum += v;
                *count += 1;
            }
        });
    }

    /// The value of a counter or gauge series, if it exists (for tests and
    /// for code that reads back what it set).
    pub fn value(&self, desc: &'static Desc, labels: Labels) -> Option<f64> {
        self.with_family(desc, |fam| match fam.series.get(&key(labels)) {
            Some(Series::Value(v)) => Some(*v),
            _ => None,
        })
    }

    /// The whole registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let fams = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for fam in fams.values() {
            render_family(&mut out, fam);
        }
        out
    }
}

fn render_family(out: &mut String, fam: &Family) {
    use std::fmt::Write;
    let d = fam.desc;
    let kind = match d.kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    };
    let _ = writeln!(out, "# HELP {} {}", d.name, escape_help(d.help));
    let _ = writeln!(out, "# TYPE {} {kind}", d.name);
    for (labels, s) in &fam.series {
        match s {
            Series::Value(v) => {
                let _ = writeln!(out, "{}{} {}", d.name, label_text(labels, None), num(*v));
            }
            Series::Histogram { counts, sum, count } => {
                let mut cumulative = 0;
                for (bound, c) in d.buckets.iter().zip(counts) {
                    cumulative += c;
                    let le = num(*bound);
                    let _ = writeln!(
                        out,
                        "{}_bucket{} {cumulative}",
                        d.name,
                        label_text(labels, Some(&le))
                    );
                }
                let _ = writeln!(
                    out,
                    "{}_bucket{} {count}",
                    d.name,
                    label_text(labels, Some("+Inf"))
                );
                let _ = writeln!(
                    out,
                    "{}_sum{} {}",
                    d.name,
                    label_text(labels, None),
                    num(*sum)
                );
                let _ = writeln!(out, "{}_count{} {count}", d.name, label_text(labels, None));
            }
        }
    }
}

/// `{a="x",le="0.5"}`, or nothing without labels.
fn label_text(labels: &[(&'static str, String)], le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value as Prometheus spells it (`+Inf`, `-Inf`, `NaN`).
fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `GET /metrics` on `listener` until the task is dropped; `render`
/// produces the body of each scrape (so values computed at scrape time,
/// such as jobs by state, are current). Anything else is 404 (another
/// path) or 405 (another method); a client gets 10 s to send its headers.
#[cfg(feature = "http")]
pub async fn serve<F, Fut>(listener: tokio::net::TcpListener, render: F) -> std::io::Result<()>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = String> + Send + 'static,
{
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{header, Method, Response, StatusCode};
    use hyper_util::rt::{TokioIo, TokioTimer};

    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors and the like: the next accept may work.
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let render = render.clone();
                async move {
                    let (status, body) = if req.uri().path() != "/metrics" {
                        (
                            StatusCode::NOT_FOUND,
                            "not found: the metrics are at /metrics\n".into(),
                        )
                    } else if req.method() != Method::GET && req.method() != Method::HEAD {
                        (StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n".into())
                    } else {
                        (StatusCode::OK, render().await)
                    };
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = status;
                    let ct = if status == StatusCode::OK {
                        CONTENT_TYPE
                    } else {
                        "text/plain; charset=utf-8"
                    };
                    resp.headers_mut()
                        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ct));
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics: connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static C: Desc = Desc::counter("t_things_total", "Things done.");
    static G: Desc = Desc::gauge("t_in_flight", "Things in flight.\nSecond line.");
    static H: Desc = Desc::histogram("t_seconds", "How long.", &[0.5, 1.0]);

    #[test]
    fn renders_counters_gauges_and_cumulative_histograms() {
        let r = Registry::new();
        r.zero(&G);
        r.add(&C, &[("node", "n\"1\\\n")], 2.0);
        r.add(&C, &[("node", "n\"1\\\n")], 1.0);
        r.observe(&H, &[("action", "stop")], 0.2);
        r.observe(&H, &[("action", "stop")], 0.7);
        r.observe(&H, &[("action", "stop")], 5.0);
        let text = r.render();
        let expected = "\
# HELP t_in_flight Things in flight.\\nSecond line.
# TYPE t_in_flight gauge
t_in_flight 0
# HELP t_seconds How long.
# TYPE t_seconds histogram
t_seconds_bucket{action=\"stop\",le=\"0.5\"} 1
t_seconds_bucket{action=\"stop\",le=\"1\"} 2
t_seconds_bucket{action=\"stop\",le=\"+Inf\"} 3
t_seconds_sum{action=\"stop\"} 5.9
t_seconds_count{action=\"stop\"} 3
# HELP t_things_total Things done.
# TYPE t_things_total counter
t_things_total{node=\"n\\\"1\\\\\\n\"} 3
";
        assert_eq!(text, expected);
    }

    #[test]
    fn build_info_names_version_and_commit() {
        let r = Registry::new();
        set_build_info(&r, "1.2.3");
        let text = r.render();
        let line = format!("nodemaint_build_info{{version=\"1.2.3\",git=\"{GIT_COMMIT}\"}} 1\n");
        assert!(text.contains(&line), "{text}");
        assert!(!GIT_COMMIT.is_empty());
    }

    #[test]
    fn replace_drops_stale_series_and_values_read_back() {
        let r = Registry::new();
        r.set(&G, &[("state", "RUNNING")], 3.0);
        assert_eq!(r.value(&G, &[("state", "RUNNING")]), Some(3.0));
        r.replace(&G, vec![(vec![("state", "FAILED".to_string())], 1.0)]);
        assert_eq!(r.value(&G, &[("state", "RUNNING")]), None);
        assert!(r.render().contains("t_in_flight{state=\"FAILED\"} 1\n"));
        assert_eq!(num(f64::INFINITY), "+Inf");
        assert_eq!(num(f64::NAN), "NaN");
    }
}
