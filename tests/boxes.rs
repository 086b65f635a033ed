//! Boxes: the store, hostile archives, downloads from a real HTTP server on
//! 127.0.0.1 (with faults), catalogs, Vagrant boxes, and Envfile.lock.

mod common;

use std::path::Path;

use common::Project;
use common::boxes::{RawBox, make_box, manifest_for, rootfs_bytes, sha256};
use common::http::{Mode, Server};

/// Digest directories and unpacking leftovers in the store.
fn store_entries(p: &Project) -> Vec<String> {
    let root = p.home.path().join("boxes-v1");
    let mut out = Vec::new();
    for sub in ["", "tmp"] {
        if let Ok(rd) = std::fs::read_dir(root.join(sub)) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if !matches!(n.as_str(), "tmp" | "downloads") {
                    out.push(format!("{sub}/{n}"));
                }
            }
        }
    }
    out
}

fn no_file_named(root: &Path, name: &str) -> bool {
    let Ok(rd) = std::fs::read_dir(root) else {
        return true;
    };
    rd.flatten().all(|e| {
        let p = e.path();
        e.file_name() != name && (!p.is_dir() || p.is_symlink() || no_file_named(&p, name))
    })
}

#[test]
fn add_list_verify_remove_a_local_box() {
    let p = Project::new();
    let b = make_box(
        p.path(),
        "acme/tiny",
        "1.2.0",
        &[("rootfs", "rootfs.tar", &rootfs_bytes("one"))],
    );
    let digest = sha256(&b);
    p.cmd(&["box", "add", b.to_str().unwrap()])
        .out()
        .status(0)
        .stdout_has("added acme/tiny 1.2.0")
        .stdout_has("serves jail, container");
    let j = p.cmd(&["--json", "box", "list"]).out().status(0).json();
    assert_eq!(j[0]["name"], "acme/tiny");
    assert_eq!(j[0]["sha256"], digest.as_str());
    assert_eq!(
        j[0]["backends"],
        serde_json::json!(["jail", "container", "lxc"])
    );
    p.cmd(&["box", "list"])
        .out()
        .status(0)
        .stdout_has(&digest[..12]);
    p.cmd(&["box", "verify"]).out().status(0).stdout_has("ok");

    // A second add stores nothing new: same directory, same files.
    let artifact = p
        .home
        .path()
        .join("boxes-v1")
        .join(&digest)
        .join("rootfs.tar");
    let before = std::fs::metadata(&artifact).unwrap().modified().unwrap();
    p.cmd(&["box", "add", b.to_str().unwrap()]).out().status(0);
    assert_eq!(
        std::fs::metadata(&artifact).unwrap().modified().unwrap(),
        before
    );
    assert_eq!(store_entries(&p), [format!("/{digest}")]);

    // Damage a stored artifact: verify says so.
    std::fs::write(&artifact, b"tampered").unwrap();
    p.cmd(&["box", "verify", "acme/tiny"])
        .out()
        .status(1)
        .stdout_has("damaged")
        .stdout_has("`rootfs`");

    p.cmd(&["box", "remove", "acme/tiny"])
        .out()
        .status(0)
        .stdout_has("removed");
    assert!(store_entries(&p).is_empty());
    p.cmd(&["box", "remove", "acme/tiny"])
        .out()
        .status(1)
        .stderr_has("no stored box");
}

#[test]
fn stored_bytes_are_not_renamed_silently() {
    let p = Project::new();
    let b = make_box(
        p.path(),
        "tiny",
        "1.0.0",
        &[("rootfs", "rootfs.tar", &rootfs_bytes("same"))],
    );
    let path = b.to_str().unwrap();
    p.cmd(&["box", "add", path]).out().status(0);
    // The same name again is fine; another name is refused, not dropped.
    p.cmd(&["box", "add", path, "--name", "tiny"])
        .out()
        .status(0);
    p.cmd(&["box", "add", path, "--name", "team/tiny"])
        .out()
        .status(1)
        .stderr_has("stored already, as `tiny` 1.0.0")
        .stderr_has("cannot also be `team/tiny 1.0.0`");
    let digest = sha256(&b);
    p.cmd(&[
        "box",
        "add",
        path,
        "--checksum",
        &digest,
        "--version",
        "2.0.0",
    ])
    .out()
    .status(1)
    .stderr_has("cannot also be `tiny 2.0.0`");
    let j = p.cmd(&["--json", "box", "list"]).out().status(0).json();
    assert_eq!(j.as_array().unwrap().len(), 1);
    assert_eq!(j[0]["name"], "tiny");
}

