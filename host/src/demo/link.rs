//! The demo's uplink: a TCP relay between weir's forwarder and the cloud broker that can be cut
//! (every open connection closed, new ones refused) and restored, as a flaky cellular link is.
//!
//! When it goes down, the return path fails first: for [`RETURN_PATH_FIRST`] what weir sends
//! still reaches the cloud, but nothing comes back, PUBACKs included. weir then sends those
//! records again once the link is back (it deletes a record only after its PUBACK), and the
//! cloud receives them twice: the repeats it drops by id.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long, as the link goes down, the way to the cloud still works while the way back does not.
pub const RETURN_PATH_FIRST: Duration = Duration::from_secs(1);

/// A running link; it stops when dropped.
pub struct Link {
    addr: SocketAddr,
    up: watch::Sender<bool>,
    outages: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("addr", &self.addr).finish()
    }
}

impl Link {
    /// Listens on 127.0.0.1 on a free port and relays to `target`. Call inside a tokio runtime.
    pub async fn start(target: SocketAddr) -> std::io::Result<Link> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (up, up_rx) = watch::channel(true);
        let task = tokio::spawn(accept(listener, target, up_rx));
        Ok(Link {
            addr,
            up,
            outages: Arc::new(AtomicU64::new(0)),
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// How many times the link went down.
    pub fn outages(&self) -> u64 {
        self.outages.load(Relaxed)
    }

    pub fn set_up(&self, up: bool) {
        let was = self.up.send_replace(up);
        if was && !up {
            self.outages.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, up: watch::Receiver<bool>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        if !*up.borrow() {
            drop(inbound);
            continue;
        }
        let mut up = up.clone();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let (from_weir, to_weir) = inbound.into_split();
            let (from_cloud, to_cloud) = outbound.into_split();
            let mut forth = tokio::spawn(relay(from_weir, to_cloud, None));
            let mut back = tokio::spawn(relay(from_cloud, to_weir, Some(up.clone())));
            let went_down = tokio::select! {
                _ = &mut forth => false,
                _ = &mut back => false,
                _ = up.wait_for(|up| !*up) => true,
            };
            if went_down {
                // `back` now drops what the cloud sends; `forth` still delivers.
                tokio::time::sleep(RETURN_PATH_FIRST).await;
            }
            // Both sockets close with their halves.
            forth.abort();
            back.abort();
        });
    }
}

/// Copies `from` to `to` until either ends; while `pass` says the link is down, what is read is
/// dropped (the connection stays open, as a link whose return path failed does).
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    pass: Option<watch::Receiver<bool>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if pass.as_ref().is_some_and(|up| !*up.borrow()) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
