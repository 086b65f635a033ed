//! The Envfile: find it, render it, parse it, check it.

pub mod config;
pub mod diag;
pub mod render;
pub mod schema;
pub mod validate;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use crate::backend::Registry;

pub use crate::backend::BackendName;
pub use config::{Config, Machine, Size};
use diag::{Diagnostic, EnvfileError, KeyPath, Problem, Seg, Spans, did_you_mean};
use schema::RawEnvfile;

pub const FILE_NAME: &str = "Envfile";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no {FILE_NAME} in {} or any directory above it", .0.display())]
    NotFound(PathBuf),
    #[error("cannot read {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{}", .0)]
    Invalid(Box<EnvfileError>),
}

/// The Envfile for a command: `explicit` if given, else the first `Envfile`
/// found walking up from `start`.
pub fn find(start: &Path, explicit: Option<&Path>) -> Result<PathBuf, LoadError> {
    if let Some(p) = explicit {
        let p = if p.is_absolute() {
            p.to_owned()
        } else {
            start.join(p)
        };
        return if p.is_file() {
            Ok(p)
        } else {
            Err(LoadError::Read(
                p,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ))
        };
    }
    let mut dir = Some(start);
    while let Some(d) = dir {
        let candidate = d.join(FILE_NAME);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    Err(LoadError::NotFound(start.to_owned()))
}

/// The span of the key with the most dotted parts (in a table header or
/// before an `=`), if any key has more than a few: where a TOML parser's
/// depth limit is met.
fn deepest_key(text: &str) -> Option<std::ops::Range<usize>> {
    let mut best: Option<(usize, std::ops::Range<usize>)> = None;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let lead = line.len() - line.trim_start().len();
        let body = &line[lead..];
        let end = if body.starts_with('[') {
            body.find(']')
        } else {
            body.find('=')
        }
        .unwrap_or(body.len());
        let key = &body[..end];
        let mut quoted = None;
        let dots = key
            .chars()
            .filter(|c| {
                match (quoted, *c) {
                    (None, '"' | '\'') => quoted = Some(*c),
                    (Some(q), c) if c == q => quoted = None,
                    _ => {}
                }
                quoted.is_none() && *c == '.'
            })
            .count();
        if dots > 8 && best.as_ref().is_none_or(|(d, _)| dots > *d) {
            best = Some((dots, at + lead..at + lead + end.max(1)));
        }
        at += line.len();
    }
    best.map(|(_, r)| r)
}

/// Read, render, parse and validate the Envfile at `path`.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let started = std::time::Instant::now();
    let bytes = read_bounded(path)?;
    let root = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let root = root.canonicalize().unwrap_or(root);
    let path = root.join(path.file_name().unwrap_or(FILE_NAME.as_ref()));
    let source = match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            // Shown where the first bad byte is, like any other mistake.
            let at = e.utf8_error().valid_up_to();
            let bad = e.as_bytes()[at];
            let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let line = text[..at].matches('\n').count() + 1;
            let diag = Diagnostic::in_source(
                &text,
                format!("the Envfile is not UTF-8 text: byte 0x{bad:02x} cannot start a character"),
                Some(line),
                Some(at..at + char::REPLACEMENT_CHARACTER.len_utf8()),
            );
            return Err(LoadError::Invalid(Box::new(EnvfileError::new(
                &path,
                vec![diag],
            ))));
        }
    };
    let config = parse(&source, &path, &root)
        .map_err(|diags| LoadError::Invalid(Box::new(EnvfileError::new(&path, diags))))?;
    tracing::debug!(
        path = %path.display(),
        machines = config.machines.len(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "loaded the Envfile"
    );
    Ok(config)
}

/// The largest Envfile envup reads.
pub const MAX_ENVFILE: u64 = 4 << 20;

/// The Envfile's bytes: a regular file of at most [`MAX_ENVFILE`] bytes.
fn read_bounded(path: &Path) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    let err = |e| LoadError::Read(path.to_owned(), e);
    let f = std::fs::File::open(path).map_err(err)?;
    let meta = f.metadata().map_err(err)?;
    if !meta.is_file() || meta.len() > MAX_ENVFILE {
        return Err(err(std::io::Error::other(format!(
            "an Envfile is a regular file of at most {}",
            crate::host::human_bytes(MAX_ENVFILE)
        ))));
    }
    let mut bytes = Vec::new();
    f.take(MAX_ENVFILE).read_to_end(&mut bytes).map_err(err)?;
    Ok(bytes)
}