#[test]
fn checksum_flag_is_enforced() {
    let p = Project::new();
    let b = make_box(
        p.path(),
        "acme/tiny",
        "1.0.0",
        &[("rootfs", "rootfs.tar", &rootfs_bytes("x"))],
    );
    let wrong = format!("sha256:{}", "0".repeat(64));
    p.cmd(&["box", "add", b.to_str().unwrap(), "--checksum", &wrong])
        .out()
        .status(1)
        .stderr_has(&format!("expected sha256 {}", "0".repeat(64)))
        .stderr_has(&format!("got {}", sha256(&b)));
    assert!(store_entries(&p).is_empty());
    p.cmd(&["box", "add", b.to_str().unwrap(), "--checksum", "md5:abc"])
        .out()
        .status(1)
        .stderr_has("is not sha256:");
    p.cmd(&[
        "box",
        "add",
        b.to_str().unwrap(),
        "--checksum",
        &format!("sha256:{}", sha256(&b)),
    ])
    .out()
    .status(0);
}

/// Each hostile archive is refused with its reason; nothing lands in the
/// store, and nothing outside it.
#[test]
fn hostile_archives_are_refused() {
    // A valid box.toml listing one 7-byte rootfs, `payload`, first.
    fn manifest_first() -> RawBox {
        RawBox::new().file(
            "box.toml",
            manifest_for(&[("rootfs", "rootfs.tar", b"payload")]).as_bytes(),
        )
    }
    type Case = (&'static str, Box<dyn Fn(&Path)>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "absolute path",
            Box::new(|p: &Path| manifest_first().file("/tmp/envup-evil-abs", b"x").write(p)),
            "does not list",
        ),
        (
            "dot-dot path",
            Box::new(|p: &Path| manifest_first().file("../envup-evil", b"x").write(p)),
            "does not list",
        ),
        (
            "symlink out",
            Box::new(|p: &Path| {
                manifest_first()
                    .entry(
                        "rootfs.tar",
                        tar::EntryType::Symlink,
                        b"",
                        Some("/etc/passwd"),
                        Some(0),
                    )
                    .write(p);
            }),
            "symbolic link",
        ),
        (
            "hard link out",
            Box::new(|p: &Path| {
                manifest_first()
                    .entry(
                        "rootfs.tar",
                        tar::EntryType::Link,
                        b"",
                        Some("../../etc/shadow"),
                        Some(0),
                    )
                    .write(p);
            }),
            "hard link",
        ),
        (
            "manifest path escapes",
            Box::new(|p: &Path| {
                RawBox::new().file("box.toml", b"name = \"e\"\nversion = \"1\"\n[artifacts.rootfs]\npath = \"../../envup-evil\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\nsize = 1\n").write(p);
            }),
            "not a plain relative path",
        ),
        (
            "no manifest",
            Box::new(|p: &Path| RawBox::new().file("rootfs.tar", b"payload").write(p)),
            "not box.toml",
        ),
        (
            "unparsable manifest",
            Box::new(|p: &Path| RawBox::new().file("box.toml", b"name = [unclosed").write(p)),
            "box.toml is not valid",
        ),
        (
            "digest mismatch",
            Box::new(|p: &Path| manifest_first().file("rootfs.tar", b"PAYLOAD").write(p)),
            "does not match box.toml",
        ),
        (
            "size far beyond the manifest",
            Box::new(|p: &Path| {
                manifest_first()
                    .file("rootfs.tar", &vec![7u8; 1 << 20])
                    .write(p);
            }),
            "but box.toml declares 7",
        ),
        (
            "missing artifact",
            Box::new(|p: &Path| manifest_first().write(p)),
            "missing from the box",
        ),
        (
            "duplicate entry",
            Box::new(|p: &Path| {
                manifest_first()
                    .file("rootfs.tar", b"payload")
                    .file("rootfs.tar", b"payload")
                    .write(p);
            }),
            "twice",
        ),
        (
            "device entry",
            Box::new(|p: &Path| {
                manifest_first()
                    .entry("rootfs.tar", tar::EntryType::Char, b"", None, Some(0))
                    .write(p);
            }),
            "device",
        ),
        (
            "not a box at all",
            Box::new(|p: &Path| std::fs::write(p, b"hello, I am text").unwrap()),
            "damaged",
        ),
    ];
    for (what, make, words) in cases {
        let p = Project::new();
        let file = p.path().join("evil.box");
        make(&file);
        let out = p.cmd(&["box", "add", file.to_str().unwrap()]).out();
        assert_eq!(out.code(), 1, "{what}: {}", out.stderr());
        assert!(
            out.stderr().contains(words),
            "{what}: stderr lacks {words:?}:\n{}",
            out.stderr()
        );
        assert!(
            store_entries(&p).is_empty(),
            "{what}: the store kept {:?}",
            store_entries(&p)
        );
        assert!(
            !Path::new("/tmp/envup-evil-abs").exists(),
            "{what}: wrote outside"
        );
        assert!(
            no_file_named(p.home.path(), "envup-evil"),
            "{what}: wrote outside the unpack directory"
        );
        assert!(
            no_file_named(p.path(), "envup-evil"),
            "{what}: wrote next to the box"
        );
    }
}

