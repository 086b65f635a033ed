use crate::cli::{App, CliError, ExitCode, InitArgs};
use crate::envfile::{self, FILE_NAME};

use crate::state::write_atomic;

/// An Envfile template: its name, what it is, its text, and the box it
/// uses unless told otherwise. The backend it uses unless told otherwise is
/// in its text: `@BACKEND:name@`.
struct Template {
    name: &'static str,
    about: &'static str,
    text: &'static str,
    default_box: &'static str,
}

const TEMPLATES: &[Template] = &[
    Template {
        name: "single",
        about: "one machine",
        text: include_str!("../../../templates/envfile/single.Envfile"),
        default_box: "tiny",
    },
    Template {
        name: "web-db",
        about: "a web server and its database",
        text: include_str!("../../../templates/envfile/web-db.Envfile"),
        default_box: "debian/bookworm",
    },
    Template {
        name: "ci",
        about: "a throwaway machine for CI",
        text: include_str!("../../../templates/envfile/ci.Envfile"),
        default_box: "tiny",
    },
];

pub fn run(app: &App, args: &InitArgs) -> Result<ExitCode, CliError> {
    let Some(t) = TEMPLATES.iter().find(|t| t.name == args.template) else {
        let list: Vec<String> = TEMPLATES
            .iter()
            .map(|t| format!("{} ({})", t.name, t.about))
            .collect();
        return Err(CliError::Usage(format!(
            "no template named `{}`; the templates are: {}",
            args.template,
            list.join(", ")
        )));
    };
    let (before, default_backend, after) = backend_slot(t.text);
    let registry = crate::backend::Registry::builtin();
    let backend = match &args.backend {
        Some(b) if registry.find(b).is_some() => b.as_str(),
        Some(b) => {
            return Err(CliError::Usage(format!(
                "unknown backend `{b}`; the backends are {}",
                registry.names().join(", ")
            )));
        }
        None => default_backend,
    };
    let box_ = args.box_.as_deref().unwrap_or(t.default_box);
    if box_.trim().is_empty() {
        return Err(CliError::Usage(
            "--box needs a box name, path or URL".into(),
        ));
    }
    let text = format!("{before}{}{after}", toml::Value::String(backend.to_owned()))
        .replace("@BOX@", &toml::Value::String(box_.to_owned()).to_string());

    let path = app.cwd.join(FILE_NAME);
    if path.exists() && !args.force {
        return Err(CliError::Failed(format!(
            "{} already exists; pass --force to overwrite it",
            path.display()
        )));
    }
    // The template must make a valid Envfile here before anything is written.
    envfile::parse(&text, &path, &app.cwd).map_err(|d| {
        CliError::Failed(format!(
            "template `{}` does not validate: {}",
            t.name, d[0].message
        ))
    })?;
    write_atomic(&path, text.as_bytes())?;
    if !app.mode.quiet {
        anstream::println!(
            "wrote {} from template `{}` ({}); next: `envup up`",
            path.display(),
            t.name,
            t.about
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A template's text around its `@BACKEND:name@` slot, and the name.
fn backend_slot(text: &str) -> (&str, &str, &str) {
    let (before, rest) = text
        .split_once("@BACKEND:")
        .expect("every template has a backend slot");
    let (name, after) = rest.split_once('@').expect("the slot ends with @");
    (before, name, after)
}
