//! The nodemaint metadata element of a domain's XML. Kind and cloudspace
//! live in the domain definition itself, so they travel with a migration:
//!
//! ```xml
//! <metadata>
//!   <nodemaint:vm xmlns:nodemaint="https://nodemaint.dev/xmlns/vm/1"
//!                 kind="vfw" cloudspace="cs1" anti-affinity="db"
//!                 migratable="no"/>
//! </metadata>
//! ```
//!
//! `migratable="no"` marks a VM that must not be live-migrated (a licence
//! bound to the host, a device the planner can't see); a drain then needs
//! `--fallback stop|cold`. Absent means migratable.

use nodemaint_proto::model::VmKind;

pub const NAMESPACE: &str = "https://nodemaint.dev/xmlns/vm/1";
pub const PREFIX: &str = "nodemaint";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmMetadata {
    pub kind: VmKind,
    pub cloudspace: Option<String>,
    pub anti_affinity: Option<String>,
    /// `migratable="no"`.
    pub no_live_migration: bool,
}

/// Parses the element libvirt returns for our namespace. Unknown or missing
/// attributes fall back to a user VM without cloudspace, since a domain
/// created outside nodemaint is still a tenant's VM that must be moved.
pub fn parse(xml: &str) -> VmMetadata {
    let kind = match attr(xml, "kind").map(|k| k.to_ascii_lowercase()) {
        Some(k) if k == "vfw" => VmKind::Vfw,
        _ => VmKind::User,
    };
    VmMetadata {
        kind,
        cloudspace: attr(xml, "cloudspace").filter(|s| !s.is_empty()),
        anti_affinity: attr(xml, "anti-affinity").filter(|s| !s.is_empty()),
        no_live_migration: matches!(
            attr(xml, "migratable")
                .map(|v| v.to_ascii_lowercase())
                .as_deref(),
            Some("no" | "false" | "0")
        ),
    }
}

/// The element to put inside `<metadata>` for these values.
pub fn element(meta: &VmMetadata) -> String {
    let kind = match meta.kind {
        VmKind::User => "user",
        VmKind::Vfw => "vfw",
    };
    let mut s = format!("<{PREFIX}:vm xmlns:{PREFIX}=\"{NAMESPACE}\" kind=\"{kind}\"");
    if let Some(cs) = &meta.cloudspace {
        s.push_str(&format!(" cloudspace=\"{}\"", escape(cs)));
    }
    if let Some(aa) = &meta.anti_affinity {
        s.push_str(&format!(" anti-affinity=\"{}\"", escape(aa)));
    }
    if meta.no_live_migration {
        s.push_str(" migratable=\"no\"");
    }
    s.push_str("/>");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Value of attribute `name` on the first element (either quote style).
/// Attributes are read in order, each value skipped as a whole, so text
/// inside one value (a cloudspace named `x anti-affinity="g"`) is never
/// taken for another attribute.
fn attr(xml: &str, name: &str) -> Option<String> {
    let start = xml.find('<')?;
    let tag = &xml[start + 1..];
    let mut rest = &tag[tag.find(|c: char| c.is_whitespace() || c == '/' || c == '>')?..];
    loop {
        rest = rest.trim_start();
        if rest.is_empty() || rest.starts_with(['>', '/']) {
            return None;
        }
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let quote = after.chars().next().filter(|q| *q == '"' || *q == '\'')?;
        let value_len = after[1..].find(quote)?;
        if key.trim() == name {
            return Some(unescape(&after[1..1 + value_len]));
        }
        rest = &after[1 + value_len + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_libvirt_returns() {
        let xml = r#"<nodemaint:vm xmlns:nodemaint="https://nodemaint.dev/xmlns/vm/1" kind="vfw" cloudspace="cs1"/>"#;
        let m = parse(xml);
        assert_eq!(m.kind, VmKind::Vfw);
        assert_eq!(m.cloudspace.as_deref(), Some("cs1"));
        assert_eq!(m.anti_affinity, None);
    }

    #[test]
    fn single_quotes_and_anti_affinity() {
        let xml = "<vm xmlns='x' kind='user' cloudspace='a&amp;b' anti-affinity='db'></vm>";
        let m = parse(xml);
        assert_eq!(m.kind, VmKind::User);
        assert_eq!(m.cloudspace.as_deref(), Some("a&b"));
        assert_eq!(m.anti_affinity.as_deref(), Some("db"));
    }

    #[test]
    fn missing_or_garbage_is_a_plain_user_vm() {
        assert_eq!(parse(""), VmMetadata::default());
        assert_eq!(parse("not xml at all"), VmMetadata::default());
        assert_eq!(parse("<vm kindness=\"vfw\"/>").kind, VmKind::User);
        assert!(!parse("<vm migratable='yes'/>").no_live_migration);
        assert!(parse("<vm migratable='No'/>").no_live_migration);
    }

    #[test]
    fn element_roundtrips() {
        let m = VmMetadata {
            kind: VmKind::Vfw,
            cloudspace: Some("cs \"9\"".into()),
            anti_affinity: Some("g".into()),
            no_live_migration: true,
        };
        assert_eq!(parse(&element(&m)), m);
    }

    #[test]
    fn text_inside_a_value_is_not_another_attribute() {
        // Found by `bench fuzz`: the old scan matched `anti-affinity=`
        // inside the cloudspace's value.
        let m = VmMetadata {
            kind: VmKind::Vfw,
            cloudspace: Some("cs anti-affinity=".into()),
            anti_affinity: Some("grp".into()),
            no_live_migration: false,
        };
        assert_eq!(parse(&element(&m)), m);
        let xml = r#"<vm cloudspace='x kind="vfw"' kind="user"/>"#;
        assert_eq!(parse(xml).kind, VmKind::User);
    }
}
