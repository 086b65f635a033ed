//! The settings a Vagrant box's own `Vagrantfile` gives that matter for
//! booting it, read without running Ruby: plain assignments only.
//!
//! A `libvirt` box may boot through a kernel, an initramfs and a command
//! line its Vagrantfile names (`libvirt.kernel`, `libvirt.initrd`,
//! `libvirt.cmd_line`, in the `config.vm.provider :libvirt` block), and may
//! log in as a user other than `vagrant` (`config.ssh.username`). A value
//! is a string literal without interpolation, an integer, or a file of the
//! box (`File.join(File.dirname(__FILE__), "NAME")`, or `"NAME"`); any
//! other Ruby there is refused, naming the setting, since envup cannot
//! know what it would compute. Lines outside these settings are not
//! looked at.

/// What the Vagrantfile says, as far as envup reads it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BootSettings {
    /// Files of the box (plain names).
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmd_line: Option<String>,
    pub memory_mib: Option<u64>,
    pub cpus: Option<u32>,
    pub ssh_username: Option<String>,
}

/// A setting envup cannot take as it is written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "the box's Vagrantfile sets `{setting}` (line {line}) with Ruby envup does not run: {text}"
)]
pub struct NotPlain {
    pub setting: String,
    pub line: usize,
    pub text: String,
}

const PROVIDER_SETTINGS: [&str; 5] = ["kernel", "initrd", "cmd_line", "memory", "cpus"];

/// Read `text`, a Vagrantfile.
pub fn read(text: &str) -> Result<BootSettings, NotPlain> {
    let mut out = BootSettings::default();
    // The block variable of `config.vm.provider :libvirt do |NAME|`.
    let mut provider: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = strip_comment(raw).trim();
        if let Some(var) = libvirt_block(line) {
            provider = Some(var);
            continue;
        }
        let Some((lhs, rhs)) = assignment(line) else {
            continue;
        };
        let refuse = |setting: &str| NotPlain {
            setting: setting.to_owned(),
            line: i + 1,
            text: crate::ident::printable(raw.trim()).into_owned(),
        };
        if lhs == "config.ssh.username" {
            out.ssh_username = Some(string(rhs).ok_or_else(|| refuse(lhs))?);
            continue;
        }
        let Some((var, key)) = lhs.split_once('.') else {
            continue;
        };
        if provider.as_deref() != Some(var) || !PROVIDER_SETTINGS.contains(&key) {
            continue;
        }
        let setting = format!("libvirt.{key}");
        match key {
            "kernel" => out.kernel = Some(box_file(rhs).ok_or_else(|| refuse(&setting))?),
            "initrd" => out.initrd = Some(box_file(rhs).ok_or_else(|| refuse(&setting))?),
            "cmd_line" => out.cmd_line = Some(string(rhs).ok_or_else(|| refuse(&setting))?),
            "memory" => out.memory_mib = Some(rhs.parse().map_err(|_| refuse(&setting))?),
            "cpus" => out.cpus = Some(rhs.parse().map_err(|_| refuse(&setting))?),
            _ => unreachable!("only the settings listed"),
        }
    }
    Ok(out)
}

/// A line without its `#` comment (a `#` inside a string stays).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// `config.vm.provider :libvirt do |NAME|` (or `"libvirt"`, with
/// parentheses): NAME.
fn libvirt_block(line: &str) -> Option<String> {
    let rest = line.strip_prefix("config.vm.provider")?.trim_start();
    let rest = rest.strip_prefix('(').unwrap_or(rest).trim_start();
    let rest = [":libvirt", "\"libvirt\"", "'libvirt'"]
        .iter()
        .find_map(|p| rest.strip_prefix(p))?;
    let rest = rest
        .trim_start()
        .strip_prefix(')')
        .unwrap_or(rest)
        .trim_start();
    let rest = rest.strip_prefix("do")?.trim_start().strip_prefix('|')?;
    let (var, _) = rest.split_once('|')?;
    let var = var.trim();
    var.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
        .then(|| var.to_owned())
}

