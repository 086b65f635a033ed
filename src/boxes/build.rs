//! `envup box build RECIPE`: a box from a declarative recipe, made with the
//! host's own package tools (apt-get download, dpkg-deb, debootstrap,
//! depmod, mkfs.ext4, qemu-img).
//!
//! A recipe names the Debian packages of the root filesystem (unpacked, or
//! installed by debootstrap), a shell `setup` step run on the host inside
//! the new root, and for virtual machines the kernel package, the modules
//! the initramfs loads, the disk size and the kernel command line. The box
//! carries the same root filesystem as `rootfs` (jails, containers) and as
//! `disk` (qemu), plus `kernel` and `initrd` for direct kernel boot.
//!
//! Builds are repeatable: file times are set to the recipe's `epoch`,
//! owners kept, entries sorted, and mkfs given a fixed UUID, hash seed and
//! clock, so two builds differ only where the packages did.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use super::archive::pack;
use super::manifest::{Artifact, Boot, Manifest};
use super::{BoxError, io_err as io};
use crate::envfile::Size;
use crate::ui::Reporter;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("no recipe `{0}`; the recipes are: {1}")]
    NoRecipe(String, String),
    #[error("recipe {0} is not valid: {1}")]
    BadRecipe(String, String),
    #[error("{step} failed{}", .detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Step {
        step: String,
        detail: Option<String>,
    },
    #[error("`{tool}` is needed to build boxes; {hint}")]
    Missing { tool: String, hint: String },
    #[error("box builds need root (packages unpack with their owners, mkfs reads every file)")]
    NotRoot,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default = "root")]
    pub ssh_user: String,
    /// Every file's time in the box, in seconds since 1970.
    pub epoch: u64,
    pub rootfs: RootfsRecipe,
    #[serde(default)]
    pub vm: Option<VmRecipe>,
}