#[test]
fn truncated_box_is_refused() {
    let p = Project::new();
    let big: Vec<u8> = (0..400_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let b = make_box(
        p.path(),
        "acme/big",
        "1.0.0",
        &[("rootfs", "rootfs.tar", &big)],
    );
    let bytes = std::fs::read(&b).unwrap();
    std::fs::write(&b, &bytes[..bytes.len() / 2]).unwrap();
    p.cmd(&["box", "add", b.to_str().unwrap()])
        .out()
        .status(1)
        .stderr_has("damaged or cut short");
    assert!(store_entries(&p).is_empty());
}

#[test]
fn download_resumes_after_a_dropped_connection() {
    let p = Project::new();
    let server = Server::start();
    let big: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let b = make_box(
        p.path(),
        "acme/big",
        "1.0.0",
        &[("rootfs", "rootfs.tar", &big)],
    );
    let digest = sha256(&b);
    let url = server.put("/big.box", std::fs::read(&b).unwrap(), Mode::DropHalfway);
    p.cmd(&[
        "box",
        "add",
        &url,
        "--checksum",
        &format!("sha256:{digest}"),
    ])
    .out()
    .status(0)
    .stdout_has("added acme/big 1.0.0");
    let reqs = server.requests("/big.box");
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert!(
        reqs[1]
            .as_deref()
            .is_some_and(|r| r.starts_with("bytes=") && r != "bytes=0-"),
        "{reqs:?}"
    );
    assert!(store_entries(&p).contains(&format!("/{digest}")));
    let parts = std::fs::read_dir(p.home.path().join("boxes-v1/downloads"))
        .unwrap()
        .count();
    assert_eq!(parts, 0, "the finished download is not kept twice");
}

#[test]
fn download_starts_over_when_the_server_ignores_range() {
    let p = Project::new();
    let server = Server::start();
    let big: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let b = make_box(
        p.path(),
        "acme/big",
        "2.0.0",
        &[("rootfs", "rootfs.tar", &big)],
    );
    let url = server.put(
        "/b.box",
        std::fs::read(&b).unwrap(),
        Mode::DropThenIgnoreRange,
    );
    p.cmd(&[
        "box",
        "add",
        &url,
        "--checksum",
        &format!("sha256:{}", sha256(&b)),
    ])
    .out()
    .status(0);
    assert_eq!(server.requests("/b.box").len(), 2);
}

#[test]
fn wrong_bytes_are_never_kept() {
    let p = Project::new();
    let server = Server::start();
    let b = make_box(
        p.path(),
        "acme/tiny",
        "1.0.0",
        &[("rootfs", "rootfs.tar", &rootfs_bytes("w"))],
    );
    let digest = sha256(&b);
    let url = server.put("/w.box", std::fs::read(&b).unwrap(), Mode::WrongBytes);
    p.cmd(&[
        "box",
        "add",
        &url,
        "--checksum",
        &format!("sha256:{digest}"),
    ])
    .out()
    .status(1)
    .stderr_has(&format!("expected sha256 {digest}"))
    .stderr_has("got ");
    assert!(store_entries(&p).is_empty());
    let parts = std::fs::read_dir(p.home.path().join("boxes-v1/downloads"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(parts, 0, "mismatched bytes are deleted");
}

#[test]
fn catalog_mirrors_and_names() {
    let p = Project::new();
    let server = Server::start();
    let b = make_box(
        p.path(),
        "acme/tiny",
        "1.4.0",
        &[("rootfs", "rootfs.tar", &rootfs_bytes("c"))],
    );
    let digest = sha256(&b);
    server.put("/broken/tiny.box", Vec::new(), Mode::Status(500));
    server.put("/mirror/tiny.box", std::fs::read(&b).unwrap(), Mode::Normal);
    let catalog = serde_json::json!({
        "name": "acme/tiny",
        "versions": [
            { "version": "1.4.0", "providers": [
                { "name": "envup", "url": format!("{}/broken/tiny.box", server.base), "checksum_type": "sha256", "checksum": digest,
                  "mirrors": [format!("{}/gone/tiny.box", server.base), format!("{}/mirror/tiny.box", server.base)] } ] },
            { "version": "0.9.0", "providers": [ { "name": "virtualbox", "url": "http://unused" } ] }
        ]
    });
    server.put(
        "/catalogs/acme/tiny.json",
        catalog.to_string().into_bytes(),
        Mode::Normal,
    );
    let out = p
        .cmd(&["box", "add", "acme/tiny"])
        .env("ENVUP_CATALOGS", &format!("{}/catalogs", server.base))
        .out()
        .status(0);
    assert!(out.stdout().contains("added acme/tiny 1.4.0"));
    assert!(
        server.requests("/broken/tiny.box").len() >= 2,
        "the broken source was retried"
    );
    assert_eq!(
        server.requests("/gone/tiny.box").len(),
        1,
        "a 404 is not retried"
    );
    p.cmd(&["box", "add", "nobody/here"])
        .env("ENVUP_CATALOGS", &format!("{}/catalogs", server.base))
        .out()
        .status(1)
        .stderr_has("no box `nobody/here`")
        .stderr_has("HTTP 404");
}

fn vagrant_box(path: &Path, provider: &str, payload_name: &str, payload: &[u8]) {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    add(
        "metadata.json",
        format!("{{\"provider\": \"{provider}\", \"format\": \"qcow2\", \"virtual_size\": 2}}")
            .as_bytes(),
    );
    add("Vagrantfile", b"Vagrant.configure(\"2\") {}");
    add(payload_name, payload);
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::fast(),
    );
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap();
}

#[test]
fn vagrant_libvirt_and_lxc_boxes_import() {
    let p = Project::new();
    let libvirt = p.path().join("lv.box");
    vagrant_box(
        &libvirt,
        "libvirt",
        "box.img",
        b"QFI\xfb not really a qcow2",
    );
    p.cmd(&["box", "add", libvirt.to_str().unwrap()])
        .out()
        .status(1)
        .stderr_has("pass --name");
    p.cmd(&[
        "box",
        "add",
        libvirt.to_str().unwrap(),
        "--name",
        "vagrant/lv",
        "--version",
        "3.1.0",
    ])
    .out()
    .status(0)
    .stdout_has("serves qemu");

    let lxc = p.path().join("lxc.box");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &rootfs_bytes("lxc")).unwrap();
    vagrant_box(&lxc, "lxc", "rootfs.tar.gz", &gz.finish().unwrap());
    p.cmd(&["box", "add", lxc.to_str().unwrap(), "--name", "vagrant/lxc"])
        .out()
        .status(0)
        .stdout_has("serves jail, container");

    let vb = p.path().join("vb.box");
    vagrant_box(&vb, "virtualbox", "box.ovf", b"<xml/>");
    p.cmd(&["box", "add", vb.to_str().unwrap(), "--name", "v/vb"])
        .out()
        .status(1)
        .stderr_has("`virtualbox` provider");

    let j = p.cmd(&["--json", "box", "list"]).out().status(0).json();
    let lv = j
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "vagrant/lv")
        .unwrap();
    assert_eq!(lv["version"], "3.1.0");
    assert_eq!(lv["backends"], serde_json::json!(["qemu"]));
    // The stored lxc rootfs is the tarball's content, unzipped.
    let dir = p.home.path().join("boxes-v1").join(
        j.as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == "vagrant/lxc")
            .unwrap()["sha256"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(
        std::fs::read(dir.join("rootfs.tar")).unwrap(),
        rootfs_bytes("lxc")
    );
}

/// A vagrant-lxc box keeps its tree under `./rootfs/`: the stored rootfs
/// is the tree itself (hard link targets moved with it, symlink targets as
/// they were), and its recorded hash is that of the stored bytes.
#[test]
fn vagrant_lxc_rootfs_level_is_stripped() {
    let p = Project::new();
    let mut b = tar::Builder::new(Vec::new());
    let mut entry = |path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(data.len() as u64);
        match link {
            Some(target) => b.append_link(&mut h, path, target).unwrap(),
            None => b.append_data(&mut h, path, data).unwrap(),
        }
    };
    entry("./rootfs/", tar::EntryType::Directory, b"", None);
    entry("./rootfs/etc/", tar::EntryType::Directory, b"", None);
    entry(
        "./rootfs/etc/marker",
        tar::EntryType::Regular,
        b"lxc\n",
        None,
    );
    entry(
        "./rootfs/etc/hard",
        tar::EntryType::Link,
        b"",
        Some("./rootfs/etc/marker"),
    );
    entry(
        "./rootfs/etc/sym",
        tar::EntryType::Symlink,
        b"",
        Some("/etc/marker"),
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &b.into_inner().unwrap()).unwrap();
    let file = p.path().join("lxc.box");
    vagrant_box(&file, "lxc", "rootfs.tar.gz", &gz.finish().unwrap());
    p.cmd(&[
        "box",
        "add",
        file.to_str().unwrap(),
        "--name",
        "vagrant/lxc",
    ])
    .out()
    .status(0);
    p.cmd(&["box", "verify"]).out().status(0);
    let dir = common::boxes::stored_dir(p.home.path(), "vagrant/lxc");
    let mut a = tar::Archive::new(std::fs::File::open(dir.join("rootfs.tar")).unwrap());
    let seen: Vec<(String, Option<String>)> = a
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            (path, link)
        })
        .collect();
    let want = [
        ("etc/", None),
        ("etc/marker", None),
        ("etc/hard", Some("etc/marker")),
        ("etc/sym", Some("/etc/marker")),
    ]
    .map(|(p, l)| (p.to_owned(), l.map(str::to_owned)));
    assert_eq!(seen, want);
}

