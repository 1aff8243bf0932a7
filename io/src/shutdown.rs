//! The per-core shutdown signal.
//!
//! A graceful stop must stop accepting, let in-flight requests finish and
//! close idle keep-alive connections. Idle connections sleep in a read, so
//! each one also waits on this signal; when it fires they return, while a
//! connection in the middle of a request finishes it first.

use glommio::sync::Semaphore;
use std::rc::Rc;

/// Fires once; every waiter (now or later) is woken.
#[derive(Clone)]
pub struct ShutdownSignal {
    sem: Rc<Semaphore>,
}

impl Default for ShutdownSignal {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownSignal {
    pub fn new() -> Self {
        ShutdownSignal {
            sem: Rc::new(Semaphore::new(0)),
        }
    }

    /// Fires the signal.
    pub fn fire(&self) {
        self.sem.close();
    }

    pub fn is_fired(&self) -> bool {
        // A closed semaphore refuses every acquire with an error.
        self.sem.try_acquire(1).is_err()
    }

    /// Resolves once the signal has fired.
    pub async fn wait(&self) {
        // The semaphore never has units, so acquire only returns when closed.
        let _ = self.sem.acquire(1).await;
    }

    /// Sleeps for `d`, or less if the signal fires first; true when it
    /// fired (the periodic background loops' "wait for the next pass").
    pub async fn sleep(&self, d: std::time::Duration) -> bool {
        let stop = async {
            self.wait().await;
            true
        };
        let tick = async {
            glommio::timer::sleep(d).await;
            false
        };
        futures_lite::future::or(stop, tick).await
    }
}
