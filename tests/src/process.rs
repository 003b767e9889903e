//! Real processes for tests: a temp dir that cleans up, the `weir` binary built once, and a child
//! process whose output is captured to files and which is always stopped by its pid.

use std::fs::File;
use std::io::{self, Read as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::repo;

/// How long `terminate` waits for a process to exit after SIGTERM.
pub const TERMINATE_DEADLINE: Duration = Duration::from_secs(15);

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/<prefix>-<pid>-<n>` (replacing a stale one left by an earlier process).
    pub fn new(prefix: &str) -> TempDir {
        TempDir::new_in(&std::env::temp_dir(), prefix)
    }

    /// Creates `<base>/<prefix>-<pid>-<n>` (replacing a stale one left by an earlier process).
    pub fn new_in(base: &Path, prefix: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", path.display()));
        TempDir(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bound to port 0, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("can bind 127.0.0.1:0")
        .port()
}

/// Polls `done` every 10 ms until it holds; panics with `what` (and the time waited) otherwise.
pub fn poll_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A file's content so far, lossily decoded (empty if it cannot be read).
pub fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Sends `signal` to `pid`.
#[allow(unsafe_code)]
pub fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The target triple the tests build and run weir for, from `WEIR_TEST_TARGET` (set by
/// `tools/arm64 test`): `None` builds for the host.
fn test_target() -> Option<String> {
    std::env::var("WEIR_TEST_TARGET")
        .ok()
        .filter(|t| !t.is_empty())
}

/// What runs a weir binary built for [`test_target`] on this machine, from `WEIR_TEST_RUNNER`
/// (e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu`): a process under qemu-user cannot start
/// another foreign binary by itself.
fn test_runner() -> Vec<String> {
    std::env::var("WEIR_TEST_RUNNER")
        .map(|r| r.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A command that runs the `weir` binary of [`weir_bin`] (through `WEIR_TEST_RUNNER` when the
/// tests run for another target).
pub fn weir_command() -> Command {
    command_for(&weir_bin())
}

/// A command running `program`, through the test runner if it is a weir built for the target.
fn command_for(program: &Path) -> Command {
    let runner = test_runner();
    match runner.split_first() {
        Some((first, rest)) if test_target().is_some() && is_target_weir(program) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        _ => Command::new(program),
    }
}

fn is_target_weir(program: &Path) -> bool {
    test_target().is_some_and(|t| {
        program.file_name().is_some_and(|n| n == "weir")
            && program.components().any(|c| c.as_os_str() == t.as_str())
    })
}

/// `<repo>/target/debug/weir`, built once per process with `cargo build --locked -p weir --bin
/// weir` (the dev profile the tests use; cargo's own lock orders concurrent builds); with
/// `WEIR_TEST_TARGET`, `<repo>/target/<triple>/debug/weir` built for that target.
pub fn weir_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| build_weir(false)).clone()
}

/// Builds the `weir` binary (`--release` or the dev profile) with cargo and returns its path.
pub fn build_weir(release: bool) -> PathBuf {
    cargo_build_weir(release, &[], None)
}

/// `weir` built without the compiler (`--no-default-features`: no Cranelift; it runs only
/// plugins compiled ahead of time), in the dev profile, in a target directory of its own
/// (`target/no-compiler`) so that it never replaces the full binary other tests run. Warnings
/// are errors in this build (CI's lints cover the default features only).
pub fn weir_bin_without_compiler() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = target_dir().join("no-compiler");
            cargo_build_weir(false, &["--no-default-features"], Some(&dir))
        })
        .clone()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
}