/// A libvirt box's Vagrantfile is read for what boots it: plain settings
/// are taken (and files it does not name are not kept); Ruby that envup
/// would have to run is refused, naming the setting and its line.
#[test]
fn vagrant_libvirt_vagrantfile() {
    let p = Project::new();
    let make = |file: &str, vagrantfile: &str| {
        let path = p.path().join(file);
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in [
            (
                "metadata.json",
                &br#"{"provider": "libvirt", "format": "qcow2"}"#[..],
            ),
            ("Vagrantfile", vagrantfile.as_bytes()),
            ("box.img", &b"QFI\xfb a disk"[..]),
            ("vmlinuz", &b"a kernel"[..]),
            ("notes.txt", &b"not named"[..]),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, data).unwrap();
        }
        std::fs::write(&path, b.into_inner().unwrap()).unwrap();
        path
    };
    let good = make(
        "good.box",
        "Vagrant.configure(\"2\") do |config|\n  config.vm.provider :libvirt do |lv|\n    \
         lv.kernel = File.join(File.dirname(__FILE__), \"vmlinuz\")\n    \
         lv.cmd_line = \"root=/dev/vda console=ttyS0\"\n  end\nend\n",
    );
    p.cmd(&[
        "-q",
        "box",
        "add",
        good.to_str().unwrap(),
        "--name",
        "v/good",
    ])
    .out()
    .status(0);
    let dir = common::boxes::stored_dir(p.home.path(), "v/good");
    let manifest = std::fs::read_to_string(dir.join("box.toml")).unwrap();
    assert!(manifest.contains("[artifacts.kernel]"), "{manifest}");
    assert!(
        manifest.contains("root=/dev/vda console=ttyS0"),
        "{manifest}"
    );
    let mut kept: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(kept, ["box.toml", "disk.qcow2", "meta.json", "vmlinuz"]);

    let ruby = make(
        "ruby.box",
        "config.vm.provider :libvirt do |lv|\n  lv.kernel = ENV['KERNEL']\nend\n",
    );
    p.cmd(&["box", "add", ruby.to_str().unwrap(), "--name", "v/ruby"])
        .out()
        .status(1)
        .stderr_has("`libvirt.kernel` (line 2)")
        .stderr_has("ENV['KERNEL']");
}