fn root() -> String {
    "root".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsRecipe {
    /// Packages unpacked into the root, with what they depend on (no
    /// maintainer scripts run).
    #[serde(default)]
    pub packages: Vec<String>,
    /// Or: a debootstrap of this suite…
    #[serde(default)]
    pub debootstrap: Option<String>,
    /// …with this variant…
    #[serde(default)]
    pub variant: Option<String>,
    /// …and these extra packages installed.
    #[serde(default)]
    pub include: Vec<String>,
    /// Shell run on the host with the new root as working directory and
    /// in `$ROOTFS`.
    #[serde(default)]
    pub setup: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRecipe {
    /// The kernel package (a metapackage is followed to its image).
    pub kernel: String,
    /// Modules the initramfs loads, in order (their dependencies come along).
    pub modules: Vec<String>,
    pub disk_size: String,
    pub cmdline: String,
}

/// The recipes built into envup: `boxes/*.toml`.
const BUILTIN: &[(&str, &str)] = &[
    ("tiny", include_str!("../../boxes/tiny.toml")),
    (
        "debian-bookworm",
        include_str!("../../boxes/debian-bookworm.toml"),
    ),
];

/// The built-in recipe that makes the box called `box_name`, if any.
pub fn recipe_for_box(box_name: &str) -> Option<Recipe> {
    BUILTIN
        .iter()
        .filter_map(|(n, _)| find_recipe(n).ok())
        .find(|r| r.name == box_name)
}

/// A recipe by name (`tiny`), or from a path to a `.toml` file.
pub fn find_recipe(name: &str) -> Result<Recipe, BoxError> {
    let (label, text) = match BUILTIN.iter().find(|(n, _)| *n == name) {
        Some((n, text)) => (format!("`{n}`"), (*text).to_owned()),
        None if name.ends_with(".toml") => {
            let p = Path::new(name);
            (
                p.display().to_string(),
                std::fs::read_to_string(p).map_err(io("read", p))?,
            )
        }
        None => {
            let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
            return Err(BuildError::NoRecipe(name.into(), names.join(", ")).into());
        }
    };
    let r: Recipe = toml::from_str(&text)
        .map_err(|e| BuildError::BadRecipe(label.clone(), e.message().to_owned()))?;
    if r.rootfs.packages.is_empty() == r.rootfs.debootstrap.is_none() {
        return Err(BuildError::BadRecipe(
            label,
            "[rootfs] needs either `packages` or `debootstrap`".into(),
        )
        .into());
    }
    if let Some(vm) = &r.vm {
        Size::parse(&vm.disk_size)
            .map_err(|e| BuildError::BadRecipe(label.clone(), format!("vm.disk_size: {e}")))?;
    }
    Ok(r)
}

fn run(step: &str, cmd: &mut Command) -> Result<String, BoxError> {
    tracing::debug!("{step}: {cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BuildError::Step {
            step: step.into(),
            detail: Some(e.to_string()),
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err
            .lines()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(BuildError::Step {
            step: step.into(),
            detail: Some(format!("{}; {}", out.status, tail.join(" / "))),
        }
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn need(tool: &str, package: &str) -> Result<(), BoxError> {
    if crate::host::which(tool).is_none() {
        return Err(BuildError::Missing {
            tool: tool.into(),
            hint: format!("apt-get install {package}"),
        }
        .into());
    }
    Ok(())
}

/// The Debian mirror the host's apt uses for `suite` (debootstrap needs one).
fn host_mirror(suite: &str) -> Option<String> {
    let mut texts = vec![std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "sources" || e == "list"))
            .collect();
        paths.sort();
        texts.extend(paths.iter().filter_map(|p| std::fs::read_to_string(p).ok()));
    }
    for text in &texts {
        // One-line style: deb [options] URL suite components
        for line in text.lines() {
            let words: Vec<&str> = line
                .split_whitespace()
                .filter(|w| !w.starts_with('[') && !w.ends_with(']'))
                .collect();
            if words.first() == Some(&"deb") && words.get(2) == Some(&suite) {
                return words.get(1).map(|s| s.to_string());
            }
        }
        // deb822 style: stanzas with URIs and Suites.
        for stanza in text.split("\n\n") {
            let field = |k: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_owned()))
            };
            if field("Types:").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"))
                && field("Suites:").is_some_and(|s| s.split_whitespace().any(|s| s == suite))
            {
                return field("URIs:").and_then(|u| u.split_whitespace().next().map(str::to_owned));
            }
        }
    }
    None
}

/// `packages` and everything they depend on (not what they recommend).
fn with_dependencies(packages: &[String]) -> Result<Vec<String>, BoxError> {
    let out = run(
        "resolving package dependencies",
        Command::new("apt-cache")
            .args([
                "depends",
                "--recurse",
                "--no-recommends",
                "--no-suggests",
                "--no-conflicts",
                "--no-breaks",
                "--no-replaces",
                "--no-enhances",
            ])
            .args(packages),
    )?;
    let all: BTreeSet<String> = out
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('<') && !l.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(all.into_iter().collect())
}

/// Download packages into `dir`; returns the .deb files.
fn download(step: &str, packages: &[String], dir: &Path) -> Result<Vec<PathBuf>, BoxError> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    // apt's sandbox user cannot write into a private temp dir; it is only a download.
    run(
        step,
        Command::new("apt-get")
            .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
            .args(packages)
            .current_dir(dir),
    )
    .map_err(|e| match e {
        BoxError::Build(BuildError::Step { step, detail }) => BuildError::Step {
            step,
            detail: Some(format!(
                "{} (are the package lists current? `apt-get update`)",
                detail.unwrap_or_default()
            )),
        }
        .into(),
        other => other,
    })?;
    let mut debs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io("read", dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    debs.sort();
    Ok(debs)
}

fn unpack_debs(debs: &[PathBuf], into: &Path) -> Result<(), BoxError> {
    for deb in debs {
        run(
            &format!(
                "unpacking {}",
                deb.file_name().unwrap_or_default().to_string_lossy()
            ),
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(into),
        )?;
    }
    Ok(())
}

