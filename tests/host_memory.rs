//! Host memory a guest makes the server keep: it stays within the stated
//! bound of `--max-concurrent-requests` x (`--max-memory` +
//! `--max-guest-host-memory`), whatever the guests do.

use std::time::Duration;

use e2e::{Server, TESTBEDS, get};
use hyper::StatusCode;

const INSTANCES: usize = 8;
const MAX_MEMORY_MIB: u64 = 16;
const HOST_BUDGET_MIB: u64 = 16;

/// Eight guests at once each build header sets, each filled to the size the
/// host allows, and keep them all, until the host refuses one more (their
/// resource table is full): each request fails (500), and the server's peak
/// RSS stays within its bound. Before the budget, each such guest could make
/// the host keep about 1.2 GiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hoarding_guests_stay_within_the_stated_bound() {
    let server = Server::start(
        "testbed",
        &[
            "--max-concurrent-requests",
            &INSTANCES.to_string(),
            "--max-memory",
            &format!("{MAX_MEMORY_MIB}MiB"),
            "--max-guest-host-memory",
            &format!("{HOST_BUDGET_MIB}MiB"),
            // One key-value call's share of the budget, small so that the
            // hoarded header sets get most of it.
            "--keyvalue-max-value",
            "64KiB",
        ],
    );
    for _ in 0..20 {
        assert_eq!(get(server.addr, "/").await.status, StatusCode::OK);
    }
    let rss_before = server.rss_kib();

    let hoarders: Vec<_> = (0..INSTANCES)
        .map(|_| {
            let addr = server.addr;
            tokio::spawn(async move { get(addr, "/hoard?fields=100000&kb=28").await })
        })
        .collect();
    for hoarder in hoarders {
        let reply = hoarder.await.unwrap();
        assert_eq!(
            reply.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{}",
            reply.text()
        );
    }
    server.wait_for_log("resource table has no free keys").await;

    let peak = server.peak_rss_kib();
    let bound = rss_before + INSTANCES as u64 * (MAX_MEMORY_MIB + HOST_BUDGET_MIB) * 1024;
    println!("RSS {rss_before} KiB before, peak {peak} KiB, bound {bound} KiB");
    assert!(
        peak <= bound,
        "peak RSS {peak} KiB over the bound of {bound} KiB"
    );
    // And the server goes on.
    assert_eq!(get(server.addr, "/").await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// An outgoing request's method is kept by the host as the guest gives it
/// (over WASI 0.2 and 0.3):
/// longer than 64 bytes is refused like an invalid one, so it cannot carry
/// the guest's memory into the host.
#[tokio::test]
async fn long_request_method_is_refused() {
    for testbed in TESTBEDS {
        println!("with {testbed}");
        let server = Server::start(testbed, &[]);
        assert_eq!(
            get(server.addr, "/set-method?len=64").await.text(),
            "accepted\n"
        );
        assert_eq!(
            get(server.addr, "/set-method?len=65").await.text(),
            "refused\n"
        );
    }
}
