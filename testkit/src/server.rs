//! Launches the real `themis_server` binary the way an operator would: on an
//! ephemeral port, with its data in a temporary directory, its output
//! captured. Start-up waits for the "THEMIS listening on" line instead of
//! sleeping, so tests are as fast as the server and fail with its output.
//! The binary is passed in: the `themis` package's tests know it from
//! `env!("CARGO_BIN_EXE_themis_server")`, other packages find it with
//! `workspace_bin`.

use crate::http::{Client, Resp};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a server may take to print its listening line.
const START_LIMIT: Duration = Duration::from_secs(60);

/// A binary of this workspace, found next to the running executable: a
/// test runs from `target/<profile>/deps/`, a tool from `target/<profile>/`.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running executable");
    let mut dir = exe.parent().expect("executable has a folder").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

/// How to start a server.
#[derive(Clone, Default)]
pub struct Opts {
    /// `--threads`; 0 leaves it to the config.
    pub threads: usize,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Opts {
    pub fn threads(n: usize) -> Opts {
        Opts {
            threads: n,
            ..Opts::default()
        }
    }
    pub fn env(mut self, k: &str, v: &str) -> Opts {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn arg(mut self, a: &str) -> Opts {
        self.args.push(a.into());
        self
    }
}

/// A command for `bin`, run in `dir` so that no repository config file is
/// found, and without the caller's `THEMIS_*` variables (only what a test
/// sets explicitly reaches the server).
pub fn command(bin: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.current_dir(dir);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("THEMIS_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A running server; killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub bin: PathBuf,
    output: Arc<Mutex<String>>,
}

fn append(output: &Mutex<String>, line: &str) {
    let mut o = output.lock().unwrap_or_else(PoisonError::into_inner);
    o.push_str(line);
    o.push('\n');
}

impl Server {
    /// Starts `bin` with its data in `dir/data`, listening on 127.0.0.1 on
    /// a port of its choosing; panics with its output if it does not start.
    pub fn start(bin: &Path, dir: &Path, opts: &Opts) -> Server {
        let mut cmd = command(bin, dir);
        cmd.args(["--host", "127.0.0.1", "--port", "0", "--db"])
            .arg(dir.join("data"));
        if opts.threads > 0 {
            cmd.args(["--threads", &opts.threads.to_string()]);
        }
        cmd.args(&opts.args);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        if let Some(stdout) = child.stdout.take() {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let addr = line
                        .strip_prefix("THEMIS listening on ")
                        .and_then(|rest| rest.split_whitespace().next())
                        .and_then(|a| a.parse().ok());
                    append(&output, &line);
                    if let Some(addr) = addr {
                        let _ = tx.send(addr);
                    }
                }
            });
        }
        if let Some(stderr) = child.stderr.take() {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    append(&output, &line);
                }
            });
        }
        let addr = match rx.recv_timeout(START_LIMIT) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let out = output.lock().unwrap_or_else(PoisonError::into_inner);
                panic!("server did not start:\n{out}");
            }
        };
        Server {
            child,
            addr,
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            output,
        }
    }

    /// A new keep-alive connection; reads time out after 30 s so that a
    /// server that does not answer fails the test instead of hanging it.
    pub fn client(&self) -> Client {
        let c = Client::connect(self.addr).unwrap_or_else(|e| panic!("connect {}: {e}", self.addr));
        c.stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("set read timeout");
        c
    }

    /// One request on a fresh connection.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        self.client().request(method, path, body)
    }

    /// One request on a fresh connection: the status and the body as JSON.
    pub fn json(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        self.client().json(method, path, body)
    }

    /// Sends a signal (`"HUP"`, `"TERM"`, …) to the server, which must be
    /// running.
    pub fn signal(&self, sig: &str) {
        assert!(
            send_signal(self.child.id(), sig),
            "kill -{sig} {} failed",
            self.child.id()
        );
    }

    /// SIGTERM, then waits (up to 60 s) for the exit status (also when the
    /// server had already exited).
    pub fn stop(mut self) -> ExitStatus {
        send_signal(self.child.id(), "TERM");
        wait_with_timeout(&mut self.child, Duration::from_secs(60))
    }

    /// SIGKILL: a crash of the process.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Graceful stop, then a new server on the same data directory;
    /// returns the exit status of the stopped one.
    pub fn restart(self, opts: &Opts) -> (ExitStatus, Server) {
        let (bin, dir) = (self.bin.clone(), self.dir.clone());
        let status = self.stop();
        (status, Server::start(&bin, &dir, opts))
    }

    /// Everything the server printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until the server's output contains `needle` (up to `limit`),
    /// and returns the output either way.
    pub fn wait_output(&self, needle: &str, limit: Duration) -> String {
        let end = Instant::now() + limit;
        loop {
            let out = self.output();
            if out.contains(needle) || Instant::now() > end {
                return out;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send_signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits for `child` to exit; kills it and panics after `limit`.
pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
    let end = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return s,
            Ok(None) => {}
            Err(e) => panic!("wait: {e}"),
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion like `Command::output`, but kills it and
/// panics if it runs longer than `limit` (a server that should have refused
/// to start must not hang the suite).
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let t_out = drain(child.stdout.take().map(|s| Box::new(s) as _));
    let t_err = drain(child.stderr.take().map(|s| Box::new(s) as _));
    let status = wait_with_timeout(&mut child, limit);
    Output {
        status,
        stdout: t_out.join().expect("stdout reader"),
        stderr: t_err.join().expect("stderr reader"),
    }
}