/// The kernel image package a metapackage stands for.
fn kernel_package(name: &str) -> Result<String, BoxError> {
    let out = run(
        "finding the kernel package",
        Command::new("apt-cache").args(["depends", name]),
    )?;
    let image = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| d.starts_with("linux-image-"))
        .map(str::to_owned);
    Ok(image.unwrap_or_else(|| name.to_owned()))
}

/// Set every file's time to `epoch`, so the tar and the disk repeat.
fn set_times(root: &Path, epoch: u64) -> Result<(), BoxError> {
    run(
        "setting file times",
        Command::new("find").arg(root).args([
            "-exec",
            "touch",
            "-h",
            "-d",
            &format!("@{epoch}"),
            "{}",
            "+",
        ]),
    )?;
    Ok(())
}

/// A tar of `root`, entries sorted, times and owners as on disk. Device
/// nodes, fifos and sockets stay out: each backend makes its own /dev.
fn tar_dir(root: &Path, out: &Path) -> Result<(), BoxError> {
    use std::os::unix::fs::FileTypeExt;
    let file = std::fs::File::create(out).map_err(io("write", out))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(file));
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    let mut paths = Vec::new();
    collect(root, root, &mut paths).map_err(io("read", root))?;
    paths.sort();
    for rel in paths {
        let full = root.join(&rel);
        let t = std::fs::symlink_metadata(&full)
            .map_err(io("read", &full))?
            .file_type();
        if t.is_char_device() || t.is_block_device() || t.is_fifo() || t.is_socket() {
            continue;
        }
        b.append_path_with_name(&full, &rel)
            .map_err(io("add to the rootfs tar", &full))?;
    }
    b.into_inner()
        .map_err(io("write", out))?
        .flush()
        .map_err(io("write", out))?;
    Ok(())
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        out.push(p.strip_prefix(root).expect("under root").to_owned());
        if e.file_type()?.is_dir() {
            collect(root, &p, out)?;
        }
    }
    Ok(())
}

/// Write a newc cpio archive of `root` (sorted, times at `epoch`, owned by
/// root), gzip-compressed: an initramfs.
fn cpio_gz(root: &Path, out: &Path, epoch: u64) -> Result<(), BoxError> {
    use std::os::unix::fs::MetadataExt;
    let mut paths = Vec::new();
    collect(root, root, &mut paths).map_err(io("read", root))?;
    paths.sort();
    let file = std::fs::File::create(out).map_err(io("write", out))?;
    let mut gz =
        flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::best());
    let mut ino = 1u32;
    let mut entry = |gz: &mut flate2::write::GzEncoder<_>,
                     name: &str,
                     mode: u32,
                     data: &[u8],
                     nlink: u32|
     -> std::io::Result<()> {
        let namesize = name.len() + 1;
        write!(
            gz,
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
            0,
            0,
            epoch as u32,
            data.len(),
            0,
            0,
            0,
            0,
            0
        )?;
        gz.write_all(name.as_bytes())?;
        gz.write_all(&[0])?;
        gz.write_all(&vec![0u8; (4 - (110 + namesize) % 4) % 4])?;
        gz.write_all(data)?;
        gz.write_all(&vec![0u8; (4 - data.len() % 4) % 4])?;
        ino += 1;
        Ok(())
    };
    for rel in paths {
        let full = root.join(&rel);
        let md = std::fs::symlink_metadata(&full).map_err(io("read", &full))?;
        let name = rel.to_string_lossy();
        let data = if md.file_type().is_symlink() {
            std::fs::read_link(&full)
                .map_err(io("read", &full))?
                .as_os_str()
                .as_encoded_bytes()
                .to_vec()
        } else if md.is_file() {
            std::fs::read(&full).map_err(io("read", &full))?
        } else {
            Vec::new()
        };
        let nlink = if md.is_dir() { 2 } else { 1 };
        entry(&mut gz, &name, md.mode(), &data, nlink).map_err(io("write", out))?;
    }
    entry(&mut gz, "TRAILER!!!", 0, &[], 1).map_err(io("write", out))?;
    gz.finish()
        .map_err(io("write", out))?
        .flush()
        .map_err(io("write", out))?;
    Ok(())
}

