use std::collections::HashMap;

use serde_json::json;

use crate::boxes::resolve::Resolver;
use crate::boxes::store::Naming;
use crate::boxes::{Store, StoredBox};
use crate::cli::{App, BoxCommand, CliError, ExitCode};
use crate::state::index::Index;
use crate::state::{MachineState, envup_home, read_json};
use crate::ui::{print_json, style};

/// Digest → the machines (`project/machine`) created from that box.
/// Remove a box from the store, and what backends made of it (engine images).
fn remove_box(
    app: &App,
    store: &crate::boxes::Store,
    b: &crate::boxes::StoredBox,
) -> Result<(), CliError> {
    store.remove(b)?;
    if !app.mode.quiet {
        anstream::println!("removed {}", describe(b));
    }
    engine_images(
        app,
        crate::backend::Gone::These(std::slice::from_ref(&b.digest)),
    );
    Ok(())
}

/// What the backends made of boxes that are gone goes too (see
/// `Backend::boxes_removed`); what has to stay is said.
fn engine_images(app: &App, gone: crate::backend::Gone<'_>) {
    for line in crate::backend::Registry::builtin().boxes_removed(gone) {
        if line.starts_with("kept") {
            anstream::eprintln!("note: {line}");
        } else if !app.mode.quiet {
            anstream::println!("{line}");
        }
    }
}

pub(crate) fn boxes_in_use() -> Result<HashMap<String, Vec<String>>, CliError> {
    let mut used: HashMap<String, Vec<String>> = HashMap::new();
    for e in Index::new(&envup_home()?).entries()? {
        if let Ok(Some(st)) = read_json::<MachineState>(&e.state_dir.join("state.json"))
            && let Some(b) = st.box_ref
        {
            used.entry(b.sha256.to_string())
                .or_default()
                .push(format!("{}/{}", e.project, e.machine));
        }
    }
    Ok(used)
}

fn store() -> Result<Store, CliError> {
    Ok(Store::new(&envup_home()?))
}

fn size_on_disk(b: &StoredBox) -> u64 {
    b.manifest.total_size()
}

fn describe(b: &StoredBox) -> String {
    let backends: Vec<&str> = built_in_backends(b);
    format!(
        "{} {} (sha256:{}…, serves {})",
        b.meta.name,
        b.meta.version,
        &b.digest[..12],
        backends.join(", ")
    )
}

pub fn run(app: &App, cmd: &BoxCommand) -> Result<ExitCode, CliError> {
    match cmd {
        BoxCommand::Add {
            source,
            checksum,
            name,
            version,
        } => add(app, source, checksum.as_deref(), name, version),
        BoxCommand::List => list(app),
        BoxCommand::Remove {
            name,
            version,
            force,
        } => remove(app, name, version, *force),
        BoxCommand::Prune => prune(app),
        BoxCommand::Verify { name } => verify(app, name),
        BoxCommand::Build { recipe, output } => build(app, recipe, output),
    }
}

/// `box add`: a box file, URL, catalog name or catalog URL into the store.
fn add(
    app: &App,
    source: &std::ffi::OsStr,
    checksum: Option<&str>,
    name: &Option<String>,
    version: &Option<String>,
) -> Result<ExitCode, CliError> {
    let store = store()?;
    let reporter = app.reporter();
    let resolver = Resolver {
        store: &store,
        root: &app.cwd,
        reporter: &*reporter,
        backends: crate::backend::Registry::builtin(),
    };
    let naming = Naming {
        name: name.clone(),
        version: version.clone(),
    };
    let b = resolver.add(source, checksum, &naming)?;
    if app.mode.json {
        // The last event of the stream (downloads come before it).
        let result = json!({ "event": "result", "ok": true, "box": b.meta, "sha256": b.digest });
        anstream::println!("{result}");
    } else if !app.mode.quiet {
        anstream::println!("added {}", describe(&b));
    }
    Ok(ExitCode::SUCCESS)
}

