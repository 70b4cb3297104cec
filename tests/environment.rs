//! What the guest sees of the environment: exactly the `--env` variables.

use e2e::{Server, TESTBEDS, get};
use hyper::StatusCode;

/// `--env KEY=VALUE` and `--env KEY` (the server's own value) reach the guest
/// through `wasi:cli/environment`; nothing else of the server's environment
/// does.
#[tokio::test]
async fn env_reaches_the_guest() {
    for testbed in TESTBEDS {
        println!("with {testbed}");
        let server = Server::start_with_env(
            testbed,
            &["--env", "GREETING=hello there", "--env", "FROM_HOST"],
            &[("FROM_HOST", "passed on"), ("NOT_PASSED", "secret")],
        );
        let reply = get(server.addr, "/env?name=GREETING").await;
        assert_eq!(
            (reply.status, reply.text()),
            (StatusCode::OK, "hello there\n")
        );
        let reply = get(server.addr, "/env?name=FROM_HOST").await;
        assert_eq!(
            (reply.status, reply.text()),
            (StatusCode::OK, "passed on\n")
        );
        for hidden in ["NOT_PASSED", "PATH", "HOME"] {
            let reply = get(server.addr, &format!("/env?name={hidden}")).await;
            assert_eq!(
                reply.status,
                StatusCode::NOT_FOUND,
                "{hidden} reached the guest"
            );
        }
    }
}
