//! Domain XML for VMs the coordinator creates from a spec (`vm create`):
//! a built-in minimal guest, or the node's own template file with
//! `{name}`, `{memory_mib}`, `{vcpus}`, `{type}` and `{metadata}` placeholders.

use super::metadata::{self, VmMetadata};

#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub meta: VmMetadata,
}

/// The libvirt domain type for this node: `test` on the test driver, `kvm`
/// where /dev/kvm is usable, `qemu` (TCG) otherwise.
pub fn domain_type(libvirt_uri: &str) -> &'static str {
    if libvirt_uri.starts_with("test:") {
        "test"
    } else if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
    {
        "kvm"
    } else {
        "qemu"
    }
}

const BUILTIN: &str = "<domain type='{type}'>
  <name>{name}</name>
  <metadata>{metadata}</metadata>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>{vcpus}</vcpu>
  <os><type>hvm</type><boot dev='network'/></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices><memballoon model='none'/></devices>
</domain>
";

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn render(spec: &Spec, dom_type: &str, template: Option<&str>) -> String {
    template
        .unwrap_or(BUILTIN)
        .replace("{type}", dom_type)
        .replace("{name}", &escape(&spec.name))
        .replace("{memory_mib}", &spec.memory_mib.to_string())
        .replace("{vcpus}", &spec.vcpus.to_string())
        .replace("{metadata}", &metadata::element(&spec.meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodemaint_proto::model::VmKind;

    #[test]
    fn builtin_carries_size_and_metadata() {
        let spec = Spec {
            name: "cs9-vfw".into(),
            memory_mib: 48,
            vcpus: 2,
            meta: VmMetadata {
                kind: VmKind::Vfw,
                cloudspace: Some("cs9".into()),
                anti_affinity: None,
                no_live_migration: false,
            },
        };
        let xml = render(&spec, "test", None);
        assert!(xml.contains("<domain type='test'>"));
        assert!(xml.contains("<memory unit='MiB'>48</memory>"));
        assert!(xml.contains("<vcpu>2</vcpu>"));
        let meta_at = xml.find("<nodemaint:vm").unwrap();
        assert_eq!(metadata::parse(&xml[meta_at..]), spec.meta);
    }

    #[test]
    fn test_driver_uri_gives_test_type() {
        assert_eq!(domain_type("test:///default"), "test");
    }
}
