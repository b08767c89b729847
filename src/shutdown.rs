//! Shutdown as one value passed to whoever must stop: signals (through signal-hook) become a trigger.

use tokio::sync::watch;

/// A clonable "stop now" signal. Several daemons in one process each have their own.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The side that fires a [`Shutdown`].
#[derive(Debug)]
pub struct Trigger {
    tx: watch::Sender<bool>,
}

impl Shutdown {
    /// A new shutdown and the trigger that fires it.
    pub fn new() -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Trigger { tx }, Shutdown { rx })
    }

    /// A shutdown that never fires.
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        Shutdown { rx }
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once the shutdown fires (or its trigger is dropped).
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

impl Trigger {
    pub fn fire(&self) {
        let _ = self.tx.send(true);
    }
}

/// Fires the returned shutdown on the first SIGTERM or SIGINT; a second one exits the process at once.
pub fn from_signals() -> std::io::Result<Shutdown> {
    use futures_util::StreamExt;
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT])?;
    let (trigger, shutdown) = Shutdown::new();
    tokio::spawn(async move {
        if let Some(sig) = signals.next().await {
            tracing::info!(
                signal = sig,
                "shutdown requested; send the signal again to exit at once"
            );
            trigger.fire();
        }
        if let Some(sig) = signals.next().await {
            tracing::warn!(signal = sig, "second signal: exiting at once");
            std::process::exit(1);
        }
    });
    Ok(shutdown)
}
