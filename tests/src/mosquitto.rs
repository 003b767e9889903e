//! A real Mosquitto broker per test on 127.0.0.1 and a free port, installed on demand, configured
//! not to drop messages, and killed by its pid on drop. Optionally a second, secure listener:
//! TLS (with certificates made here by a test CA) and/or a password file.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::process::{TempDir, free_port, read_lossy, send_signal};

/// How long a broker may take to listen.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// Start attempts when the port picked was taken in the meantime.
const START_ATTEMPTS: usize = 5;

/// The `mosquitto` binary, installed with apt-get if missing (see [`crate::apt::ensure`]).
pub fn ensure_installed() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| crate::apt::ensure("mosquitto", "mosquitto"))
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

/// What a broker's second listener asks of its clients (see [`Mosquitto::start_with`]). The
/// default asks nothing: no second listener, the broker of [`Mosquitto::start`].
#[derive(Clone, Debug, Default)]
pub struct BrokerOptions {
    /// TLS on the second listener.
    pub tls: Option<TlsFiles>,
    /// The only users (name, password) the second listener takes; none: anonymous clients too.
    pub users: Vec<(String, String)>,
}

impl BrokerOptions {
    /// Anything for a second listener to do.
    fn secure(&self) -> bool {
        self.tls.is_some() || !self.users.is_empty()
    }
}

/// TLS on a broker's second listener: a test CA (`ca.pem`) and a server certificate signed by it
/// for `127.0.0.1` and `localhost`, made afresh for each broker.
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsFiles {
    /// Clients must present a certificate signed by the CA (one is made: `client.pem` and
    /// `client.key`); it does not stand in for a user name.
    pub require_client_cert: bool,
}

/// The certificates and keys (PEM) a broker was started with.
#[derive(Clone, Debug)]
struct TlsPaths {
    ca: PathBuf,
    client: Option<(PathBuf, PathBuf)>,
}

/// A Mosquitto broker owned by a test.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    port: u16,
    secure_port: Option<u16>,
    tls: Option<TlsPaths>,
    dir: TempDir,
}