/// What the Envfile template sees: `env` (the host environment: the
/// variables whose name and value are text; a template is text) and
/// `project` (`name`, the directory's name; `root`, its path).
fn template_context(root: &Path) -> minijinja::Value {
    let env: std::collections::BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let dir = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    minijinja::context! {
        env => env,
        project => minijinja::context! {
            name => validate::project_name_from_dir(&dir),
            root => root.display().to_string(),
        },
    }
}

/// Parse Envfile text; `path` and `root` say where it lives.
pub fn parse(source: &str, path: &Path, root: &Path) -> Result<Config, Vec<Diagnostic>> {
    parse_with(source, path, root, Registry::builtin())
}

/// The first machine of Envfile text (for the tests of code that takes a
/// machine).
#[cfg(test)]
pub(crate) fn test_machine(src: &str) -> Machine {
    let dir = std::env::temp_dir();
    let c = parse(src, &dir.join("Envfile"), &dir).unwrap();
    c.machines[0].clone()
}

/// Parse Envfile text for the backends of `registry`.
pub fn parse_with(
    source: &str,
    path: &Path,
    root: &Path,
    registry: &Registry,
) -> Result<Config, Vec<Diagnostic>> {
    let rendered = render::render(source, &template_context(root))
        .map_err(|e| vec![Diagnostic::in_source(source, e.message, e.line, e.range)])?;
    let locate = |p: Problem| Diagnostic::locate(source, &rendered, p);

    let mut table = DeTable::parse(&rendered.text).map_err(|e| {
        vec![locate(Problem {
            message: format!("TOML syntax error: {}", e.message()),
            // The parser's limit on a key's depth comes without a place:
            // the deepest key is it.
            span: e.span().or_else(|| deepest_key(&rendered.text)),
            help: None,
        })]
    })?;
    let whole = table.clone();
    let spans = Spans::new(&whole);
    let names = registry.names();
    let backend_tables = take_backend_tables(table.get_mut(), &names);
    let mut raw = RawEnvfile::deserialize(toml::de::Deserializer::from(table))
        .map_err(|e| vec![locate(explain(e.message(), e.span(), &spans, &names))])?;
    // Each backend checks its own tables; the rest of the Envfile is
    // checked whatever they say, so that every problem shows at once.
    let mut problems = Vec::new();
    for (machine, backend, value) in backend_tables {
        let owner = registry.find(&backend).expect("taken by registered name");
        let checked = owner
            .check_options(toml::de::ValueDeserializer::from(value.clone()))
            .and_then(|()| toml::Table::deserialize(toml::de::ValueDeserializer::from(value)));
        match checked {
            Ok(t) => {
                let m = match &machine {
                    Some(name) => raw.machines.get_mut(name),
                    None => Some(&mut raw.defaults),
                };
                if let Some(m) = m {
                    m.backend_tables.insert(backend, t);
                }
            }
            Err(e) => problems.push(explain(e.message(), e.span(), &spans, &names)),
        }
    }
    match validate::validate(&raw, &spans, path, root, registry) {
        Ok(config) if problems.is_empty() => Ok(config),
        Ok(_) => Err(problems.into_iter().map(locate).collect()),
        Err(more) => {
            problems.extend(more);
            Err(problems.into_iter().map(locate).collect())
        }
    }
}

