//! Harness for end-to-end tests and benchmarks: finds the built binaries, starts them on
//! port 0 with JSON logs, learns their address from the log, runs real `grpcurl`.

pub mod plot;
pub mod report;
pub mod runs;
pub mod stack;
pub mod stats;
pub mod tools;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

/// `target/<profile>/<name>`, next to the running test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo test --workspace` (it builds every binary) or `cargo build -p {name}` first",
        path.display()
    );
    path
}

/// A path as the `&str` a command line takes.
pub fn path_str(p: &Path) -> anyhow::Result<&str> {
    use anyhow::Context;
    p.to_str()
        .with_context(|| format!("path is not UTF-8: {}", p.display()))
}

/// The flags a benchmarked server starts with: a free port, its data directory, its
/// database and the JWT secret its tokens are signed with.
pub fn server_flags<'a>(
    data_dir: &'a Path,
    database_url: &'a str,
    jwt_secret_file: &'a Path,
) -> anyhow::Result<Vec<&'a str>> {
    Ok(vec![
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        path_str(data_dir)?,
        "--database-url",
        database_url,
        "--jwt-secret-file",
        path_str(jwt_secret_file)?,
    ])
}

/// A running service process; killed on drop.
pub struct Service {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Service {
    /// Starts `bin` with `args` and `env`; waits for its "gRPC listening" line.
    pub fn start(
        bin: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env("CAPSTAN_LOG_FORMAT", "json")
            .env_remove("CAPSTAN_DATABASE_URL")
            .env_remove("CAPSTAN_LISTEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd, bin, log)
    }

    /// Starts `bin` with no flags and only `env` (plus PATH): exactly what a manifest sets.
    pub fn start_clean_env(bin: &Path, env: &[(&str, &str)], log: PathBuf) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd, bin, log)
    }

    fn spawn(mut cmd: Command, bin: &Path, log: PathBuf) -> anyhow::Result<Self> {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        let log_path = log.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&log_path).ok();
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = file.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                if !sent {
                    if let Some(addr) = listen_addr(&line) {
                        let _ = tx.send(addr);
                        sent = true;
                    }
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => Ok(Self { child, addr, log }),
            Err(_) => {
                let _ = child.kill();
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                anyhow::bail!(
                    "{} did not report a listen address in 60 s; log:\n{text}",
                    bin.display()
                )
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `within` for exit; returns the exit status.
    pub fn terminate(&mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?
            .success();
        anyhow::ensure!(ok, "kill -TERM failed");
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "process did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn listen_addr(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("message")?.as_str()? != "gRPC listening" {
        return None;
    }
    v.get("listen")?.as_str()?.parse().ok()
}

/// The `grpcurl` binary; panics, saying how to get it, when it is missing.
pub fn grpcurl() -> PathBuf {
    tools::require("grpcurl")
}

/// A finished command's stdout, then its stderr, as text: what a failure message shows.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs grpcurl with `args`; `stdin` feeds `-d @`.
pub fn run_grpcurl(grpcurl: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(grpcurl);
    cmd.args(args).stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn grpcurl");
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write grpcurl stdin");
    }
    child.wait_with_output().expect("grpcurl output")
}

/// The registry a benchmarked pipeline talks to: `registry_bin` on `database_url`, or on a
/// SQLite file in `dir` without one, and the file holding the service token the pipeline
/// calls it with.
pub fn pipeline_registry(
    registry_bin: &Path,
    dir: &Path,
    secret: &[u8],
    secret_path: &Path,
    env: &[(&str, &str)],
    database_url: Option<&str>,
) -> anyhow::Result<(Service, PathBuf)> {
    use capstan_server::auth::{issue_hs256, Role};
    let registry_db = match database_url {
        Some(url) => url.to_owned(),
        None => format!("sqlite://{}?mode=rwc", dir.join("registry.db").display()),
    };
    let registry = Service::start(
        registry_bin,
        &server_flags(&dir.join("registry"), &registry_db, secret_path)?,
        env,
        dir.join("registry.log"),
    )?;
    let token_file = dir.join("registry.token");
    std::fs::write(
        &token_file,
        issue_hs256(secret, "pipeline-svc", Role::Service, 24 * 3600)?,
    )?;
    Ok((registry, token_file))
}

/// The databases a benchmark runs on (`--backend sqlite|postgres|both`).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backends {
    Sqlite,
    Postgres,
    Both,
}

impl Backends {
    pub fn list(self) -> Vec<capstan_server::db::Backend> {
        use capstan_server::db::Backend;
        match self {
            Backends::Sqlite => vec![Backend::Sqlite],
            Backends::Postgres => vec![Backend::Postgres],
            Backends::Both => vec![Backend::Sqlite, Backend::Postgres],
        }
    }
}

/// What the growth benchmarks share: the databases, the sizes they grow to, the calls
/// timed at each size.
#[derive(clap::Args)]
pub struct GrowthArgs {
    #[arg(long, value_enum, default_value = "both")]
    pub backend: Backends,
    /// Sizes to grow to, ascending (comma-separated: runs, or stored operations).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    pub sizes: Vec<u64>,
    /// Measured calls per query and size.
    #[arg(long, default_value_t = 300)]
    pub requests: usize,
}

impl GrowthArgs {
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.sizes.is_empty() && self.sizes.windows(2).all(|w| w[0] < w[1]),
            "--sizes must be ascending"
        );
        anyhow::ensure!(self.requests >= 10, "--requests must be at least 10");
        Ok(())
    }
}
