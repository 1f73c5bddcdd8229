//! A TLS listener for `axum::serve`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; accepting waits beyond that.
const MAX_HANDSHAKES: usize = 1024;

/// A TLS listener for `axum::serve`. Handshakes run in their own tasks, so one slow or silent
/// client never holds up the others; finished connections are handed over in order.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), tx));
        Ok(TlsListener {
            local,
            ready,
            acceptor,
        })
    }
}

async fn accept_loop(
    mut tcp: TcpListener,
    tls: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // axum's accept: logs and backs off on errors such as EMFILE.
        let (stream, peer) = axum::serve::Listener::accept(&mut tcp).await;
        // TCP_NODELAY: see `server::start`.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        let (tls, tx) = (tls.clone(), tx.clone());
        tokio::spawn(async move {
            let shook = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await;
            drop(slot);
            match shook {
                Ok(Ok(s)) => {
                    let _ = tx.send((s, peer)).await;
                }
                // The peer's doing (wrong CA, plain HTTP, scanners): not worth more than debug.
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Stops accepting and closes the port once the server is done with this listener.
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // Only when the accept loop ended, which it does not while this listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}
