//! Fault injection for the fault tests: with `ENVUP_FAULT=POINT` in its
//! environment, envup kills itself with SIGKILL when it reaches the named
//! point, as a `kill -9` from outside would at that instant. The points
//! are the boundaries between the steps that make or change a machine;
//! `docs/architecture.md` lists them. Without the variable a point costs a
//! lookup in the environment.

/// The variable that names the point to die at.
pub const VAR: &str = "ENVUP_FAULT";

/// Die here if `ENVUP_FAULT` names `name`.
pub fn point(name: &str) {
    if std::env::var_os(VAR).is_some_and(|v| v == name) {
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
        // SIGKILL cannot be caught; this is never reached.
        std::process::abort();
    }
}
