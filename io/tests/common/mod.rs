//! What the io crate's socket-level tests share: running a test on its own
//! glommio executor, and reading a peer's whole output.
#![allow(dead_code)]

use futures_lite::io::{AsyncRead, AsyncReadExt};
use glommio::LocalExecutorBuilder;
use std::future::Future;
use std::time::Duration;

/// Runs `test` on a fresh executor, failing it after 20 s.
pub fn run<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::default()
        .spawn(move || async move {
            glommio::timer::timeout(Duration::from_secs(20), async {
                test().await;
                Ok(())
            })
            .await
            .expect("test timed out");
        })
        .expect("executor starts")
        .join()
        .expect("test executor");
}

/// Everything the peer writes until it closes.
pub async fn read_to_end<S: AsyncRead + Unpin>(client: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.expect("read");
    out
}
