//! A corpus of broken Envfiles under tests/malformed/. Each file starts with
//! comment lines that say what `envup validate` must do with it:
//!
//! ```text
//! # exit: 2          the exit code
//! # at: 7:10         the place the error names (`Envfile:7:10`); optional
//! # expect: words    text the error must contain; one line per phrase
//! ```

mod common;

use common::Project;

struct Case {
    name: String,
    text: String,
    exit: i32,
    at: Option<String>,
    expect: Vec<String>,
}

fn cases() -> Vec<Case> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/malformed");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "Envfile") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut case = Case {
            name: path.file_stem().unwrap().to_string_lossy().into_owned(),
            text: text.clone(),
            exit: -1,
            at: None,
            expect: Vec::new(),
        };
        for line in text.lines().take_while(|l| l.starts_with("# ")) {
            let (key, value) = line[2..].split_once(": ").unwrap();
            match key {
                "exit" => case.exit = value.parse().unwrap(),
                "at" => case.at = Some(value.to_owned()),
                "expect" => case.expect.push(value.to_owned()),
                other => panic!("{}: unknown header `{other}`", case.name),
            }
        }
        assert_ne!(case.exit, -1, "{}: no `# exit:` header", case.name);
        out.push(case);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[test]
fn corpus_is_large_enough() {
    assert!(cases().len() >= 30, "the corpus needs at least 30 cases");
}

#[test]
fn each_malformed_envfile_fails_as_described() {
    let mut failures = Vec::new();
    for case in cases() {
        let p = Project::with_envfile(&case.text);
        let out = p.cmd(&["validate"]).out();
        let stderr = out.stderr();
        let mut problems = Vec::new();
        if out.code() != case.exit {
            problems.push(format!("exit {} (want {})", out.code(), case.exit));
        }
        if let Some(at) = &case.at {
            let place = format!("Envfile:{at}");
            let exact = stderr.lines().any(|l| {
                l.trim_start()
                    .strip_prefix("--> ")
                    .is_some_and(|rest| rest == place || rest.ends_with(&format!("/{place}")))
            });
            if !exact {
                problems.push(format!("no `--> {place}`"));
            }
        }
        for phrase in &case.expect {
            if !stderr.contains(phrase.as_str()) {
                problems.push(format!("missing {phrase:?}"));
            }
        }
        if !out.stdout().is_empty() {
            problems.push("printed on stdout".into());
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}\n{stderr}", case.name, problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}
