//! The dispatcher: which waiting lease gets woken when work arrives.
//!
//! An agent whose lease finds nothing ready registers here and sleeps. A write
//! that makes tasks ready says so ([`Dispatcher::ready`]) and the dispatcher wakes
//! just enough waiters to take them — best ranked first — instead of every waiter
//! re-reading the queue after every commit. A woken waiter leases at once; its
//! lease runs after the write that woke it — later in the same writer batch, or
//! in a later one — so it sees the tasks. Anything the dispatcher is not told about (a retry whose backoff ends, a
//! steal delay that passes, a write on another replica) is found by each waiter's
//! periodic re-check.
//!
//! A waiter woken to lease is announced to the store as a follower of the write
//! that woke it ([`strata_store::Followers`]): that write's batch waits briefly
//! for the lease before committing, so a submission and the lease of its task
//! usually share one commit.
//!
//! Ranking among waiters uses discovery's score (see [`crate::discovery`]), kept
//! per agent and capability by [`Dispatcher::set_scores`]; an agent with no score
//! yet ranks as a new agent would (0.5), and ties go to the longest waiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_store::{Follower, Followers};
use tokio::sync::Notify;

/// The score of an agent the dispatcher has not ranked yet.
const UNRANKED: f64 = 0.5;

/// Waiting leases, and the scores that rank them.
#[derive(Clone, Default)]
pub struct Dispatcher {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// Where a lease wake-up is announced to the writer (none in unit tests).
    followers: Option<Followers>,
    next: u64,
    waiters: Vec<Waiter>,
    /// (agent, capability) → discovery score.
    scores: HashMap<(String, String), f64>,
}

struct Waiter {
    id: u64,
    agent: String,
    caps: Vec<String>,
    max: u32,
    /// Why it was woken, until it reads that (and is armed again).
    woken: Option<Wake>,
    /// The lease write the store expects of it, once woken to lease.
    follower: Option<Follower>,
    wake: Arc<Notify>,
}

/// Why a waiter was woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Tasks it can take were queued by a write still in the writer: lease now
    /// (the lease runs after that write, in its batch or a later one).
    Lease,
    /// Something changed that may or may not concern it: look at the queue.
    Check,
}

/// Tasks that just became ready.
#[derive(Debug, Clone, Copy)]
pub struct Ready<'a> {
    /// Their capability.
    pub capability: &'a str,
    /// The agent they are pinned to, if any. Only that agent is woken: another
    /// may steal a stealable task only after the steal delay, which the waiters'
    /// re-check finds.
    pub pinned: Option<&'a str>,
    /// How many.
    pub count: usize,
}

/// A registered waiter; dropping it deregisters.
pub struct Waiting {
    dispatcher: Dispatcher,
    id: u64,
    wake: Arc<Notify>,
}

impl Waiting {
    /// Sleeps until woken (saying why) or until `timeout` passes (`None`). It is
    /// armed again for the next wake-up.
    pub async fn woken(&self, timeout: Duration) -> Option<Wake> {
        let _ = tokio::time::timeout(timeout, self.wake.notified()).await;
        self.take(|w| w.woken.take())
    }

    /// The store's expectation of this waiter's lease write, after a
    /// [`Wake::Lease`]: move it into that write and drop it when the write runs
    /// (dropping it sooner only ends the writer's wait for it).
    pub fn follower(&self) -> Option<Follower> {
        self.take(|w| w.follower.take())
    }

    /// Takes something out of this waiter's entry in the dispatcher.
    fn take<T>(&self, f: impl FnOnce(&mut Waiter) -> Option<T>) -> Option<T> {
        let id = self.id;
        self.dispatcher
            .with(|i| i.waiters.iter_mut().find(|w| w.id == id).and_then(f))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let id = self.id;
        self.dispatcher.with(|i| i.waiters.retain(|w| w.id != id));
    }
}

