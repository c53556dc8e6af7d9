//! Coalescing: identical queries in flight share one upstream round (DESIGN.md "Coalescing
//! means one upstream query for any number of identical queries in flight"; dnsmasq does the same
//! since 2.83, CVE-2020-25686).
//!
//! The first caller for a key leads: it runs the round and publishes the outcome on a `watch`
//! channel; later callers wait for that value. The outcome (an answer, or "every upstream
//! failed") is computed and counted once and handed to every waiter, so an error fanned out to
//! many clients is still one upstream failure (the reason CoreDNS removed singleflight,
//! coredns#717). If the leader is cancelled, a waiter takes over.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};

use tokio::sync::watch;

/// Rounds in flight, by key.
#[derive(Debug)]
pub(crate) struct Flights<K, V> {
    // A std Mutex: held only to look up or insert, never across an await.
    map: Mutex<HashMap<K, watch::Sender<Option<V>>>>,
}

enum Join<'a, K: Hash + Eq + Clone, V> {
    Leader(Leader<'a, K, V>),
    Follower(watch::Receiver<Option<V>>),
}

struct Leader<'a, K: Hash + Eq + Clone, V> {
    flights: &'a Flights<K, V>,
    key: K,
    sender: watch::Sender<Option<V>>,
}

/// How many times a waiter whose leader vanished tries again before running the round itself.
const MAX_REJOINS: usize = 3;

// === impl Flights ===

impl<K: Hash + Eq + Clone, V: Clone> Flights<K, V> {
    pub(crate) fn new() -> Flights<K, V> {
        Flights {
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Run `round` for `key` unless an identical round is in flight, then share its outcome.
    pub(crate) async fn run<F, Fut>(&self, key: K, round: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        for _ in 0..MAX_REJOINS {
            match self.join(&key) {
                Join::Leader(leader) => {
                    let value = round().await;
                    leader.sender.send_replace(Some(value.clone()));
                    return value;
                }
                Join::Follower(mut receiver) => {
                    if let Ok(value) = receiver.wait_for(Option::is_some).await
                        && let Some(value) = value.clone()
                    {
                        return value;
                    }
                }
            }
        }
        round().await
    }

    /// Rounds in flight now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn join(&self, key: &K) -> Join<'_, K, V> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = map.get(key) {
            return Join::Follower(sender.subscribe());
        }
        let (sender, _) = watch::channel(None);
        map.insert(key.clone(), sender.clone());
        Join::Leader(Leader {
            flights: self,
            key: key.clone(),
            sender,
        })
    }
}

// === impl Leader ===

impl<K: Hash + Eq + Clone, V> Drop for Leader<'_, K, V> {
    /// Done or cancelled: the key is free for the next round. Waiters already subscribed keep
    /// their receiver and see either the value or a closed channel.
    fn drop(&mut self) {
        let mut map = self
            .flights
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map
            .get(&self.key)
            .is_some_and(|s| s.same_channel(&self.sender))
        {
            map.remove(&self.key);
        }
    }
}