/// Unpack the ELF kernel inside an xz-compressed bzImage; `Ok(false)` when
/// the image is not of that kind.
fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<bool, BoxError> {
    const XZ: &[u8] = b"\xfd7zXZ\x00";
    let bytes = std::fs::read(bzimage).map_err(io("read", bzimage))?;
    let Some(offset) = bytes.windows(XZ.len()).position(|w| w == XZ) else {
        return Ok(false);
    };
    if crate::host::which("xz").is_none() {
        return Ok(false);
    }
    let payload = out.with_extension("xz");
    std::fs::write(&payload, &bytes[offset..]).map_err(io("write", &payload))?;
    let outf = std::fs::File::create(out).map_err(io("write", out))?;
    let st = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .arg(&payload)
        .stdout(outf)
        .stderr(Stdio::null())
        .status()
        .map_err(io("run xz on", &payload))?;
    let _ = std::fs::remove_file(&payload);
    let elf = std::fs::read(out)
        .map(|b| b.starts_with(b"\x7fELF"))
        .unwrap_or(false);
    if !st.success() || !elf {
        let _ = std::fs::remove_file(out);
        return Ok(false);
    }
    Ok(true)
}

/// Modules (by name) and everything they depend on, from `modules.dep`.
fn module_closure(modules_dir: &Path, wanted: &[String]) -> Result<Vec<String>, BoxError> {
    let dep_file = modules_dir.join("modules.dep");
    let text = std::fs::read_to_string(&dep_file).map_err(io("read", &dep_file))?;
    let mut deps: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in text.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let name = Path::new(path)
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .split('.')
            .next()
            .unwrap_or("")
            .replace('-', "_");
        deps.insert(
            name,
            (
                path.to_owned(),
                rest.split_whitespace().map(str::to_owned).collect(),
            ),
        );
    }
    let mut out = BTreeSet::new();
    for m in wanted {
        let key = m.replace('-', "_");
        match deps.get(&key) {
            Some((path, ds)) => {
                out.insert(path.clone());
                out.extend(ds.iter().cloned());
            }
            // Built into the kernel: nothing to load.
            None => tracing::debug!("module {m} is not a module of this kernel (built in?)"),
        }
    }
    Ok(out.into_iter().collect())
}

const INIT: &str = r#"#!/bin/busybox sh
# envup's initramfs: load the modules, mount the root, hand over.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /etc/modules); do modprobe "$m" 2>/dev/null; done
root=/dev/vda
for arg in $(cat /proc/cmdline); do
  case "$arg" in root=*) root="${arg#root=}" ;; esac
done
mkdir -p /newroot
i=0
until mount -o rw "$root" /newroot 2>/dev/null; do
  i=$((i + 1))
  if [ "$i" -gt 100 ]; then echo "envup initramfs: cannot mount $root"; exec sh; fi
  sleep 0.1
done
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
umount /proc /sys
exec switch_root /newroot /sbin/init
"#;

