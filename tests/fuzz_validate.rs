//! A property test over the whole Envfile path (render, parse, validate):
//! whatever the text, envup answers with a Config or with located errors,
//! never a panic, and quickly. The inputs are Envfiles built from every key
//! envup knows, with values of every TOML type and the awkward ones
//! (overflowing numbers and durations, `..`, control characters, template
//! syntax), then damaged at random.
//!
//! `PROPTEST_CASES=N cargo test --release --test fuzz_validate` runs a
//! longer search than the suite's default.

use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;

const MACHINE_KEYS: &[&str] = &[
    "box",
    "box_version",
    "backend",
    "cpus",
    "memory",
    "disk",
    "hostname",
    "depends_on",
    "autostart",
    "primary",
    "forward",
    "share",
    "env",
    "boot_timeout",
    "provision",
    "qemu",
    "container",
    "jail",
    "memroy",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("..".to_owned()),
        Just("/".to_owned()),
        Just("/srv/../../etc".to_owned()),
        Just("tiny".to_owned()),
        Just("jail".to_owned()),
        Just("qemu".to_owned()),
        Just("container".to_owned()),
        Just("script.sh".to_owned()),
        Just("dir".to_owned()),
        Just("/dev/zero".to_owned()),
        Just("18446744073709551615s1s".to_owned()),
        Just("9999999999999999h".to_owned()),
        Just("1m30s".to_owned()),
        Just("1.5GiB".to_owned()),
        Just("1e308GiB".to_owned()),
        Just("-1MiB".to_owned()),
        Just("NaNKiB".to_owned()),
        Just("{{ env.HOME }}".to_owned()),
        Just("{{ [1] * 99999999 }}".to_owned()),
        Just("{% for i in range(3) %}x{% endfor %}".to_owned()),
        Just("a\\nb".to_owned()),
        Just("\\u0000\\u001b[2J".to_owned()),
        "[a-z0-9./_-]{0,12}",
        any::<String>().prop_map(|s| s.escape_default().to_string()),
    ]
}

fn value(depth: u32) -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        word().prop_map(|w| format!("\"{w}\"")),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("18446744073709551616".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    let inner = value(depth - 1);
    prop_oneof![
        3 => leaf,
        1 => prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
        1 => prop::collection::vec(
            (
                prop::sample::select(&[
                    "guest", "host", "host_ip", "protocol", "shell", "script", "file", "to",
                    "args", "run", "privileged", "template", "name", "read_only", "engine",
                    "accel", "network", "env",
                ][..]),
                inner.clone(),
            ),
            0..4,
        )
        .prop_map(|kv| {
            let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
            format!("{{ {} }}", body.join(", "))
        }),
        1 => prop::collection::vec(inner, 0..3).prop_map(|v| {
            let tables: Vec<String> = v.into_iter().map(|x| format!("{{ shell = {x} }}")).collect();
            format!("[{}]", tables.join(", "))
        }),
    ]
    .boxed()
}

fn machine() -> impl Strategy<Value = String> {
    (
        prop::sample::select(&["web", "db", "a", "A b", "x..y", "defaults"][..]),
        prop::collection::vec((prop::sample::select(MACHINE_KEYS), value(2)), 0..8),
    )
        .prop_map(|(name, kv)| {
            let mut s = format!("[machines.\"{name}\"]\n");
            for (k, v) in kv {
                s.push_str(&format!("{k} = {v}\n"));
            }
            s
        })
}

fn envfile() -> impl Strategy<Value = String> {
    (
        prop::option::of(value(1).prop_map(|v| format!("[project]\nname = {v}\n"))),
        prop::collection::vec(machine(), 0..4),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
    )
        .prop_map(|(project, machines, damage)| {
            let mut s = project.unwrap_or_default();
            for m in machines {
                s.push_str(&m);
            }
            // Damage: a byte changed here and there (kept valid UTF-8).
            let mut bytes = s.into_bytes();
            for (i, b) in damage {
                if !bytes.is_empty() {
                    let at = i.index(bytes.len());
                    bytes[at] = b & 0x7f;
                }
            }
            String::from_utf8(bytes).unwrap_or_default()
        })
}

fn project() -> &'static tempfile::TempDir {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("script.sh"), "echo hi\n").unwrap();
        std::fs::create_dir(d.path().join("dir")).unwrap();
        d
    })
}

fn check(text: &str) -> Result<(), TestCaseError> {
    let root = project().path();
    let started = Instant::now();
    let _ = envup::envfile::parse(text, &root.join("Envfile"), root);
    prop_assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?} for:\n{text}",
        started.elapsed()
    );
    Ok(())
}

proptest! {
    #[test]
    fn validate_never_panics_on_envfiles(text in envfile()) {
        check(&text)?;
    }

    #[test]
    fn validate_never_panics_on_any_text(text in any::<String>()) {
        check(&text)?;
    }
}

#[test]
fn the_known_panics_stay_fixed() {
    let root = project().path();
    for text in [
        "[machines.a]\nbox = \"t\"\nboot_timeout = \"18446744073709551615s1s\"\n",
        "[machines.a]\nbox = \"t\"\nboot_timeout = \"9999999999999999h\"\n",
        "[machines.a]\nbox = \"t\"\nmemory = \"1e308GiB\"\n",
        // A template error whose span ends inside a character.
        "{{\u{1cf50}",
    ] {
        let r = envup::envfile::parse(text, Path::new("/x/Envfile"), root);
        assert!(r.is_err(), "{text}");
    }
}