/// `LHS = RHS` (not `==`, `+=`…).
fn assignment(line: &str) -> Option<(&str, &str)> {
    let (lhs, rhs) = line.split_once('=')?;
    let lhs = lhs.trim();
    if rhs.starts_with('=')
        || lhs.is_empty()
        || !lhs
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        return None;
    }
    Some((lhs, rhs.trim()))
}

/// A string literal with nothing Ruby would compute in it.
fn string(v: &str) -> Option<String> {
    let q = v.chars().next().filter(|c| matches!(c, '"' | '\''))?;
    let inner = v.strip_prefix(q)?.strip_suffix(q)?;
    if inner.contains(q) || inner.contains('\\') || (q == '"' && inner.contains("#{")) {
        return None;
    }
    Some(inner.to_owned())
}

/// A file of the box: `"NAME"` or `File.join(File.dirname(__FILE__),
/// "NAME")`, NAME a plain file name.
fn box_file(v: &str) -> Option<String> {
    let compact: String = v.chars().filter(|c| !c.is_whitespace()).collect();
    let name = match compact.strip_prefix("File.join(File.dirname(__FILE__),") {
        Some(rest) => string(rest.strip_suffix(')')?)?,
        None => string(v)?,
    };
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.chars().any(char::is_control);
    plain.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOX: &str = r#"
# A box that boots through its own kernel.
Vagrant.configure("2") do |config|
  config.ssh.username = "root"   # not vagrant
  config.vm.provider :libvirt do |libvirt|
    libvirt.driver = "kvm"
    libvirt.kernel = File.join(File.dirname(__FILE__), "vmlinuz")
    libvirt.initrd = File.join( File.dirname(__FILE__), 'initrd.img' )
    libvirt.cmd_line = "console=ttyS0 root=/dev/vda rw # not a comment"
    libvirt.memory = 512
    libvirt.cpus = 2
  end
end
"#;

    #[test]
    fn plain_settings_are_read() {
        assert_eq!(
            read(BOX).unwrap(),
            BootSettings {
                kernel: Some("vmlinuz".into()),
                initrd: Some("initrd.img".into()),
                cmd_line: Some("console=ttyS0 root=/dev/vda rw # not a comment".into()),
                memory_mib: Some(512),
                cpus: Some(2),
                ssh_username: Some("root".into()),
            }
        );
        // Nothing about libvirt: nothing read.
        assert_eq!(
            read("Vagrant.configure(\"2\") do |c|\nend\n").unwrap(),
            BootSettings::default()
        );
        // Another provider's block is not libvirt's.
        let vb = "config.vm.provider :virtualbox do |vb|\n  vb.memory = ENV['M']\nend\n";
        assert_eq!(read(vb).unwrap(), BootSettings::default());
    }

    #[test]
    fn ruby_is_refused_by_name() {
        for (line, setting) in [
            ("    libvirt.kernel = ENV['KERNEL']", "libvirt.kernel"),
            (
                "    libvirt.cmd_line = \"root=#{root}\"",
                "libvirt.cmd_line",
            ),
            ("    libvirt.memory = 256 * 2", "libvirt.memory"),
            (
                "    libvirt.initrd = \"/boot/initrd.img\"",
                "libvirt.initrd",
            ),
            (
                "    libvirt.kernel = File.join(\"/\", \"vmlinuz\")",
                "libvirt.kernel",
            ),
            ("  config.ssh.username = user", "config.ssh.username"),
        ] {
            let text = format!("config.vm.provider :libvirt do |libvirt|\n{line}\nend\n");
            let e = read(&text).unwrap_err();
            assert_eq!(e.setting, setting, "{line}");
            assert!(e.to_string().contains(line.trim()), "{e}");
        }
    }
}