/// Build `recipe` into a box file at `out`. Returns its manifest and sha256.
pub fn build(
    recipe: &Recipe,
    out: &Path,
    reporter: &dyn Reporter,
) -> Result<(Manifest, crate::ident::Digest), BoxError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(BuildError::NotRoot.into());
    }
    check_tools(recipe)?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io("create", parent))?;
    let work = tempfile::Builder::new()
        .prefix(".envup-build-")
        .tempdir_in(parent)
        .map_err(io("create a directory in", parent))?;
    let w = work.path();
    let rootfs = w.join("rootfs");
    let art = w.join("box");
    std::fs::create_dir_all(&rootfs).map_err(io("create", &rootfs))?;
    std::fs::create_dir_all(&art).map_err(io("create", &art))?;
    let step = |s: &str| reporter.step(&recipe.name, s);

    // 1. The root filesystem.
    make_rootfs(recipe, w, &rootfs, &step)?;
    let mut manifest = Manifest {
        name: recipe.name.clone(),
        version: recipe.version.clone(),
        arch: std::env::consts::ARCH.into(),
        ssh_user: recipe.ssh_user.clone(),
        description: recipe.description.clone(),
        artifacts: Default::default(),
        boot: None,
        first_login: None,
    };
    step("packing the rootfs");
    tar_dir(&rootfs, &art.join("rootfs.tar"))?;
    manifest
        .artifacts
        .insert("rootfs".into(), artifact("rootfs.tar", None));

    // 2. For virtual machines: kernel, initramfs, disk.
    if let Some(vm) = &recipe.vm {
        step("downloading the kernel");
        let (kroot, kver, kernel_file) = fetch_kernel(vm, w, &art)?;
        manifest
            .artifacts
            .insert("kernel".into(), artifact(kernel_file, None));
        step("making the initramfs");
        make_initrd(vm, recipe.epoch, &kroot, &kver, w, &art)?;
        manifest
            .artifacts
            .insert("initrd".into(), artifact("initrd.img", None));
        step("making the disk");
        make_disk(vm, recipe.epoch, w, &art)?;
        manifest
            .artifacts
            .insert("disk".into(), artifact("disk.qcow2", Some("qcow2")));
        manifest.boot = Some(Boot {
            cmdline: vm.cmdline.clone(),
        });
    }

    step("writing the box");
    let (manifest, digest) = pack(&manifest, &art, out).map_err(|error| BoxError::Archive {
        source_name: out.display().to_string(),
        error,
    })?;
    Ok((manifest, digest))
}

/// An artifact entry, its hash and size filled in by `pack`.
fn artifact(path: &str, format: Option<&str>) -> Artifact {
    Artifact {
        path: path.into(),
        sha256: String::new(),
        size: 0,
        format: format.map(str::to_owned),
    }
}

/// The host programs a recipe's build runs.
fn check_tools(recipe: &Recipe) -> Result<(), BoxError> {
    need("apt-get", "apt")?;
    need("dpkg-deb", "dpkg")?;
    if recipe.rootfs.debootstrap.is_some() {
        need("debootstrap", "debootstrap")?;
    }
    if recipe.vm.is_some() {
        need("depmod", "kmod")?;
        need("mkfs.ext4", "e2fsprogs")?;
        need("qemu-img", "qemu-utils")?;
    }
    Ok(())
}

/// The box's root filesystem in `rootfs`: debootstrap, or the recipe's
/// packages unpacked; then its setup script; every time set to the epoch.
fn make_rootfs(
    recipe: &Recipe,
    w: &Path,
    rootfs: &Path,
    step: &dyn Fn(&str),
) -> Result<(), BoxError> {
    if let Some(suite) = &recipe.rootfs.debootstrap {
        step(&format!("debootstrap {suite}"));
        let mirror = host_mirror(suite).ok_or_else(|| BuildError::Step {
            step: "finding a Debian mirror".into(),
            detail: Some(format!(
                "no `deb` source for {suite} in /etc/apt/sources.list(.d)"
            )),
        })?;
        let mut cmd = Command::new("debootstrap");
        if let Some(v) = &recipe.rootfs.variant {
            cmd.arg(format!("--variant={v}"));
        }
        if !recipe.rootfs.include.is_empty() {
            cmd.arg(format!("--include={}", recipe.rootfs.include.join(",")));
        }
        cmd.arg(suite)
            .arg(rootfs)
            .arg(&mirror)
            .env("SOURCE_DATE_EPOCH", recipe.epoch.to_string());
        run("debootstrap", &mut cmd)?;
        // What apt downloaded is not part of the box.
        let cache = rootfs.join("var/cache/apt/archives");
        if let Ok(rd) = std::fs::read_dir(&cache) {
            for e in rd
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "deb"))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    } else {
        step("downloading packages");
        let packages = with_dependencies(&recipe.rootfs.packages)?;
        let debs = download("apt-get download", &packages, &w.join("debs"))?;
        step("unpacking packages");
        unpack_debs(&debs, rootfs)?;
    }
    if let Some(setup) = &recipe.rootfs.setup {
        step("running setup");
        run(
            "the recipe's setup",
            Command::new("sh")
                .args(["-e", "-c", setup])
                .current_dir(rootfs)
                .env("ROOTFS", rootfs),
        )?;
    }
    set_times(rootfs, recipe.epoch)
}

