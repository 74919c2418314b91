//! The store actor: the one owner of `state.redb` for async code.
//!
//! A dedicated thread holds the [`State`] and runs the commands sent to it one after the
//! other, each answered on a oneshot channel, as iroh-blobs runs its store: async tasks
//! await the answer and never run a redb transaction (and its fsync) on the runtime.
//! A command is a closure over `&State`, so every [`State`] method is a command without
//! a second, parallel enum to keep in step; what it returns is its typed reply.
//!
//! Reads that hot paths make on every request need no command: the contracts are kept in
//! memory by [`State`] itself ([`State::contracts`], [`State::contract`]). Code that
//! already runs on a blocking thread (the backup's walker) reads through [`Store::blocking`].
//!
//! [`Store::stop`] closes the queue; the thread finishes every command already queued and
//! ends, so a clean shutdown joins it and leaves no write behind.

use crate::id::ContractId;
use crate::state::{ContractRecord, State, StateError};
use std::sync::Mutex;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce(&State) + Send>;

/// Handle to the store thread. Cheap to clone; the thread ends once [`Store::stop`] was
/// called and the commands queued before it are done.
#[derive(Clone)]
pub struct Store {
    state: State,
    jobs: std::sync::Arc<Mutex<Option<std::sync::mpsc::Sender<Job>>>>,
}

impl Store {
    /// Starts the thread owning `state`. Errors: the thread cannot be created.
    pub fn start(state: State) -> std::io::Result<(Store, std::thread::JoinHandle<()>)> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let owned = state.clone();
        let thread = std::thread::Builder::new().name("state-store".into()).spawn(move || {
            while let Ok(job) = rx.recv() {
                job(&owned);
            }
        })?;
        Ok((Store { state, jobs: std::sync::Arc::new(Mutex::new(Some(tx))) }, thread))
    }

    /// Runs `f` on the store thread and returns its answer. Errors: what `f` returns, or
    /// [`StateError::Db`] once the store has stopped.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&State) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, StateError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |s| {
            let _ = tx.send(f(s)); // the caller may have gone; the write is done either way
        });
        let sent = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|q| q.send(job));
        match sent {
            Some(Ok(())) => rx.await.map_err(|_| stopped())?,
            _ => Err(stopped()),
        }
    }

    /// The state, for code running on a blocking thread (never on the async runtime).
    pub fn blocking(&self) -> &State {
        &self.state
    }

    /// Every contract, both roles, from memory (no transaction).
    pub fn contracts(&self) -> Vec<(ContractId, ContractRecord)> {
        self.state.contracts().unwrap_or_default()
    }

    /// The contracts for which `keep` is true, from memory ([`State::contracts_where`]).
    pub fn contracts_where(&self, keep: impl Fn(&ContractRecord) -> bool) -> Vec<(ContractId, ContractRecord)> {
        self.state.contracts_where(keep)
    }

    /// Addresses recorded in the live contracts with `peer` ([`State::contract_addrs`]).
    pub fn contract_addrs(&self, peer: &[u8], now: u64) -> Vec<String> {
        self.state.contract_addrs(peer, now)
    }

    /// One contract, from memory (no transaction).
    pub fn contract(&self, id: &ContractId) -> Option<ContractRecord> {
        self.state.contract(id).ok().flatten()
    }

    /// Closes the queue: commands already sent still run, later ones fail.
    pub fn stop(&self) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

fn stopped() -> StateError {
    StateError::Db("the state store has stopped (the daemon is shutting down)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_run_in_order_and_stop_finishes_the_queue() {
        let d = tempfile::tempdir().unwrap();
        let (store, thread) = Store::start(State::open(&d.path().join("s.redb")).unwrap()).unwrap();
        let writes: Vec<_> = (1..=50u64).map(|i| store.call(move |s| s.set_counter("n", i))).collect();
        futures::future::join_all(writes).await.into_iter().collect::<Result<Vec<_>, _>>().unwrap();
        assert_eq!(store.call(|s| s.counter("n")).await.unwrap(), 50);
        let last = store.call(|s| s.set_counter("n", 99));
        store.stop();
        last.await.unwrap_err(); // sent after stop: refused, not lost silently
        thread.join().unwrap();
        assert!(matches!(store.call(|s| s.counter("n")).await, Err(StateError::Db(_))));
        assert_eq!(store.blocking().counter("n").unwrap(), 50);
    }
}
