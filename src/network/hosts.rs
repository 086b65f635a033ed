//! Machine names in each machine's `/etc/hosts`: a block between two
//! marker lines that envup rewrites, whatever else the file holds. Boxes
//! need no DNS software for it, and a name resolves as soon as the block
//! is written.

use std::net::Ipv4Addr;
use std::path::Path;

const BEGIN: &str = "# envup project network: begin (envup rewrites this block)";
const END: &str = "# envup project network: end";
/// The largest `/etc/hosts` envup reads from a machine.
const MAX: u64 = 1 << 20;

/// One line per machine: its address, its name and its hostname (when
/// that differs). Names and hostnames were checked by the Envfile's
/// validation: letters, digits, `-`, `_` and `.` only.
pub fn block(entries: &[(Ipv4Addr, String, String)]) -> String {
    let mut s = format!("{BEGIN}\n");
    for (a, name, host) in entries {
        s.push_str(&format!("{a}\t{name}"));
        if host != name {
            s.push_str(&format!(" {host}"));
        }
        s.push('\n');
    }
    s.push_str(END);
    s.push('\n');
    s
}

/// `text` with its envup block replaced by `new` (at the end).
pub fn replace(text: &str, new: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line == BEGIN {
            inside = true;
        } else if line == END {
            inside = false;
        } else if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(new);
    out
}

/// Write `new` into the `/etc/hosts` of the machine whose root is
/// `root` (a process's `/proc/PID/root`), resolved inside it. The file is
/// rewritten in place, as an engine's container has it bind-mounted.
pub fn write_in_root(root: &Path, new: &str) -> std::io::Result<()> {
    let root = crate::contained::Root::open(root)?;
    root.rewrite_file(Path::new("etc/hosts"), MAX, 0o644, &|old| {
        replace(&String::from_utf8_lossy(old), new).into_bytes()
    })
}

/// A shell script that puts `new` into `/etc/hosts` (for a VM, over SSH).
pub fn script(new: &str) -> String {
    format!(
        "f=/etc/hosts; t=$(mktemp) && {{ [ -f $f ] && sed '/^{b}$/,/^{e}$/d' $f; cat <<'ENVUP_HOSTS'\n{new}ENVUP_HOSTS\n}} > $t && cat $t > $f; r=$?; rm -f $t; exit $r",
        b = BEGIN,
        e = END,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_is_replaced_and_the_rest_kept() {
        let b1 = block(&[(Ipv4Addr::new(10, 0, 0, 2), "db".into(), "db".into())]);
        let b2 = block(&[
            (Ipv4Addr::new(10, 0, 0, 2), "db".into(), "db".into()),
            (Ipv4Addr::new(10, 0, 0, 3), "web".into(), "www.local".into()),
        ]);
        let text = "127.0.0.1 localhost\n";
        let once = replace(text, &b1);
        assert_eq!(once, format!("127.0.0.1 localhost\n{b1}"));
        let twice = replace(&format!("{once}10.9.9.9 mine\n"), &b2);
        assert_eq!(twice, format!("127.0.0.1 localhost\n10.9.9.9 mine\n{b2}"));
        assert!(b2.contains("10.0.0.3\tweb www.local\n"));
    }

    #[test]
    fn the_script_does_what_replace_does() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("hosts");
        let b1 = block(&[(Ipv4Addr::new(10, 0, 0, 2), "db".into(), "db".into())]);
        std::fs::write(&f, format!("127.0.0.1 localhost\n{b1}::1 x\n")).unwrap();
        let b2 = block(&[(Ipv4Addr::new(10, 0, 0, 3), "web".into(), "web".into())]);
        let s = script(&b2).replace("f=/etc/hosts", &format!("f={}", f.display()));
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(&s)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            format!("127.0.0.1 localhost\n::1 x\n{b2}")
        );
    }
}
