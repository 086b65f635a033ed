//! `envup-jail-supervisor DIR ID`: keeps one jail (started by `envup up`,
//! not by people), with the config envup writes on its standard input. A
//! binary of its own so that each running jail costs little memory: it
//! links none of envup's network, SSH or archive code.

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), Some(id)) = (args.next(), args.next()) else {
        eprintln!("usage: envup-jail-supervisor DIR ID < CONFIG (started by `envup up`)");
        std::process::exit(2);
    };
    let id = id.to_string_lossy().into_owned();
    std::process::exit(envup::backend::jail::supervise(
        std::path::Path::new(&dir),
        &id,
    ));
}