fn cargo_build_weir(release: bool, args: &[&str], target_dir: Option<&Path>) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(&cargo);
    build
        .args(["build", "--locked", "-p", "weir", "--bin", "weir"])
        .args(release.then_some("--release"))
        .args(args)
        .current_dir(repo());
    if let Some(dir) = target_dir {
        build
            .arg("--target-dir")
            .arg(dir)
            .env("RUSTFLAGS", "-D warnings");
    }
    let target = test_target();
    if let Some(t) = &target {
        build.args(["--target", t]);
    }
    // The caller's own cargo environment (a test or `cargo run`) would change build scripts'
    // inputs (ring's reads CARGO_MANIFEST_DIR and friends) and make cargo rebuild them each time.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_")
            || matches!(
                key.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
            )
        {
            build.env_remove(key.as_ref());
        }
    }
    let status = build
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cargo.to_string_lossy()));
    assert!(
        status.success(),
        "building the weir binary failed (its output is above)"
    );
    let mut dir = target_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(self::target_dir);
    if let Some(t) = &target {
        dir.push(t);
    }
    let bin = dir.join(if release {
        "release/weir"
    } else {
        "debug/weir"
    });
    assert!(
        bin.exists(),
        "{} missing after a successful build",
        bin.display()
    );
    bin
}

/// A running child process (normally `weir`) with stdout and stderr captured to files in its own
/// temp dir. Dropping it kills it (SIGKILL by pid) and reaps it.
#[derive(Debug)]
pub struct WeirProcess {
    child: Child,
    status: Option<ExitStatus>,
    dir: TempDir,
}

impl WeirProcess {
    /// Starts the `weir` binary (see [`weir_bin`]) with `args` and extra `env`.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> WeirProcess {
        WeirProcess::spawn_program(&weir_bin(), args, env)
    }

    /// Starts any `program` the same way (stdin closed, output captured).
    pub fn spawn_program(program: &Path, args: &[&str], env: &[(&str, &str)]) -> WeirProcess {
        let dir = TempDir::new("weir-process");
        let out = File::create(dir.path().join("stdout")).expect("create stdout file");
        let err = File::create(dir.path().join("stderr")).expect("create stderr file");
        let child = command_for(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        WeirProcess {
            child,
            status: None,
            dir,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A temp dir owned by this process handle (removed on drop): a place for its files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.dir.path().join("stdout"))
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.dir.path().join("stderr"))
    }

    /// The exit status if the process has exited (it is reaped then), `None` while it runs.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait on a child");
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit by itself; panics with its stderr if not.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "process {} still running after {timeout:?}; stderr:\n{}",
                    self.pid(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL by pid (unless it already exited), then reaps it.
    pub fn kill9(&mut self) -> ExitStatus {
        // The child is not reaped until `try_status` sees it exit, so its pid cannot be reused
        // by another process before this signal.
        if let Some(status) = self.try_status() {
            return status;
        }
        send_signal(self.pid(), libc::SIGKILL).expect("SIGKILL a child we own");
        let status = self.child.wait().expect("wait for a killed child");
        self.status = Some(status);
        status
    }

    /// SIGTERM by pid, then waits up to [`TERMINATE_DEADLINE`] for it to exit; panics with its
    /// stderr if it does not.
    pub fn terminate(&mut self) -> ExitStatus {
        if self.try_status().is_none() {
            send_signal(self.pid(), libc::SIGTERM).expect("SIGTERM a child we own");
        }
        self.wait(TERMINATE_DEADLINE)
    }

    /// The admin API's address (`HOST:PORT`), from weir's "admin API listening" log line
    /// (needs `WEIR_LOG` at info for `weir`), waiting up to `timeout` for it.
    pub fn admin_address(&mut self, timeout: Duration) -> String {
        self.wait_for_stderr("admin API listening", timeout);
        let stderr = self.stderr();
        stderr
            .lines()
            .find(|l| l.contains("admin API listening"))
            .and_then(|l| l.split("address=").nth(1))
            .and_then(|t| t.split_whitespace().next())
            .expect("the address is logged")
            .to_owned()
    }

    /// Polls the captured stderr until it contains `needle`; panics with the stderr if the
    /// deadline passes or the process exits without printing it.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            // Check the exit first: a process that printed `needle` and then exited still passes.
            let exited = self.try_status();
            let stderr = self.stderr();
            if stderr.contains(needle) {
                return;
            }
            if let Some(status) = exited {
                panic!("process exited ({status}) without printing {needle:?}; stderr:\n{stderr}");
            }
            if Instant::now() >= deadline {
                panic!("no {needle:?} on stderr after {timeout:?}; stderr:\n{stderr}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for WeirProcess {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = send_signal(self.pid(), libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}
