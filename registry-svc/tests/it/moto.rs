//! A real local S3 server (moto) for one test, with one bucket. moto and boto3 come from
//! `.tools/venv` (what `tests/setup.sh` installs), else from PATH.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use object_store::aws::AmazonS3Builder;

pub const BUCKET: &str = "capstan";

/// `moto_server` on a free port, killed when dropped.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("cannot stop moto_server: {e}");
        }
        let _ = self.child.wait();
    }
}

/// `name` from `.tools/venv/bin`, else from PATH; fails the test, saying how to get it,
/// when neither has it.
fn tool(name: &str) -> PathBuf {
    let venv = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.tools/venv/bin"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::iter::once(venv)
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "this test needs `{name}` (moto's S3 server and boto3): run tests/setup.sh, the \
                 first half of the README's test command, which installs them into .tools/venv"
            )
        })
}

fn boto3(endpoint: &str, code: &str) -> String {
    let out = Command::new(tool("python3"))
        .args([
            "-c",
            &format!(
                "import boto3; c=boto3.client('s3', endpoint_url='{endpoint}', \
                 aws_access_key_id='test', aws_secret_access_key='test', \
                 region_name='us-east-1')\n{code}"
            ),
        ])
        .output()
        .expect("python3 runs (boto3 comes with moto)");
    assert!(
        out.status.success(),
        "boto3 against moto failed (tests/setup.sh installs boto3 into .tools/venv): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Moto {
    /// Starts moto and makes [`BUCKET`]. Fails the test, saying how to install moto, when
    /// `moto_server` is missing.
    pub async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port for moto")
            .port();
        let child = Command::new(tool("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let mut up = false;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(up, "moto_server did not listen within 10 s");
        boto3(
            &moto.endpoint,
            &format!("c.create_bucket(Bucket='{BUCKET}')"),
        );
        moto
    }

    /// Connection settings for object_store: this server, test credentials.
    pub fn settings(&self) -> AmazonS3Builder {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_region("us-east-1")
    }

    /// Every object key in the bucket, and `UPLOAD <key>` for each multipart upload still
    /// open.
    pub fn contents(&self) -> Vec<String> {
        let listing = boto3(
            &self.endpoint,
            &format!(
                "print('\\n'.join(o['Key'] for o in c.list_objects_v2(Bucket='{BUCKET}').get('Contents', [])))\n\
                 print('\\n'.join('UPLOAD ' + u['Key'] for u in c.list_multipart_uploads(Bucket='{BUCKET}').get('Uploads', [])))"
            ),
        );
        listing
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }
}
