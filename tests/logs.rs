//! The server's logs as an operator reads or collects them.

use e2e::{Conn, Server};
use hyper::StatusCode;

/// With `--log-format json` every log line is one JSON object, the failure
/// cause included.
#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let server = Server::start("testbed", &["--log-format", "json"]);
    let mut conn = Conn::http1(server.addr).await;
    assert_eq!(
        conn.send("GET", "/no-response", "").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    server
        .wait_for_log("returned without setting a response")
        .await;
    let line = server
        .log()
        .lines()
        .find(|line| line.contains("returned without setting a response"))
        .expect("the failure's log line")
        .to_string();
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert!(line.contains(r#""level":"ERROR""#), "{line}");
}