/// `box list`: the stored boxes, their backends and the machines using them.
fn list(app: &App) -> Result<ExitCode, CliError> {
    let boxes = store()?.list()?;
    let used = boxes_in_use()?;
    if app.mode.json {
        let v: Vec<_> = boxes
            .iter()
            .map(|b| json!({
                "name": b.meta.name, "version": b.meta.version, "sha256": b.digest,
                "size": size_on_disk(b), "backends": built_in_backends(b),
                "source": b.meta.source, "machines": used.get(b.digest.as_str()).cloned().unwrap_or_default(),
            }))
            .collect();
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    if boxes.is_empty() {
        anstream::println!("no boxes stored; `envup box add` adds one");
        return Ok(ExitCode::SUCCESS);
    }
    let bold = style::BOLD;
    let wn = boxes
        .iter()
        .map(|b| b.meta.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let wv = boxes
        .iter()
        .map(|b| b.meta.version.len())
        .max()
        .unwrap_or(7)
        .max(7);
    anstream::println!(
        "{bold}{:<wn$}  {:<wv$}  {:<12}  {:>10}  {:<21}  machines{bold:#}",
        "name",
        "version",
        "sha256",
        "size",
        "backends"
    );
    for b in &boxes {
        let backends: Vec<&str> = built_in_backends(b);
        let machines = used
            .get(b.digest.as_str())
            .map(|m| m.join(", "))
            .unwrap_or_else(|| "-".into());
        anstream::println!(
            "{:<wn$}  {:<wv$}  {:<12}  {:>10}  {:<21}  {machines}",
            b.meta.name,
            b.meta.version,
            &b.digest[..12],
            crate::ui::human_bytes(size_on_disk(b)),
            backends.join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `box remove`: a box (every version, or one), unless machines use it.
fn remove(
    app: &App,
    name: &String,
    version: &Option<String>,
    force: bool,
) -> Result<ExitCode, CliError> {
    let store = store()?;
    let matches: Vec<StoredBox> = store
        .list()?
        .into_iter()
        .filter(|b| &b.meta.name == name && version.as_ref().is_none_or(|v| &b.meta.version == v))
        .collect();
    if matches.is_empty() {
        let what = version
            .as_ref()
            .map(|v| format!("`{name}` {v}"))
            .unwrap_or_else(|| format!("`{name}`"));
        return Err(CliError::Failed(format!(
            "no stored box {what}; `envup box list` shows what is stored"
        )));
    }
    let used = boxes_in_use()?;
    for b in &matches {
        if let Some(machines) = used.get(b.digest.as_str())
            && !force
        {
            return Err(CliError::Failed(format!(
                "{} is used by {}; destroy them first, or pass --force",
                describe(b),
                machines.join(", ")
            )));
        }
    }
    for b in &matches {
        remove_box(app, &store, b)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `box prune`: every version but each name's newest that no machine uses,
/// and leftover downloads.
fn prune(app: &App) -> Result<ExitCode, CliError> {
    let store = store()?;
    let used = boxes_in_use()?;
    let mut newest: Vec<&str> = Vec::new();
    let boxes = store.list()?;
    let mut removed = 0;
    for b in &boxes {
        // list() puts each name's newest version first.
        let keep_newest = !newest.contains(&b.meta.name.as_str());
        if keep_newest {
            newest.push(&b.meta.name);
        }
        if keep_newest || used.contains_key(b.digest.as_str()) {
            continue;
        }
        remove_box(app, &store, b)?;
        removed += 1;
    }
    let stored: Vec<crate::ident::Digest> = store.list()?.into_iter().map(|b| b.digest).collect();
    engine_images(app, crate::backend::Gone::AllBut(&stored));
    let leftovers = store.clean_leftovers()?;
    if !app.mode.quiet {
        anstream::println!(
            "pruned {removed} box{} and {leftovers} leftover download{}",
            if removed == 1 { "" } else { "es" },
            if leftovers == 1 { "" } else { "s" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `box verify`: every artifact hashed again against its manifest.
fn verify(app: &App, name: &Option<String>) -> Result<ExitCode, CliError> {
    let store = store()?;
    let boxes: Vec<StoredBox> = store
        .list()?
        .into_iter()
        .filter(|b| name.as_ref().is_none_or(|n| &b.meta.name == n))
        .collect();
    if boxes.is_empty() {
        return Err(CliError::Failed(match name {
            Some(n) => format!("no stored box `{n}`"),
            None => "no boxes stored".into(),
        }));
    }
    let mut bad = 0;
    let (ok, err) = (style::OK, style::ERROR);
    for b in &boxes {
        let wrong = store.verify(b)?;
        if wrong.is_empty() {
            if !app.mode.quiet {
                anstream::println!("{ok}ok{ok:#}       {}", describe(b));
            }
        } else {
            bad += 1;
            for (artifact, actual) in wrong {
                let expected = &b.manifest.artifacts[&artifact].sha256;
                anstream::println!(
                    "{err}damaged{err:#}  {}: `{artifact}` should hash to {expected}, but hashes to {actual}",
                    describe(b)
                );
            }
        }
    }
    // Not boxes, and no box is wrong for them; but they hold disk.
    let warn = style::WARN;
    for p in store.leftovers() {
        anstream::println!(
            "{warn}partial{warn:#}  {}: left by an add or unpack that was cut short; \
             `envup box prune` removes it",
            p.display()
        );
    }
    if bad > 0 {
        return Err(CliError::Failed(format!(
            "{bad} stored box{} damaged; `envup box remove` it and add it again",
            if bad == 1 { " is" } else { "es are" }
        )));
    }
    Ok(ExitCode::SUCCESS)
}

/// `box build`: a recipe built into a box file, and stored.
fn build(
    app: &App,
    recipe: &str,
    output: &Option<std::path::PathBuf>,
) -> Result<ExitCode, CliError> {
    let r = crate::boxes::build::find_recipe(recipe)?;
    let out = output.clone().unwrap_or_else(|| {
        app.cwd
            .join(format!("{}-{}.box", r.name.replace('/', "-"), r.version))
    });
    let reporter = app.reporter();
    let started = std::time::Instant::now();
    let (_, digest) = crate::boxes::build::build(&r, &out, &*reporter)?;
    let stored = store()?.add_file(
        &out,
        Some(&digest),
        &Naming::default(),
        &out.display().to_string(),
    )?;
    if !app.mode.quiet {
        anstream::println!(
            "built {} in {:.0}s: {} ({}); stored as {}",
            r.name,
            started.elapsed().as_secs_f64(),
            out.display(),
            crate::ui::human_bytes(std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0)),
            describe(&stored)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The backends built into envup that run box `b`. Plugins are not asked
/// (a command runs only the plugin it needs; `envup plugin list` shows
/// what each plugin runs).
fn built_in_backends(b: &crate::boxes::StoredBox) -> Vec<&'static str> {
    crate::backend::Registry::builtin()
        .built_ins()
        .filter(|be| b.manifest.serves(*be))
        .map(|be| be.name())
        .collect()
}