impl Dispatcher {
    /// A dispatcher that announces each lease it wakes to `followers`.
    pub fn new(followers: Followers) -> Dispatcher {
        let d = Dispatcher::default();
        d.with(|i| i.followers = Some(followers));
        d
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut inner)
    }

    /// Registers `agent`, able to do `caps`, waiting for up to `max` tasks.
    /// Register before checking the queue, so no wake-up falls between the two.
    pub fn wait(&self, agent: &str, caps: &[String], max: u32) -> Waiting {
        let wake = Arc::new(Notify::new());
        let id = self.with(|i| {
            i.next += 1;
            i.waiters.push(Waiter {
                id: i.next,
                agent: agent.to_string(),
                caps: caps.to_vec(),
                max: max.max(1),
                woken: None,
                follower: None,
                wake: wake.clone(),
            });
            i.next
        });
        Waiting {
            dispatcher: self.clone(),
            id,
            wake,
        }
    }

    /// Wakes the best-ranked armed waiters able to take `r` (call it from the
    /// write that queues them), until their combined `max` covers its count.
    pub fn ready(&self, r: Ready<'_>) {
        if r.count == 0 {
            return;
        }
        self.with(|i| {
            let mut able: Vec<(f64, usize)> = i
                .waiters
                .iter()
                .enumerate()
                .filter(|(_, w)| w.woken.is_none() && w.caps.iter().any(|c| c == r.capability))
                .filter(|(_, w)| r.pinned.is_none_or(|p| p == w.agent))
                .map(|(at, w)| {
                    let score = i
                        .scores
                        .get(&(w.agent.clone(), r.capability.to_string()))
                        .copied()
                        .unwrap_or(UNRANKED);
                    (score, at)
                })
                .collect();
            // Best score first; among equals, the longest waiting (lowest index).
            able.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut covered = 0usize;
            for (_, at) in able {
                if covered >= r.count {
                    break;
                }
                let w = &mut i.waiters[at];
                covered += w.max as usize;
                w.woken = Some(Wake::Lease);
                w.follower = i.followers.as_ref().map(Followers::expect);
                w.wake.notify_one();
            }
        });
    }

    /// Wakes waiters for newly queued tasks, one [`Ready`] per capability and pin.
    pub fn queued<'a>(&self, tasks: impl IntoIterator<Item = Ready<'a>>) {
        let mut groups: Vec<Ready<'a>> = Vec::new();
        for t in tasks {
            match groups
                .iter_mut()
                .find(|g| g.capability == t.capability && g.pinned == t.pinned)
            {
                Some(g) => g.count += t.count,
                None => groups.push(t),
            }
        }
        for g in groups {
            self.ready(g);
        }
    }

    /// Wakes every armed waiter to look at the queue (call it after a commit that
    /// made tasks of unknown kind ready, such as requeued leases).
    pub fn ready_any(&self) {
        self.with(|i| {
            for w in i.waiters.iter_mut().filter(|w| w.woken.is_none()) {
                w.woken = Some(Wake::Check);
                w.wake.notify_one();
            }
        });
    }

    /// The capabilities some waiter is waiting for (whose scores are worth keeping fresh).
    pub fn wanted(&self) -> Vec<String> {
        self.with(|i| {
            let mut caps: Vec<String> = i.waiters.iter().flat_map(|w| w.caps.iter().cloned()).collect();
            caps.sort_unstable();
            caps.dedup();
            caps
        })
    }

    /// Replaces the scores of `capability` (agent, score).
    pub fn set_scores(&self, capability: &str, scores: impl IntoIterator<Item = (String, f64)>) {
        self.with(|i| {
            i.scores.retain(|(_, c), _| c != capability);
            for (agent, s) in scores {
                i.scores.insert((agent, capability.to_string()), s);
            }
        });
    }

    /// How many leases are waiting.
    pub fn waiting(&self) -> usize {
        self.with(|i| i.waiters.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    async fn was_woken(w: &Waiting) -> bool {
        w.woken(Duration::from_millis(1)).await == Some(Wake::Lease)
    }

    fn ready(capability: &str, count: usize) -> Ready<'_> {
        Ready {
            capability,
            pinned: None,
            count,
        }
    }

    #[tokio::test]
    async fn wakes_only_enough_capable_waiters() {
        let d = Dispatcher::default();
        let a = d.wait("a", &caps(&["x"]), 1);
        let b = d.wait("b", &caps(&["x"]), 1);
        let c = d.wait("c", &caps(&["y"]), 1);
        d.ready(ready("x", 1));
        assert!(!was_woken(&b).await, "one task wakes one waiter");
        // `a` has not read its wake-up yet, so the next task goes to `b`.
        d.ready(ready("x", 1));
        assert!(
            was_woken(&a).await,
            "the longest waiting capable agent wakes first"
        );
        assert!(was_woken(&b).await);
        assert!(!was_woken(&c).await, "an agent without the capability sleeps");
        assert_eq!(d.waiting(), 3);
    }

    #[tokio::test]
    async fn a_batch_wakes_waiters_until_their_max_covers_it() {
        let d = Dispatcher::default();
        let a = d.wait("a", &caps(&["x"]), 2);
        let b = d.wait("b", &caps(&["x"]), 2);
        let c = d.wait("c", &caps(&["x"]), 2);
        d.ready(ready("x", 3));
        assert!(was_woken(&a).await && was_woken(&b).await);
        assert!(!was_woken(&c).await);
    }

    #[tokio::test]
    async fn the_best_scored_waiter_wakes_first() {
        let d = Dispatcher::default();
        let low = d.wait("low", &caps(&["x"]), 1);
        let high = d.wait("high", &caps(&["x"]), 1);
        d.set_scores("x", [("low".to_string(), 0.2), ("high".to_string(), 0.9)]);
        d.ready(ready("x", 1));
        assert!(was_woken(&high).await);
        assert!(!was_woken(&low).await);
    }

    #[tokio::test]
    async fn a_pinned_task_wakes_only_its_agent() {
        let d = Dispatcher::default();
        let other = d.wait("other", &caps(&["x"]), 1);
        let pinned = d.wait("pinned", &caps(&["x"]), 1);
        d.ready(Ready {
            pinned: Some("pinned"),
            ..ready("x", 1)
        });
        assert!(was_woken(&pinned).await);
        assert!(!was_woken(&other).await, "stealing waits for the steal delay");
    }

    #[tokio::test]
    async fn a_lease_wake_up_is_announced_to_the_writer_until_its_write_runs() {
        let followers = Followers::default();
        let d = Dispatcher::new(followers.clone());
        let a = d.wait("a", &caps(&["x"]), 1);
        let b = d.wait("b", &caps(&["x"]), 1);
        d.ready(ready("x", 2));
        assert_eq!(followers.expected(), 2, "each woken lease is announced");
        assert!(was_woken(&a).await);
        let follower = a.follower();
        assert!(follower.is_some(), "the woken waiter carries its announcement");
        drop(a);
        assert_eq!(
            followers.expected(),
            2,
            "the announcement lives in the lease's write"
        );
        drop(follower);
        assert_eq!(followers.expected(), 1);
        drop(b);
        assert_eq!(followers.expected(), 0, "a waiter that goes away withdraws it");
        d.ready_any();
        assert_eq!(followers.expected(), 0, "a re-check is not a lease");
    }

    #[tokio::test]
    async fn a_wake_before_the_sleep_is_not_lost_and_drop_deregisters() {
        let d = Dispatcher::default();
        let a = d.wait("a", &caps(&["x"]), 1);
        d.ready_any();
        assert_eq!(a.woken(Duration::from_millis(1)).await, Some(Wake::Check));
        assert_eq!(a.woken(Duration::from_millis(1)).await, None, "read once");
        d.ready(ready("x", 1));
        assert!(was_woken(&a).await, "armed again after reading its wake-up");
        drop(a);
        let b = d.wait("b", &caps(&["x"]), 1);
        drop(b);
        assert_eq!(d.waiting(), 0);
    }
}
