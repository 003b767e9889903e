//! A TCP proxy on 127.0.0.1 for flaky-link tests: forwards to a target until told to drop every
//! connection and refuse new ones (`down`), to hold bytes silently (`stall`), or to work (`up`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

use crate::process::poll_until;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    Down,
    Stall,
}

#[derive(Debug, Default)]
struct Counts {
    accepted: AtomicUsize,
    open: AtomicUsize,
}

/// A proxy owned by a test; its own thread and runtime, so it works from sync and async tests.
/// Dropping it closes the listener and every connection.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    mode: watch::Sender<Mode>,
    counts: Arc<Counts>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards every connection to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("local addr").port();
        let (mode, mode_rx) = watch::channel(Mode::Up);
        let counts = Arc::new(Counts::default());
        let (stop, stop_rx) = oneshot::channel();
        let thread_counts = counts.clone();
        let thread = std::thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("tokio listener");
                    tokio::select! {
                        () = accept_loop(listener, target, mode_rx, thread_counts) => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime drops every connection task and its sockets.
            })
            .expect("spawn proxy thread");
        Proxy {
            port,
            mode,
            counts,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Connections accepted so far (including those closed at once while down).
    pub fn connections(&self) -> usize {
        self.counts.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.counts.open.load(Ordering::SeqCst)
    }

    /// Closes every open connection (returns once they are closed) and from now on accepts new
    /// ones only to close them at once.
    pub fn down(&self) {
        self.mode.send_replace(Mode::Down);
        poll_until(
            "the proxy to close its connections",
            Duration::from_secs(5),
            || self.open_connections() == 0,
        );
    }

    /// Forwards again (new connections; stalled ones resume).
    pub fn up(&self) {
        self.mode.send_replace(Mode::Up);
    }

    /// Keeps connections open (and accepts new ones) but forwards no bytes either way.
    pub fn stall(&self) {
        self.mode.send_replace(Mode::Stall);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Receiver<Mode>,
    counts: Arc<Counts>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        counts.accepted.fetch_add(1, Ordering::SeqCst);
        // Counted as open before the mode is read, so `down` cannot miss it.
        counts.open.fetch_add(1, Ordering::SeqCst);
        if *mode.borrow() == Mode::Down {
            drop(client);
            counts.open.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let (mode, counts) = (mode.clone(), counts.clone());
        tokio::spawn(async move {
            forward(client, target, mode).await;
            counts.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Forwards both ways until either side closes or the proxy goes down; then closes both.
async fn forward(client: TcpStream, target: SocketAddr, mode: watch::Receiver<Mode>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_rx, client_tx) = client.into_split();
    let (server_rx, server_tx) = server.into_split();
    let mut down = mode.clone();
    tokio::select! {
        () = pump(client_rx, server_tx, mode.clone()) => {}
        () = pump(server_rx, client_tx, mode.clone()) => {}
        _ = down.wait_for(|m| *m == Mode::Down) => {}
    }
    // Both halves of both sockets drop here.
}

/// Copies `from` to `to` while the mode is `Up`; holds everything while `Stall`.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if mode.wait_for(|m| *m == Mode::Up).await.is_err() {
            return;
        }
        tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    // Bytes read just before a stall still go out: they left the sender already.
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            // Reading is cancel-safe: stop reading when the mode changes.
            changed = mode.changed() => if changed.is_err() { return },
        }
    }
}
