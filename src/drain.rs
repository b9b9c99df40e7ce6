//! Work that shutdown waits for: each piece holds a [`Token`]; [`Drain::close`] refuses new
//! tokens and resolves once every token handed out has been dropped.

use std::sync::Mutex;
use tokio::sync::mpsc;

pub struct Drain {
    /// The original sender; every token is a clone. Taken at close, so the receiver sees the
    /// channel end once the last token is gone.
    open: Mutex<Option<mpsc::Sender<()>>>,
    done: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

/// Held by one piece of work for as long as shutdown must wait for it.
pub struct Token(#[allow(dead_code)] mpsc::Sender<()>);

impl Default for Drain {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(1);
        Drain {
            open: Mutex::new(Some(tx)),
            done: tokio::sync::Mutex::new(rx),
        }
    }
}

impl Drain {
    /// A token for new work; `None` once closing (the work then runs unwaited for).
    pub fn token(&self) -> Option<Token> {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|tx| Token(tx.clone()))
    }

    /// Refuses new tokens and waits until every token is dropped.
    pub async fn close(&self) {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut done = self.done.lock().await;
        // Nothing is ever sent: `None` means every sender (token) is gone.
        while done.recv().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn close_waits_for_every_token_and_refuses_new_ones() {
        let drain = std::sync::Arc::new(Drain::default());
        let token = drain.token().unwrap();
        let work = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(token);
        });
        let closing = {
            let drain = drain.clone();
            tokio::spawn(async move { drain.close().await })
        };
        tokio::task::yield_now().await;
        assert!(drain.token().is_none(), "a token after close began");
        assert!(!closing.is_finished(), "closed while a token was held");
        work.await.unwrap();
        tokio::time::timeout(Duration::from_millis(10), closing)
            .await
            .expect("closed once the last token dropped")
            .unwrap();
        // A second close returns at once.
        drain.close().await;
    }
}