#[test]
fn lock_pins_and_update_moves_on() {
    let p = Project::new();
    let server = Server::start();
    let v1 = make_box(
        p.path(),
        "acme/tiny",
        "1.0.0",
        &[("rootfs", "rootfs.tar", &rootfs_bytes("v1"))],
    );
    let v2 = make_box(
        p.path(),
        "acme/tiny",
        "1.1.0",
        &[("rootfs", "rootfs.tar", &rootfs_bytes("v2"))],
    );
    let (d1, d2) = (sha256(&v1), sha256(&v2));
    server.put("/v1.box", std::fs::read(&v1).unwrap(), Mode::Normal);
    server.put("/v2.box", std::fs::read(&v2).unwrap(), Mode::Normal);
    let catalog = |versions: &[(&str, &str, &str)]| {
        serde_json::json!({ "name": "acme/tiny", "versions": versions.iter().map(|(v, path, d)| serde_json::json!(
            { "version": v, "providers": [{ "name": "envup", "url": format!("{}{path}", server.base), "checksum_type": "sha256", "checksum": d }] }
        )).collect::<Vec<_>>() })
        .to_string()
        .into_bytes()
    };
    server.put(
        "/cat/acme/tiny.json",
        catalog(&[("1.0.0", "/v1.box", &d1)]),
        Mode::Normal,
    );
    p.write(
        "Envfile",
        "[machines.web]\nbox = \"acme/tiny\"\nbackend = \"container\"\n",
    );
    let cats = format!("{}/cat", server.base);

    p.cmd(&["up", "--locked"])
        .env(common::NO_ENGINES.0, common::NO_ENGINES.1)
        .out()
        .status(1)
        .stderr_has("Envfile.lock does not pin a box for web");
    p.cmd(&["lock"])
        .env("ENVUP_CATALOGS", &cats)
        .out()
        .status(0)
        .stdout_has("locked web: acme/tiny 1.0.0");
    let lock = std::fs::read_to_string(p.path().join("Envfile.lock")).unwrap();
    assert!(lock.contains(&d1) && lock.contains("/v1.box"), "{lock}");
    // With the lock in place, --locked gets past the lock and stops at the backend.
    p.cmd(&["up", "--locked"])
        .env(common::NO_ENGINES.0, common::NO_ENGINES.1)
        .out()
        .status(1)
        .stderr_has("no container engine works here");

    // A newer version appears: lock keeps the pin, update moves it.
    server.put(
        "/cat/acme/tiny.json",
        catalog(&[("1.0.0", "/v1.box", &d1), ("1.1.0", "/v2.box", &d2)]),
        Mode::Normal,
    );
    p.cmd(&["lock"])
        .env("ENVUP_CATALOGS", &cats)
        .out()
        .status(0)
        .stdout_has("up to date");
    p.cmd(&["update"])
        .env("ENVUP_CATALOGS", &cats)
        .out()
        .status(0)
        .stdout_has("locked web: acme/tiny 1.1.0");
    assert!(
        std::fs::read_to_string(p.path().join("Envfile.lock"))
            .unwrap()
            .contains(&d2)
    );

    // box_version that the pin no longer meets: the pin is stale.
    p.write(
        "Envfile",
        "[machines.web]\nbox = \"acme/tiny\"\nbox_version = \"<1.1\"\nbackend = \"container\"\n",
    );
    p.cmd(&["up", "--locked"])
        .env(common::NO_ENGINES.0, common::NO_ENGINES.1)
        .out()
        .status(1)
        .stderr_has("no longer fits the Envfile");
    p.cmd(&["lock"])
        .env("ENVUP_CATALOGS", &cats)
        .out()
        .status(0)
        .stdout_has("acme/tiny 1.0.0");
}