/// The kernel package unpacked in `w/kernel`, its version, and the kernel
/// placed in `art` (uncompressed when it can be): (kernel tree, version,
/// artifact file name).
fn fetch_kernel(
    vm: &VmRecipe,
    w: &Path,
    art: &Path,
) -> Result<(std::path::PathBuf, String, &'static str), BoxError> {
    let image = kernel_package(&vm.kernel)?;
    let kdebs = download(
        "downloading the kernel",
        &[image, "busybox-static".into()],
        &w.join("kdebs"),
    )?;
    let kroot = w.join("kernel");
    unpack_debs(&kdebs, &kroot)?;
    let boot = kroot.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .map_err(io("read", &boot))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| BuildError::Step {
            step: "finding vmlinuz".into(),
            detail: Some(format!("none in {}", boot.display())),
        })?;
    let kver = vmlinuz
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_owned();
    // An uncompressed kernel boots straight into 64-bit code (PVH):
    // under TCG, decompressing a bzImage costs seconds of every boot.
    let kernel_file = match extract_vmlinux(&vmlinuz, &art.join("vmlinux")) {
        Ok(true) => "vmlinux",
        _ => {
            std::fs::copy(&vmlinuz, art.join("vmlinuz")).map_err(io("copy", &vmlinuz))?;
            "vmlinuz"
        }
    };
    Ok((kroot, kver, kernel_file))
}

/// A busybox initramfs with the modules `vm.modules` need, in
/// `art/initrd.img`.
fn make_initrd(
    vm: &VmRecipe,
    epoch: u64,
    kroot: &Path,
    kver: &str,
    w: &Path,
    art: &Path,
) -> Result<(), BoxError> {
    run(
        "depmod",
        Command::new("depmod").arg("-b").arg(kroot).arg(kver),
    )?;
    let kmods = kroot.join("lib/modules").join(kver);
    let needed = module_closure(&kmods, &vm.modules)?;
    let initrd = w.join("initramfs");
    for d in ["bin", "dev", "proc", "sys", "etc", "newroot"] {
        std::fs::create_dir_all(initrd.join(d)).map_err(io("create", &initrd))?;
    }
    std::fs::copy(kroot.join("bin/busybox"), initrd.join("bin/busybox"))
        .map_err(io("copy", kroot))?;
    std::fs::write(initrd.join("init"), INIT).map_err(io("write", &initrd))?;
    std::fs::write(initrd.join("etc/modules"), vm.modules.join("\n") + "\n")
        .map_err(io("write", &initrd))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(initrd.join("init"), std::fs::Permissions::from_mode(0o755))
            .map_err(io("write", &initrd))?;
    }
    let imods = initrd.join("lib/modules").join(kver);
    for rel in &needed {
        let to = imods.join(rel);
        std::fs::create_dir_all(to.parent().expect("module path has a parent"))
            .map_err(io("create", &imods))?;
        std::fs::copy(kmods.join(rel), &to).map_err(io("copy", &to))?;
    }
    for f in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        let _ = std::fs::copy(kmods.join(f), imods.join(f));
    }
    run(
        "depmod for the initramfs",
        Command::new("depmod").arg("-b").arg(&initrd).arg(kver),
    )?;
    set_times(&initrd, epoch)?;
    cpio_gz(&initrd, &art.join("initrd.img"), epoch)?;
    Ok(())
}