/// Take each backend's table (a key named after a backend) out of
/// `[defaults]` and every `[machines.NAME]`: those tables belong to their
/// backends, which check them. Each comes with its machine's name (None
/// for `[defaults]`) and its backend's name.
fn take_backend_tables<'i>(
    top: &mut DeTable<'i>,
    names: &[&str],
) -> Vec<(Option<String>, String, toml::Spanned<DeValue<'i>>)> {
    fn take<'i>(
        t: &mut DeTable<'i>,
        names: &[&str],
        machine: Option<String>,
        out: &mut Vec<(Option<String>, String, toml::Spanned<DeValue<'i>>)>,
    ) {
        let keys: Vec<_> = t
            .keys()
            .filter(|k| names.contains(&k.get_ref().as_ref()))
            .cloned()
            .collect();
        for k in keys {
            if let Some(v) = t.remove(&k) {
                out.push((machine.clone(), k.into_inner().into_owned(), v));
            }
        }
    }
    let mut out = Vec::new();
    for (k, v) in top.iter_mut() {
        let DeValue::Table(t) = v.get_mut() else {
            continue;
        };
        match k.get_ref().as_ref() {
            "defaults" => take(t, names, None, &mut out),
            "machines" => {
                for (name, m) in t.iter_mut() {
                    if let DeValue::Table(m) = m.get_mut() {
                        take(m, names, Some(name.get_ref().to_string()), &mut out);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Turn serde's wording into the Envfile's: keys, tables, arrays, and a
/// suggestion for a misspelt key or value.
fn explain(
    message: &str,
    span: Option<std::ops::Range<usize>>,
    spans: &Spans<'_>,
    backends: &[&str],
) -> Problem {
    let at = span
        .as_ref()
        .map(|s| spans.path_at(s.start))
        .unwrap_or_default();
    let (message, help) = if let Some(rest) = message.strip_prefix("unknown field ") {
        let (word, mut expected) = split_expected(rest);
        let table = KeyPath(at.0[..at.0.len().saturating_sub(1)].to_vec());
        // A machine's table (or `[defaults]`) also takes each backend's.
        let machine_level = matches!(
            &table.0[..],
            [Seg::Key(d)] if d == "defaults"
        ) || matches!(&table.0[..], [Seg::Key(m), Seg::Key(_)] if m == "machines");
        if machine_level {
            expected.extend(backends.iter().map(|b| b.to_string()));
        }
        let place = if table.0.is_empty() {
            "at the top level".to_owned()
        } else {
            format!("in `{table}`")
        };
        (
            format!("unknown key `{word}` {place}"),
            Some(suggest(&word, &expected, "valid keys here")),
        )
    } else if let Some(rest) = message.strip_prefix("unknown variant ") {
        let (word, expected) = split_expected(rest);
        let key = match at.0.last() {
            Some(Seg::Key(k)) => format!(" for `{k}`"),
            _ => String::new(),
        };
        (
            format!("unknown value `{word}`{key}"),
            Some(suggest(&word, &expected, "the values are")),
        )
    } else if let Some(rest) = message.strip_prefix("invalid type: ") {
        let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, "?"));
        let key = if at.0.is_empty() {
            String::new()
        } else {
            format!(" for `{at}`")
        };
        (
            format!(
                "wrong type{key}: expected {}, found {}",
                type_words(expected),
                type_words(found)
            ),
            None,
        )
    } else if let Some(rest) = message.strip_prefix("missing field ") {
        let place = if at.0.is_empty() {
            String::new()
        } else {
            format!(" in `{at}`")
        };
        (format!("missing key {rest}{place}"), None)
    } else {
        (message.to_owned(), None)
    };
    Problem {
        message,
        span,
        help,
    }
}

/// `` `word`, expected one of `a`, `b` `` → ("word", ["a", "b"]).
fn split_expected(rest: &str) -> (String, Vec<String>) {
    let ticks = |s: &str| -> Vec<String> {
        s.split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, w)| w.to_owned())
            .collect()
    };
    match rest.split_once(", ") {
        Some((word, expected)) => (
            ticks(word).into_iter().next().unwrap_or_default(),
            ticks(expected),
        ),
        None => (ticks(rest).into_iter().next().unwrap_or_default(), vec![]),
    }
}

fn suggest(word: &str, expected: &[String], list_label: &str) -> String {
    match did_you_mean(word, expected.iter().map(String::as_str)) {
        Some(s) => format!("did you mean `{s}`?"),
        None if expected.is_empty() => "this table takes no keys".to_owned(),
        None => format!("{list_label}: {}", expected.join(", ")),
    }
}

fn type_words(serde_words: &str) -> String {
    let w = serde_words.trim();
    let (head, tail) = w.split_once(' ').unwrap_or((w, ""));
    let base = match head {
        "i64" | "u64" | "i32" | "u32" | "u16" | "usize" | "integer" => "an integer",
        "f64" | "f32" | "floating" => "a float",
        "bool" | "boolean" => "a boolean",
        "string" | "str" => "a string",
        "sequence" => "an array",
        "map" | "struct" => "a table",
        "a" | "an" => {
            return match w {
                "a sequence" => "an array".to_owned(),
                "a map" => "a table".to_owned(),
                other => other.to_owned(),
            };
        }
        _ => return w.to_owned(),
    };
    let value = tail.trim_start_matches("point ").trim();
    if value.is_empty() || head == "struct" {
        base.to_owned()
    } else {
        format!("{base} ({})", value.trim_matches('`'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(src: &str) -> Result<Config, Vec<Diagnostic>> {
        let dir = std::env::temp_dir();
        parse(src, &dir.join("Envfile"), &dir)
    }

    fn first_error(src: &str) -> Diagnostic {
        check(src).unwrap_err().remove(0)
    }

    #[test]
    fn defaults_merge_into_machines() {
        let c = check(
            r#"
[defaults]
box = "debian/bookworm"
memory = "2GiB"
env = { A = "1", B = "2" }
provision = [{ shell = "echo base" }]
[machines.web]
memory = "512MiB"
env = { B = "3" }
provision = [{ shell = "echo web", name = "web" }]
[machines.db]
backend = "container"
"#,
        )
        .unwrap();
        let web = &c.machines["web"];
        assert_eq!(web.box_, "debian/bookworm");
        assert_eq!(web.memory, Size(512 << 20));
        assert_eq!(web.env["A"], "1");
        assert_eq!(web.env["B"], "3");
        assert_eq!(web.provisioners.len(), 2);
        assert_eq!(web.provisioners[0].name, "shell-1");
        assert_eq!(web.provisioners[1].name, "web");
        let db = &c.machines["db"];
        assert_eq!(db.memory, Size(2 << 30));
        assert_eq!(db.backend, "container");
        assert_eq!(c.machine_names().collect::<Vec<_>>(), ["web", "db"]);
    }

    #[test]
    fn unknown_key_suggests() {
        let d = first_error("[machines.web]\nbox = \"x\"\nmemroy = \"1GiB\"\n");
        assert_eq!(d.line, Some(3));
        assert_eq!(d.column, Some(1));
        assert!(
            d.message.contains("unknown key `memroy` in `machines.web`"),
            "{}",
            d.message
        );
        assert_eq!(d.help.as_deref(), Some("did you mean `memory`?"));
    }

    #[test]
    fn wrong_type_names_key() {
        let d = first_error("[machines.web]\nbox = \"x\"\ncpus = \"two\"\n");
        assert_eq!(d.line, Some(3));
        assert!(
            d.message.contains(
                "wrong type for `machines.web.cpus`: expected an integer, found a string"
            ),
            "{}",
            d.message
        );
    }

    #[test]
    fn errors_in_loops_point_at_the_written_line() {
        let src = "{% for i in range(2) %}\n[machines.n{{ i }}]\nbox = \"x\"\nmemory = \"{{ i }}\"\n{% endfor %}\n";
        let d = first_error(src);
        assert_eq!(d.line, Some(4), "{d:?}");
        assert!(d.message.contains("memory"));
    }

    #[test]
    fn several_problems_reported_together() {
        let errs = check("[machines.a]\nbox = \"x\"\ncpus = 0\nmemory = \"1\"\n").unwrap_err();
        assert_eq!(errs.len(), 2);
    }

    #[test]
    fn cycle_is_reported() {
        let d = first_error(
            "[machines.a]\nbox = \"x\"\ndepends_on = [\"b\"]\n[machines.b]\nbox = \"x\"\ndepends_on = [\"a\"]\n",
        );
        assert!(d.message.contains("a → b → a"), "{}", d.message);
        assert_eq!(d.line, Some(3));
    }
}
