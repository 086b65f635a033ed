//! `envup-jail-supervisor DIR`: keeps one jail (started by `envup up`, not
//! by people). A binary of its own so that each running jail costs little
//! memory: it links none of envup's network, SSH or archive code.

fn main() {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: envup-jail-supervisor DIR (started by `envup up`)");
        std::process::exit(2);
    };
    std::process::exit(envup::backend::jail::supervise(std::path::Path::new(&dir)));
}