/// A box file whose path is not UTF-8 (in a project directory whose name
/// is not): `box add` takes the path as it is, and the lock file names the
/// box relative to the project, so a store without it adds it again from
/// there.
#[test]
fn a_box_file_in_a_directory_that_is_not_utf8() {
    let p = Project::with_envfile_in(
        "boxes ",
        "[machines.web]\nbox = \"t,i:n y.box\"\nbackend = \"container\"\n",
    );
    let made = make_box(
        p.path(),
        "acme/odd",
        "1.0.0",
        &[("rootfs", "rootfs.tar", &rootfs_bytes("odd"))],
    );
    let file = p.path().join("t,i:n y.box");
    std::fs::rename(&made, &file).unwrap();
    assert!(file.to_str().is_none(), "the path is meant not to be UTF-8");
    let mut add = p.cmd(&["box", "add"]);
    add.0.arg(&file);
    add.out().status(0).stdout_has("added acme/odd 1.0.0");
    p.cmd(&["lock"]).out().status(0);
    let lock = std::fs::read_to_string(p.path().join("Envfile.lock")).unwrap();
    assert!(lock.contains("url = \"t,i:n y.box\""), "{lock}");
    // A store without it: the locked path brings it back.
    p.cmd(&["box", "remove", "acme/odd"]).out().status(0);
    p.cmd(&["up", "--locked"])
        .env(common::NO_ENGINES.0, common::NO_ENGINES.1)
        .out()
        .status(1)
        .stderr_has("no container engine works here");
    p.cmd(&["lock"]).out().status(0);
    assert_eq!(
        std::fs::read_to_string(p.path().join("Envfile.lock")).unwrap(),
        lock
    );
    p.cmd(&["box", "list"])
        .out()
        .status(0)
        .stdout_has("acme/odd");
}

