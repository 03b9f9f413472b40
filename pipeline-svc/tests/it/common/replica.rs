//! pipeline-svc as a real process, for the drills that kill one (`SIGKILL`, or its own
//! `--abort-at-step`).

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use super::SECRET;

/// A pipeline-svc process; killed on drop.
pub struct Replica {
    pub id: String,
    pub url: String,
    child: Child,
    /// Read by the demo's drills (feature `demo`) when they report.
    #[cfg_attr(not(feature = "demo"), allow(dead_code))]
    log: PathBuf,
}

impl Replica {
    /// Starts pipeline-svc on `database_url` as replica `id`, its data and JSON log under
    /// `dir`, with `flags` added; returns once its log says that it listens and that its
    /// storage is ready.
    pub fn spawn(database_url: &str, dir: &Path, id: &str, flags: &[&str]) -> Replica {
        let path = |p: &Path| p.display().to_string();
        let secret = dir.join("jwt.secret");
        std::fs::create_dir_all(dir).expect("replica dir");
        std::fs::write(&secret, SECRET).expect("secret");
        let log = dir.join(format!("{id}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_pipeline-svc"))
            .env_clear()
            .env("RUST_LOG", "info")
            .env("CAPSTAN_LOG_FORMAT", "json")
            .args([
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                database_url,
                "--data-dir",
                &path(&dir.join(id)),
                "--jwt-secret-file",
                &path(&secret),
                "--replica-id",
                id,
            ])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pipeline-svc binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        let log_path = log.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&log_path).expect("replica log");
            // Bound first, then the store (migrations): ready once both are logged.
            let (mut tx, mut addr) = (Some(tx), None);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if v["message"] == "gRPC listening" {
                    addr = v["listen"].as_str().map(str::to_string);
                }
                if v["message"] == "pipeline storage ready" {
                    if let (Some(a), Some(sender)) = (addr.clone(), tx.take()) {
                        let _ = sender.send(a);
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "replica {id} was not ready within 60 s; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        Replica {
            id: id.to_string(),
            url: format!("http://{addr}"),
            child,
            log,
        }
    }

    /// SIGKILL, and reaped.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// Asks for a graceful shutdown (SIGTERM).
    #[cfg(feature = "demo")]
    pub fn terminate(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(sent.success(), "SIGTERM to replica {}", self.id);
    }

    /// Waits for the process to end, blocking this thread.
    #[cfg(feature = "demo")]
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("replica status")
    }

    /// Waits (at most `limit`) for the process to end by itself.
    #[cfg(feature = "demo")]
    pub async fn exit(mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("replica status") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica {} did not exit within {limit:?}; log:\n{}",
                self.id,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[cfg(feature = "demo")]
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
