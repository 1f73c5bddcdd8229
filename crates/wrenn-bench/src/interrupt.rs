//! Ctrl-C: scenarios stop where they are and their guards clean up (VMs, namespaces, data
//! dirs, the PostgreSQL cluster) before the process exits.
//!
//! Once [`install`] ran, SIGINT no longer kills the process: it flips a flag that every
//! scenario's future races against (on its own runtime too), so the scenario future is
//! dropped and its `Drop` guards run.

use std::sync::OnceLock;

use tokio::sync::watch;

static FLAG: OnceLock<watch::Sender<bool>> = OnceLock::new();

fn flag() -> &'static watch::Sender<bool> {
    FLAG.get_or_init(|| watch::channel(false).0)
}

/// Starts listening for Ctrl-C (call once, from the main runtime).
pub fn install() {
    let tx = flag();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: cleaning up");
            tx.send_replace(true);
        }
    });
}

/// Whether Ctrl-C was pressed.
pub fn is_set() -> bool {
    *flag().borrow()
}

/// Resolves once Ctrl-C was pressed. Works from any runtime.
pub async fn interrupted() {
    let mut rx = flag().subscribe();
    let _ = rx.wait_for(|v| *v).await;
}

/// Runs `f` until it ends or Ctrl-C; on Ctrl-C `f` is dropped (its guards clean up) and the
/// result is an error.
pub async fn guarded<T>(
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::select! {
        r = f => r,
        () = interrupted() => Err(anyhow::anyhow!("interrupted")),
    }
}
