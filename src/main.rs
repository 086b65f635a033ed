fn main() -> std::process::ExitCode {
    envup::cli::main()
}
