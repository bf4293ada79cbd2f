//! NATS contexts, as the `nats` CLI keeps them: `--context NAME` (or
//! `NATS_CONTEXT`) reads `$XDG_CONFIG_HOME/nats/context/NAME.json` (else
//! `~/.config/nats/…`); without one, the context selected with
//! `nats context select` (`nats/context.txt`), if any. A context gives the
//! server URL and the login; flags and environment variables win over it.

use nodemaint_proto::bus::Security;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The fields of a context file nodemaint uses (the others are ignored).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Context {
    /// Its name, for messages (not a field of the file).
    #[serde(skip)]
    pub name: String,
    pub url: String,
    pub user: String,
    pub password: String,
    pub creds: String,
    pub nkey: String,
    pub cert: String,
    pub key: String,
    pub ca: String,
}

/// Where the `nats` CLI keeps its configuration, from `XDG_CONFIG_HOME`
/// and `HOME`.
pub fn config_dir(xdg: Option<PathBuf>, home: Option<PathBuf>) -> Option<PathBuf> {
    xdg.filter(|p| p.is_absolute())
        .or_else(|| home.map(|h| h.join(".config")))
        .map(|d| d.join("nats"))
}

fn env_dir() -> Option<PathBuf> {
    let var = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    config_dir(var("XDG_CONFIG_HOME"), var("HOME"))
}

/// The context named `name`, else the selected one, else none. A named
/// context that does not exist is an error; so is a bad file.
pub fn load(name: Option<&str>) -> Result<Option<Context>, String> {
    let Some(dir) = env_dir() else {
        return match name {
            Some(n) => Err(format!(
                "NATS context {n:?}: neither XDG_CONFIG_HOME nor HOME is set"
            )),
            None => Ok(None),
        };
    };
    load_from(&dir, name)
}

/// [`load`] below the `nats` configuration directory `dir`.
pub fn load_from(dir: &Path, name: Option<&str>) -> Result<Option<Context>, String> {
    let name = match name.filter(|n| !n.is_empty()) {
        Some(n) => n.to_string(),
        None => match std::fs::read_to_string(dir.join("context.txt")) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
            _ => return Ok(None),
        },
    };
    if name.contains('/') || name.contains("..") || name.contains('\\') {
        return Err(format!("invalid NATS context name {name:?}"));
    }
    let path = dir.join("context").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "NATS context {name:?}: cannot read {}: {e} (`nats context ls` lists them)",
            path.display()
        )
    })?;
    let mut ctx: Context = serde_json::from_str(&text)
        .map_err(|e| format!("NATS context {name:?}: invalid {}: {e}", path.display()))?;
    ctx.name = name;
    Ok(Some(ctx))
}

impl Context {
    /// Its login and TLS files. `~/` in a path is the home directory.
    pub fn security(&self) -> Security {
        let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let path = |s: &str| text(s).map(|s| expand_home(&s));
        Security {
            creds: None,
            nats_creds: path(&self.creds),
            nkey: path(&self.nkey),
            user: text(&self.user),
            password: text(&self.password),
            ca: path(&self.ca),
            cert: path(&self.cert),
            key: path(&self.key),
        }
    }

    /// Its server URL(s), when it has some.
    pub fn url(&self) -> Option<String> {
        (!self.url.is_empty()).then(|| self.url.clone())
    }
}

fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_then_selected_then_none() {
        let dir = std::env::temp_dir().join(format!("nm-ctx-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("context")).unwrap();
        assert_eq!(load_from(&dir, None).unwrap(), None);
        std::fs::write(
            dir.join("context/lab.json"),
            r#"{"description":"x","url":"nats://a:4222","nkey":"/k/alice.nk","user":"alice","inbox_prefix":""}"#,
        )
        .unwrap();
        let c = load_from(&dir, Some("lab")).unwrap().unwrap();
        assert_eq!(c.url().as_deref(), Some("nats://a:4222"));
        let s = c.security();
        assert_eq!(s.nkey, Some("/k/alice.nk".into()));
        assert_eq!(s.user.as_deref(), Some("alice"));
        assert_eq!((s.password, s.nats_creds, s.ca), (None, None, None));
        std::fs::write(dir.join("context.txt"), "lab\n").unwrap();
        assert_eq!(load_from(&dir, None).unwrap().unwrap().name, "lab");
        let e = load_from(&dir, Some("nope")).unwrap_err();
        assert!(
            e.contains("nope.json") && e.contains("nats context ls"),
            "{e}"
        );
        assert!(load_from(&dir, Some("../x"))
            .unwrap_err()
            .contains("invalid"));
        std::fs::write(dir.join("context/bad.json"), "{").unwrap();
        assert!(load_from(&dir, Some("bad"))
            .unwrap_err()
            .contains("bad.json"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            config_dir(Some("/x".into()), Some("/h".into())),
            Some("/x/nats".into())
        );
        assert_eq!(
            config_dir(None, Some("/h".into())),
            Some("/h/.config/nats".into())
        );
    }
}
