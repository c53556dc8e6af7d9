#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::config::Strategy;

/// `Forwarder` is shared across tasks as `Arc<Forwarder>`.
#[test]
fn forwarder_is_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<Forwarder>();
}

/// The warning goes through once per interval.
#[test]
fn rate_limit_allows_one_per_interval() {
    let limit = RateLimit::new(Duration::from_secs(10));
    let t0 = Instant::now();
    assert!(limit.allow(t0));
    assert!(!limit.allow(t0 + Duration::from_secs(9)));
    assert!(limit.allow(t0 + Duration::from_secs(10)));
    assert!(!limit.allow(t0 + Duration::from_secs(11)));
}

fn pool(strategy: Strategy, n: u16) -> Pool {
    Pool {
        targets: (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([10, 0, 0, 1], 5300 + i));
                Arc::new(Target::new(addr, addr.to_string()))
            })
            .collect(),
        strategy,
    }
}

/// Sequential keeps the configured order; random yields permutations, not always the same one.
#[test]
fn strategies_order_targets() {
    assert_eq!(pool(Strategy::Sequential, 4).order(), vec![0, 1, 2, 3]);
    let random = pool(Strategy::Random, 4);
    let orders: Vec<Vec<usize>> = (0..50).map(|_| random.order()).collect();
    for order in &orders {
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2, 3]);
    }
    assert!(orders.iter().any(|o| *o != orders[0]));
}

/// Identical keys share one round; a cancelled leader hands over to a waiter.
#[tokio::test]
async fn flights_share_one_round() {
    let flights: Arc<Flights<u8, u32>> = Arc::new(Flights::new());
    let rounds = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (flights, rounds) = (flights.clone(), rounds.clone());
            tokio::spawn(async move {
                flights
                    .run(1, || async {
                        rounds.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        7
                    })
                    .await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 7);
    }
    assert_eq!(rounds.load(Ordering::SeqCst), 1);
    assert_eq!(flights.len(), 0);

    let leader = {
        let flights = flights.clone();
        tokio::spawn(async move { flights.run(2, std::future::pending::<u32>).await })
    };
    tokio::task::yield_now().await;
    let follower = {
        let flights = flights.clone();
        tokio::spawn(async move { flights.run(2, || async { 9 }).await })
    };
    tokio::task::yield_now().await;
    leader.abort();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(2), follower)
            .await
            .unwrap()
            .unwrap(),
        9
    );
    assert_eq!(flights.len(), 0);
}

/// `fastest` tries unmeasured targets first, then the lowest smoothed RTT; a failure counts as a
/// full timeout.
#[test]
fn fastest_orders_by_smoothed_rtt() {
    use crate::forward::upstream::Outcome;
    let pool = pool(Strategy::Fastest, 3);
    let timeout = Duration::from_secs(2);
    pool.targets[0].observe(Outcome::Timeout, timeout, timeout);
    pool.targets[1].observe(Outcome::Ok, Duration::from_millis(5), timeout);
    assert_eq!(pool.order(), vec![2, 1, 0]);
    pool.targets[2].observe(Outcome::Ok, Duration::from_millis(50), timeout);
    assert_eq!(pool.order(), vec![1, 2, 0]);
}

/// Two timeouts in a row mark an upstream down: every strategy skips it until a reply (from the
/// probe) brings it back; a reply of any rcode resets the count.
#[tokio::test]
async fn failing_upstream_is_skipped_until_it_answers() {
    let pool = pool(Strategy::Sequential, 2);
    let timeout = Duration::from_secs(2);
    pool.targets[0].record_failure(timeout);
    assert_eq!(pool.order(), vec![0, 1], "one failure is not enough");
    pool.targets[0].record_failure(timeout);
    assert_eq!(pool.order(), vec![1]);
    pool.targets[1].disable();
    assert!(pool.order().is_empty(), "all down: nothing is sprayed");
    assert!(!pool.is_empty(), "down is not disabled");
    pool.targets[0].record_alive();
    assert_eq!(pool.order(), vec![0]);
    pool.targets[0].disable();
    assert!(pool.is_empty());
}