/// A locked box gone from the store, and from where the lock says it came:
/// the error says the pinned box is not stored and how to pin one anew.
#[test]
fn a_locked_box_gone_says_update() {
    let p = Project::with_envfile("[machines.web]\nbox = \"t.box\"\nbackend = \"container\"\n");
    let made = make_box(
        p.path(),
        "acme/gone",
        "1.0.0",
        &[("rootfs", "rootfs.tar", &rootfs_bytes("gone"))],
    );
    std::fs::rename(&made, p.path().join("t.box")).unwrap();
    p.cmd(&["lock"]).out().status(0);
    p.cmd(&["box", "remove", "acme/gone"]).out().status(0);
    std::fs::remove_file(p.path().join("t.box")).unwrap();
    p.cmd(&["lock"])
        .out()
        .status(1)
        .stderr_has("the box Envfile.lock pins for `web`")
        .stderr_has("is not stored")
        .stderr_has("`envup update web`");
}

#[test]
fn a_box_that_does_not_hash_to_the_lock_is_never_used() {
    let p = Project::new();
    let server = Server::start();
    let b = make_box(
        p.path(),
        "acme/tiny",
        "1.0.0",
        &[("rootfs", "rootfs.tar", &rootfs_bytes("x"))],
    );
    let url = server.put("/t.box", std::fs::read(&b).unwrap(), Mode::Normal);
    p.write("Envfile", "[machines.web]\nbox = \"acme/tiny\"\n");
    p.write(
        "Envfile.lock",
        &format!("version = 1\n[machines.web]\nbox = \"acme/tiny\"\nversion = \"1.0.0\"\nurl = \"{url}\"\nsha256 = \"{}\"\n", "1".repeat(64)),
    );
    p.cmd(&["lock"])
        .out()
        .status(1)
        .stderr_has(&format!("expected sha256 {}", "1".repeat(64)));
    assert!(store_entries(&p).is_empty());
}