/// The rootfs as an ext4 disk, the same bytes every time, in
/// `art/disk.qcow2`.
fn make_disk(vm: &VmRecipe, epoch: u64, w: &Path, art: &Path) -> Result<(), BoxError> {
    // mkfs copies files in the order the directory lists them. A fresh
    // tmpfs lists in creation order, so unpacking the sorted rootfs tar
    // there makes the same disk every time.
    let shm = Path::new("/dev/shm");
    let stage = tempfile::Builder::new()
        .prefix("envup-disk-")
        .tempdir_in(if shm.is_dir() { shm } else { w })
        .map_err(io("create a directory in", shm))?;
    {
        let tar_path = art.join("rootfs.tar");
        let f = std::fs::File::open(&tar_path).map_err(io("read", &tar_path))?;
        let mut a = tar::Archive::new(std::io::BufReader::new(f));
        a.set_preserve_permissions(true);
        a.set_preserve_ownerships(true);
        a.set_preserve_mtime(true);
        a.unpack(stage.path())
            .map_err(io("unpack the rootfs into", stage.path()))?;
    }
    let raw = w.join("disk.raw");
    let size = Size::parse(&vm.disk_size).expect("checked with the recipe");
    run(
        "mkfs.ext4",
        Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-L",
                "envup-root",
                "-U",
                "6d1b2f3e-0e5a-4c7b-9a41-7f2c9e1d0b8a",
                "-E",
                "hash_seed=3c9e5d2a-8b1f-4e6d-a7c0-51f2e8b9d4a3,root_owner=0:0",
                "-d",
            ])
            .arg(stage.path())
            .arg(&raw)
            .arg(format!("{}k", size.bytes() / 1024))
            .env("E2FSPROGS_FAKE_TIME", epoch.to_string()),
    )?;
    // mkfs takes each inode's change time from the staged file, which is
    // "now"; set them to the epoch like every other time in the box.
    let mut entries = Vec::new();
    collect(stage.path(), stage.path(), &mut entries).map_err(io("read", stage.path()))?;
    drop(stage);
    // (Reading directories for mkfs moved their access times, and
    // unpacking into a directory moved its modification time.)
    let mut cmds = String::new();
    let paths = std::iter::once(String::new())
        .chain(entries.iter().map(|r| r.to_string_lossy().into_owned()));
    for p in paths.filter(|p| !p.contains('"') && !p.contains('\n')) {
        for field in ["ctime", "atime", "mtime"] {
            cmds.push_str(&format!("set_inode_field \"/{p}\" {field} @{}\n", epoch));
        }
    }
    let cmd_file = w.join("ctimes.debugfs");
    std::fs::write(&cmd_file, cmds).map_err(io("write", &cmd_file))?;
    run(
        "setting inode times",
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&cmd_file)
            .arg(&raw)
            .env("E2FSPROGS_FAKE_TIME", epoch.to_string()),
    )?;
    run(
        "qemu-img convert",
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(art.join("disk.qcow2")),
    )?;
    std::fs::remove_file(&raw).map_err(io("remove", &raw))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_recipes_parse() {
        for (name, _) in BUILTIN {
            let r = find_recipe(name).unwrap();
            assert!(r.vm.is_some(), "{name} makes a disk image");
        }
        assert!(matches!(
            find_recipe("nope"),
            Err(BoxError::Build(BuildError::NoRecipe(..)))
        ));
    }

    #[test]
    fn closure_follows_dependencies() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("modules.dep"),
            "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/jbd2/jbd2.ko\nkernel/lib/crc16.ko:\nkernel/fs/jbd2/jbd2.ko:\nkernel/drivers/block/virtio_blk.ko:\n",
        )
        .unwrap();
        let c = module_closure(
            dir.path(),
            &["ext4".into(), "virtio-blk".into(), "builtin_thing".into()],
        )
        .unwrap();
        assert_eq!(
            c,
            [
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/fs/ext4/ext4.ko",
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/lib/crc16.ko"
            ]
        );
    }
}
