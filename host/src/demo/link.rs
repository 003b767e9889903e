//! The demo's uplink: a TCP relay between weir's forwarder and the cloud broker that can be cut
//! (every open connection closed, new ones refused) and restored, as a flaky cellular link is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

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
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            let mut inbound = inbound;
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = up.wait_for(|up| !*up) => {}
            }
        });
    }
}