#[test]
fn a_box_for_another_backend_is_refused() {
    let p = Project::new();
    let b = make_box(
        p.path(),
        "acme/vm",
        "1.0.0",
        &[("disk", "disk.qcow2", b"not really")],
    );
    p.write(
        "Envfile",
        &format!(
            "[machines.web]\nbox = \"{}\"\nbackend = \"jail\"\n",
            b.display()
        ),
    );
    p.cmd(&["lock"])
        .out()
        .status(1)
        .stderr_has("serves qemu, but machine `web` uses the jail backend");
}

#[test]
fn prune_keeps_the_newest_version() {
    let p = Project::new();
    for v in ["1.0.0", "1.2.0", "1.10.0"] {
        let b = make_box(
            p.path(),
            "acme/tiny",
            v,
            &[("rootfs", "rootfs.tar", &rootfs_bytes(v))],
        );
        p.cmd(&["box", "add", b.to_str().unwrap()]).out().status(0);
    }
    p.cmd(&["box", "prune"])
        .out()
        .status(0)
        .stdout_has("pruned 2 boxes");
    let j = p.cmd(&["--json", "box", "list"]).out().status(0).json();
    assert_eq!(j.as_array().unwrap().len(), 1);
    assert_eq!(j[0]["version"], "1.10.0");
}

#[test]
fn a_box_in_use_is_kept_unless_forced() {
    let p = Project::new();
    let b = make_box(
        p.path(),
        "acme/tiny",
        "1.0.0",
        &[("rootfs", "rootfs.tar", &rootfs_bytes("u"))],
    );
    let digest = sha256(&b);
    p.cmd(&["box", "add", b.to_str().unwrap()]).out().status(0);
    // A machine created from it, as a backend records one: its state names
    // the box, the host index names the machine.
    let root = p.path().join("proj");
    let project = envup::state::ProjectState::of(p.home.path(), &root);
    let mut st =
        envup::state::MachineState::new("web", envup::envfile::BackendName::new("jail").unwrap());
    st.apply(envup::state::Event::BeginCreate).unwrap();
    st.apply(envup::state::Event::Created).unwrap();
    st.box_ref = Some(envup::state::machine::BoxRef {
        name: "acme/tiny".into(),
        version: "1.0.0".into(),
        sha256: envup::ident::Digest::parse(&digest).unwrap(),
    });
    project.save(&st).unwrap();
    envup::state::index::Index::new(p.home.path())
        .record(envup::state::index::Entry {
            project: "proj".into(),
            root,
            machine: "web".into(),
            backend: "jail".into(),
            state_dir: project.machine_dir("web"),
        })
        .unwrap();
    let j = p.cmd(&["--json", "box", "list"]).out().status(0).json();
    assert_eq!(j[0]["machines"], serde_json::json!(["proj/web"]));
    p.cmd(&["box", "remove", "acme/tiny"])
        .out()
        .status(1)
        .stderr_has("is used by proj/web");
    p.cmd(&["box", "prune"]).out().status(0);
    assert_eq!(
        store_entries(&p),
        [format!("/{digest}")],
        "prune keeps what machines use"
    );
    p.cmd(&["box", "remove", "acme/tiny", "--force"])
        .out()
        .status(0);
    assert!(store_entries(&p).is_empty());
}

#[test]
fn box_add_json_is_an_event_stream() {
    let p = Project::new();
    let server = Server::start();
    let b = make_box(
        p.path(),
        "acme/tiny",
        "1.0.0",
        &[("rootfs", "rootfs.tar", &rootfs_bytes("j"))],
    );
    let url = server.put("/j.box", std::fs::read(&b).unwrap(), Mode::Normal);
    let out = p.cmd(&["--json", "box", "add", &url]).out().status(0);
    let events: Vec<serde_json::Value> = out
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["event"], "download");
    assert_eq!(events.last().unwrap()["event"], "result");
    assert_eq!(events.last().unwrap()["sha256"], sha256(&b).as_str());
}
