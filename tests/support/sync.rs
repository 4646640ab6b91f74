//! Waiting without sleeping: a time bound on a whole test, a gate the test opens to release what
//! waits on it (a reply held upstream), and waiting for a listener to stop accepting.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;

/// Runs `fut`, failing the test if it takes longer than `secs`.
pub async fn bounded<F: Future>(secs: u64, fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("test exceeded its time bound of {secs}s"))
}

/// A one-way gate the test opens: whoever waits on it is held until then.
#[derive(Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    pub fn new() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }
    pub fn open(&self) {
        self.0.send_replace(true);
    }
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// Returns once a new connection to `addr` is refused (the listener stopped accepting).
pub async fn until_refused(addr: SocketAddr) {
    loop {
        match TcpStream::connect(addr).await {
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => return,
            _ => tokio::task::yield_now().await,
        }
    }
}
