//! Work a guest does after its response is complete (analytics, an audit
//! line, a cache fill) runs to its end whatever the protocol and however
//! the client learns that the response is complete: by its
//! `content-length`, because it asked with `HEAD`, or because the status
//! (204, 304) has no body.

use e2e::{Conn, Server, TESTBEDS};
use hyper::StatusCode;

/// One way of asking for `/after`, and the status it answers.
struct Case {
    http2: bool,
    method: &'static str,
    status: u16,
}

const CASES: [Case; 6] = [
    Case {
        http2: false,
        method: "GET",
        status: 200,
    },
    Case {
        http2: false,
        method: "HEAD",
        status: 200,
    },
    Case {
        http2: false,
        method: "GET",
        status: 204,
    },
    Case {
        http2: false,
        method: "GET",
        status: 304,
    },
    Case {
        http2: true,
        method: "GET",
        status: 200,
    },
    Case {
        http2: true,
        method: "HEAD",
        status: 200,
    },
];

/// The guest answers, its client has the whole response, and 200 ms later
/// the guest prints a line: the line reaches the log over HTTP/1.1 and
/// HTTP/2, for a `content-length` body, a `HEAD`, a 204 and a 304, for both
/// kinds of guest. The client keeps its connection open all along, as a
/// keep-alive client does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_after_the_answer_is_never_cancelled() {
    for testbed in TESTBEDS {
        let server = Server::start(testbed, &[]);
        let mut conns = Vec::new();
        for (n, case) in CASES.iter().enumerate() {
            let what = format!(
                "{testbed}, {} {} answering {}",
                if case.http2 { "HTTP/2" } else { "HTTP/1.1" },
                case.method,
                case.status
            );
            let mut conn = if case.http2 {
                Conn::http2(server.addr).await
            } else {
                Conn::http1(server.addr).await
            };
            let path = format!("/after?status={}&ms=200&token=t{n}", case.status);
            let reply = conn.send(case.method, &path, "").await;
            assert_eq!(
                reply.status,
                StatusCode::from_u16(case.status).unwrap(),
                "{what}"
            );
            let expected: &[u8] = match (case.method, case.status) {
                ("GET", 200) => b"done\n",
                _ => b"",
            };
            assert_eq!(&reply.body[..], expected, "{what}");
            // Kept open: the connection ending is not what lets the guest on.
            conns.push(conn);
            server.wait_for_log(&format!("after from t{n}")).await;
        }
    }
}

/// Work after the answer still ends at `--request-timeout`; the log says
/// the guest ran past it after its response was complete, not that the
/// response was cut off: its client had all of it.
#[tokio::test]
async fn work_past_the_deadline_after_the_answer_is_not_a_cut_off() {
    for testbed in TESTBEDS {
        let server = Server::start(testbed, &["--request-timeout", "1s"]);
        let mut conn = Conn::http1(server.addr).await;
        let reply = conn.send("GET", "/after?ms=3000&token=late", "").await;
        assert_eq!(reply.text(), "done\n", "{testbed}");
        server
            .wait_for_log("the guest failed after its response was complete")
            .await;
        let log = server.log();
        assert!(!log.contains("cut it off"), "{testbed}:\n{log}");
        assert!(!log.contains("after from late"), "{testbed}:\n{log}");
    }
}