impl Mosquitto {
    /// Starts a broker listening on 127.0.0.1 and a free port; returns once it accepts TCP
    /// connections. Panics with the broker's log if it does not start.
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(BrokerOptions::default())
    }

    /// Starts a broker as [`Mosquitto::start`] does, with a second listener
    /// ([`Mosquitto::auth_port`]) that takes only these users (name, password); the first stays
    /// open to anonymous clients (the tests' own publishers and subscribers).
    pub fn start_with_users(users: &[(&str, &str)]) -> Mosquitto {
        Mosquitto::start_with(BrokerOptions {
            tls: None,
            users: users
                .iter()
                .map(|(u, p)| ((*u).to_owned(), (*p).to_owned()))
                .collect(),
        })
    }

    /// Starts a broker as [`Mosquitto::start`] does; unless `options` are the default, with a
    /// second listener ([`Mosquitto::secure_port`]) that speaks TLS and/or takes only the users
    /// given, each listener with its own settings (`per_listener_settings`). The first listener
    /// ([`Mosquitto::port`]) stays plain TCP and open to anonymous clients: the tests' own
    /// publishers and subscribers, which speak plain MQTT only, use it.
    pub fn start_with(options: BrokerOptions) -> Mosquitto {
        Mosquitto::start_configured(options, "")
    }

    /// Starts a broker as [`Mosquitto::start`] does, with these lines added to its config (global
    /// options such as `max_packet_size 4096`).
    pub fn start_with_config(lines: &str) -> Mosquitto {
        Mosquitto::start_configured(BrokerOptions::default(), lines)
    }

    fn start_configured(options: BrokerOptions, extra: &str) -> Mosquitto {
        let bin = ensure_installed();
        let dir = TempDir::new("weir-mosquitto");
        // Readable by the user mosquitto drops to when started as root.
        set_mode(dir.path(), 0o755);
        let conf = dir.path().join("mosquitto.conf");
        let log_path = dir.path().join("mosquitto.log");
        let passwords = (!options.users.is_empty())
            .then(|| write_passwords(&dir.path().join("passwords"), &options.users));
        let tls = options.tls.map(|t| make_certificates(dir.path(), t));
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port();
            let mut text = config(port);
            if !extra.is_empty() {
                text += &format!("# added by the test\n{extra}\n");
            }
            let secure_port = options.secure().then(free_port);
            if let Some(secure_port) = secure_port {
                text = format!(
                    "per_listener_settings true\n{text}\n# the secure listener\n\
                     listener {secure_port} 127.0.0.1\n"
                );
                match &passwords {
                    Some(file) => {
                        text +=
                            &format!("allow_anonymous false\npassword_file {}\n", file.display())
                    }
                    None => text += "allow_anonymous true\n",
                }
                if let Some(tls) = &tls {
                    let (cert, key) =
                        (dir.path().join("server.pem"), dir.path().join("server.key"));
                    text += &format!(
                        "cafile {}\ncertfile {}\nkeyfile {}\n",
                        tls.ca.display(),
                        cert.display(),
                        key.display()
                    );
                    if tls.client.is_some() {
                        text += "require_certificate true\nuse_identity_as_username false\n";
                    }
                }
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
            let addrs: Vec<SocketAddr> = [Some(port), secure_port]
                .into_iter()
                .flatten()
                .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
                .collect();
            let deadline = Instant::now() + START_DEADLINE;
            loop {
                if let Some(status) = child.try_wait().expect("try_wait on mosquitto") {
                    let log = read_lossy(&log_path);
                    if log.contains("Address already in use") && attempt < START_ATTEMPTS {
                        break; // someone took a port: pick others
                    }
                    panic!("mosquitto exited at start ({status}); its log:\n{log}");
                }
                // "running" is logged after the listeners are bound: a connect before it could
                // reach another process that took the port. A TCP connect is enough for a TLS
                // listener too (the handshake comes later).
                if read_lossy(&log_path).contains(" running")
                    && addrs
                        .iter()
                        .all(|a| TcpStream::connect_timeout(a, Duration::from_secs(1)).is_ok())
                {
                    return Mosquitto {
                        child,
                        port,
                        secure_port,
                        tls,
                        dir,
                    };
                }
                if Instant::now() >= deadline {
                    let _ = send_signal(child.id(), libc::SIGKILL);
                    let _ = child.wait();
                    panic!(
                        "mosquitto did not listen on {addrs:?} within {START_DEADLINE:?}; its log:\n{}",
                        read_lossy(&log_path)
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        unreachable!("the last attempt panics instead of retrying")
    }

    /// The port of the second listener (see [`Mosquitto::start_with`]).
    pub fn secure_port(&self) -> u16 {
        self.secure_port
            .expect("started with options for a second listener")
    }

    /// The CA certificate (PEM) that signed the broker's certificate (and the client's).
    pub fn ca_file(&self) -> &Path {
        &self.tls.as_ref().expect("started with TLS").ca
    }

    /// A client certificate (PEM) the secure listener accepts.
    pub fn client_cert(&self) -> &Path {
        &self.client_files().0
    }

    /// The key (PEM, PKCS#8) of [`Mosquitto::client_cert`].
    pub fn client_key(&self) -> &Path {
        &self.client_files().1
    }

    fn client_files(&self) -> &(PathBuf, PathBuf) {
        self.tls
            .as_ref()
            .and_then(|t| t.client.as_ref())
            .expect("started with TLS and require_client_cert")
    }

    /// The port of the listener that takes only the users given to
    /// [`Mosquitto::start_with_users`].
    pub fn auth_port(&self) -> u16 {
        self.secure_port()
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

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
}

/// Writes `file` with `mosquitto_passwd` (from the mosquitto package), readable by all.
fn write_passwords(file: &Path, users: &[(String, String)]) -> PathBuf {
    for (i, (user, password)) in users.iter().enumerate() {
        let mut cmd = Command::new("mosquitto_passwd");
        cmd.arg("-b");
        if i == 0 {
            cmd.arg("-c");
        }
        let status = cmd
            .arg(file)
            .args([user, password])
            .status()
            .expect("mosquitto_passwd (from the mosquitto package) runs");
        assert!(status.success(), "mosquitto_passwd failed");
    }
    set_mode(file, 0o644);
    file.to_owned()
}

/// Writes a test CA (`ca.pem`), a server certificate for 127.0.0.1 and localhost signed by it
/// (`server.pem`, `server.key`) and, if asked for, a client certificate (`client.pem`,
/// `client.key`) into `dir`, each readable by all.
fn make_certificates(dir: &Path, tls: TlsFiles) -> TlsPaths {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        set_mode(&path, 0o644);
        path
    };
    let params = |names: &[&str], common_name: &str| {
        let mut p =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("valid names");
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2100, 1, 1);
        p
    };
    let mut ca_params = params(&[], "weir-tests CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().expect("generate a key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
    let ca = write("ca.pem", &ca_cert.pem());
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |names: &[&str], common_name: &str, usage: ExtendedKeyUsagePurpose| {
        let mut p = params(names, common_name);
        p.use_authority_key_identifier_extension = true;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("generate a key");
        let cert = p.signed_by(&key, &issuer).expect("sign with the CA");
        (cert.pem(), key.serialize_pem())
    };
    let (cert, key) = leaf(
        &["127.0.0.1", "localhost"],
        "127.0.0.1",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    write("server.pem", &cert);
    write("server.key", &key);
    let client = tls.require_client_cert.then(|| {
        let (cert, key) = leaf(
            &[],
            "weir-tests client",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        (write("client.pem", &cert), write("client.key", &key))
    });
    TlsPaths { ca, client }
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
