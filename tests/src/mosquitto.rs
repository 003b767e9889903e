//! A real Mosquitto broker per test on 127.0.0.1 and a free port, installed on demand, configured
//! not to drop messages, and killed by its pid on drop.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::process::{TempDir, free_port, read_lossy, send_signal};
use crate::repo;

/// How long a broker may take to listen.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// Start attempts when the port picked was taken in the meantime.
const START_ATTEMPTS: usize = 5;

/// The `mosquitto` binary, installed with apt-get if missing (once per process, under a file lock
/// shared by every test process); panics saying what to install if that fails.
pub fn ensure_installed() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = find_mosquitto() {
            return bin;
        }
        let lock_path = repo().join("target/weir-test-apt.lock");
        let _ = std::fs::create_dir_all(repo().join("target"));
        let lock = File::create(&lock_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", lock_path.display()));
        lock.lock()
            .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));
        // Another test process may have installed it while this one waited for the lock.
        if let Some(bin) = find_mosquitto() {
            return bin;
        }
        for args in [&["update"][..], &["install", "-y", "mosquitto"][..]] {
            let status = Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
            if !matches!(status, Ok(s) if s.success()) {
                panic!(
                    "mosquitto is not installed and `apt-get {}` failed ({status:?}): install the \
                     `mosquitto` package (Debian/Ubuntu: apt-get install mosquitto)",
                    args.join(" ")
                );
            }
        }
        find_mosquitto().expect(
            "apt-get installed mosquitto but no `mosquitto` binary is on PATH or in /usr/sbin",
        )
    })
}

fn find_mosquitto() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("mosquitto"))
        .find(|bin| bin.is_file())
}

/// The broker config: everything a test relies on is explicit.
fn config(port: u16) -> String {
    format!(
        "# written by weir-tests\n\
         listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence false\n\
         # stderr, captured by us: unbuffered (stdout to a file is block-buffered: the log would\n\
         # appear only at exit); no log file, which mosquitto could not write after dropping\n\
         # from root to user mosquitto\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         log_type information\n\
         # the default (1000) silently drops QoS 1 messages queued for a slow subscriber\n\
         max_queued_messages 10000000\n\
         max_queued_bytes 0\n\
         # outgoing QoS 1/2 messages in flight per client (default 20): raised for throughput,\n\
         # but bounded: a client that holds its acks (weir) relies on the broker's bound\n\
         max_inflight_messages 1000\n\
         max_inflight_bytes 0\n\
         # the default, stated: MQTT 5 clients keep the keepalive they ask for\n\
         max_keepalive 65535\n"
    )
}

/// A Mosquitto broker owned by a test.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    port: u16,
    auth_port: Option<u16>,
    dir: TempDir,
}

impl Mosquitto {
    /// Starts a broker listening on 127.0.0.1 and a free port; returns once it accepts TCP
    /// connections. Panics with the broker's log if it does not start.
    pub fn start() -> Mosquitto {
        Mosquitto::launch(&[])
    }

    /// Starts a broker as [`Mosquitto::start`] does, with a second listener
    /// ([`Mosquitto::auth_port`]) that takes only these users (name, password); the first stays
    /// open to anonymous clients (the tests' own publishers and subscribers).
    pub fn start_with_users(users: &[(&str, &str)]) -> Mosquitto {
        Mosquitto::launch(users)
    }

    fn launch(users: &[(&str, &str)]) -> Mosquitto {
        let bin = ensure_installed();
        let dir = TempDir::new("weir-mosquitto");
        let conf = dir.path().join("mosquitto.conf");
        let log_path = dir.path().join("mosquitto.log");
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port();
            let mut text = config(port);
            let auth_port = (!users.is_empty()).then(free_port);
            if let Some(auth_port) = auth_port {
                let passwords = dir.path().join("passwords");
                for (i, (user, password)) in users.iter().enumerate() {
                    let mut cmd = Command::new("mosquitto_passwd");
                    cmd.arg("-b");
                    if i == 0 {
                        cmd.arg("-c");
                    }
                    let status = cmd
                        .arg(&passwords)
                        .args([user, password])
                        .status()
                        .expect("mosquitto_passwd (from the mosquitto package) runs");
                    assert!(status.success(), "mosquitto_passwd failed");
                }
                // Readable by the user mosquitto drops to when started as root.
                let _ = Command::new("chmod").arg("0644").arg(&passwords).status();
                text = format!(
                    "per_listener_settings true\n{text}\nlistener {auth_port} 127.0.0.1\n\
                     allow_anonymous false\npassword_file {}\n",
                    passwords.display()
                );
            }
            std::fs::write(&conf, text).expect("write mosquitto.conf");
            let log = File::create(&log_path).expect("create mosquitto.log");
            let mut child = Command::new(bin)
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log file handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + START_DEADLINE;
            loop {
                if let Some(status) = child.try_wait().expect("try_wait on mosquitto") {
                    let log = read_lossy(&log_path);
                    if log.contains("Address already in use") && attempt < START_ATTEMPTS {
                        break; // someone took the port: pick another
                    }
                    panic!("mosquitto exited at start ({status}); its log:\n{log}");
                }
                // "running" is logged after the listener is bound: a connect before it could
                // reach another process that took the port.
                if read_lossy(&log_path).contains(" running")
                    && TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
                {
                    return Mosquitto {
                        child,
                        port,
                        auth_port,
                        dir,
                    };
                }
                if Instant::now() >= deadline {
                    let _ = send_signal(child.id(), libc::SIGKILL);
                    let _ = child.wait();
                    panic!(
                        "mosquitto did not listen on {addr} within {START_DEADLINE:?}; its log:\n{}",
                        read_lossy(&log_path)
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        unreachable!("the last attempt panics instead of retrying")
    }

    /// The port of the listener that takes only the users given to
    /// [`Mosquitto::start_with_users`].
    pub fn auth_port(&self) -> u16 {
        self.auth_port.expect("started with users")
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The broker's log (stdout and stderr) so far.
    pub fn log(&self) -> String {
        read_lossy(&self.dir.path().join("mosquitto.log"))
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        // Not reaped yet, so the pid is still ours.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = send_signal(self.child.id(), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
