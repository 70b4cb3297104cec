//! The server's logs as an operator reads or collects them.

use std::time::Duration;

use e2e::{Conn, Launch, Server, TESTBEDS, get};
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

/// What a guest prints reaches the server's stderr a whole line at a time,
/// each line prefixed with its request's id and stream: eight requests
/// printing at once, each line written by the guest in two pieces, never mix
/// within a line, and every request's lines carry one id of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_output_arrives_whole_and_prefixed() {
    for testbed in TESTBEDS {
        println!("with {testbed}");
        let server = Server::start(testbed, &[]);
        let printers: Vec<_> = (0..8)
            .map(|n| {
                let addr = server.addr;
                tokio::spawn(
                    async move { e2e::get(addr, &format!("/print?token=t{n}&lines=50")).await },
                )
            })
            .collect();
        for printer in printers {
            assert_eq!(printer.await.unwrap().text(), "printed\n");
        }
        for n in 0..8 {
            server
                .wait_for_log(&format!("stderr] stderr from t{n}"))
                .await;
        }

        let log = server.log();
        let mut ids = std::collections::HashMap::new();
        for line in log.lines().filter(|line| line.contains(" stdout] ")) {
            // [<id> stdout] line <i> from t<n>
            let (prefix, text) = e2e::guest_line(line).split_once("] ").expect("a prefix");
            let id = prefix
                .strip_prefix('[')
                .and_then(|p| p.strip_suffix(" stdout"))
                .expect("[id stdout]");
            let words: Vec<&str> = text.split(' ').collect();
            assert!(
                words.len() == 4
                    && words[0] == "line"
                    && words[2] == "from"
                    && words[3].starts_with('t'),
                "a broken line: {line:?}"
            );
            let previous = ids.insert(words[3].to_string(), id.to_string());
            assert!(
                previous.is_none_or(|p| p == id),
                "two ids for {}: {line:?}",
                words[3]
            );
        }
        assert_eq!(ids.len(), 8, "{ids:?}");
        let distinct: std::collections::HashSet<_> = ids.values().collect();
        assert_eq!(distinct.len(), 8, "requests shared an id: {ids:?}");
        assert_eq!(log.matches(" stdout] line ").count(), 8 * 50);
    }
}

/// With `--access-log`, each request gets one line with its id, method, path,
/// status, bytes, total time and guest time; the id matches the one on the
/// guest's output.
#[tokio::test]
async fn access_log_line_has_the_fields() {
    for testbed in TESTBEDS {
        println!("with {testbed}");
        let server = Server::start(testbed, &["--access-log"]);
        let mut conn = Conn::http1(server.addr).await;
        assert_eq!(
            conn.send("GET", "/print?token=solo&lines=1", "")
                .await
                .status,
            StatusCode::OK
        );
        assert_eq!(
            conn.send("POST", "/trap?x=1", "").await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        server.wait_for_log("POST /trap?x=1").await;

        let log = server.log();
        let access = |needle: &str| {
            log.lines()
                .find(|line| line.contains(" access: ") && line.contains(needle))
                .unwrap_or_else(|| panic!("no access line for {needle:?} in:\n{log}"))
                .to_string()
        };
        let print = access("GET /print?token=solo&lines=1");
        for field in ["status=200", "bytes=8", "total_ms=", "guest_ms=", "id="] {
            assert!(print.contains(field), "no {field} in {print}");
        }
        let trap = access("POST /trap?x=1");
        assert!(
            trap.contains("status=500") && trap.contains("bytes=22"),
            "{trap}"
        );

        let id = print
            .split(" id=")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .expect("an id");
        assert!(
            log.contains(&format!("[{id} stdout] line 0 from solo")),
            "id {id} not on the guest's output:\n{log}"
        );
    }
}

/// A request's output is capped at `--max-guest-output`: a guest printing
/// without end gets that much into the log, then one line saying the rest
/// was cut off, and its request is answered as usual.
#[tokio::test]
async fn guest_output_is_capped_per_request() {
    let server = Server::start("testbed", &["--max-guest-output", "4KiB"]);
    let reply = get(server.addr, "/print?token=flood&lines=100000").await;
    assert_eq!(reply.text(), "printed\n");
    server.wait_for_log("over --max-guest-output").await;
    let log = server.log();
    let lines = log.matches(" stdout] line ").count();
    // "line NNNNN from flood" is at least 17 bytes: 4 KiB holds at most 241.
    assert!(
        (100..=241).contains(&lines),
        "{lines} lines of output got through"
    );
    assert!(
        !log.contains("stderr from flood"),
        "output past the cap got through"
    );
}

/// A guest cannot forge log lines or send terminal escapes: control
/// characters in its output are escaped in the text log, and with
/// `--log-format json` each of its lines is one JSON object.
#[tokio::test]
async fn guest_output_cannot_forge_log_lines() {
    let text = Server::start("testbed", &[]);
    assert_eq!(get(text.addr, "/print-control").await.text(), "printed\n");
    text.wait_for_log("ERROR forged").await;
    let log = text.log();
    let line = log
        .lines()
        .find(|line| line.contains("ERROR forged"))
        .unwrap();
    assert!(
        e2e::guest_line(line).starts_with('['),
        "a forged line: {line:?}"
    );
    assert!(!log.contains('\x1b') && !log.contains('\r'), "{log:?}");

    let json = Server::start("testbed", &["--log-format", "json"]);
    assert_eq!(get(json.addr, "/print-control").await.text(), "printed\n");
    json.wait_for_log("ERROR forged").await;
    for line in json.log().lines() {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("not a JSON object ({err}): {line:?}"));
        if line.contains("forged") {
            assert_eq!(event["fields"]["stream"], "stdout", "{line}");
            assert!(event["fields"]["id"].is_string(), "{line}");
        }
    }
}

/// A log collector that stops reading the server's stderr (a full pipe)
/// does not stop the server: requests that print keep being answered, their
/// lines dropped rather than waited for.
#[tokio::test]
async fn stuck_stderr_does_not_stall_the_server() {
    let server = Server::start_launched(
        "testbed",
        &["--access-log"],
        &Launch {
            leave_stderr_unread: true,
            ..Launch::default()
        },
    );
    let mut conn = Conn::http1(server.addr).await;
    // 200 x 100 lines of ~20 bytes: 400 KB, several times a pipe's buffer.
    for n in 0..200 {
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            conn.send("GET", &format!("/print?token=t{n}&lines=100"), ""),
        )
        .await
        .unwrap_or_else(|_| panic!("request {n} stalled"));
        assert_eq!(reply.text(), "printed\n");
    }
}

/// The host's own lines about a request carry the request's id, without
/// the code that logs them being given it: a host hook's (an outbound
/// request denied, inside the guest's call) and one from the guest's own
/// task after the head went out (its body cut off at the deadline). The id
/// is the one on the request's access line.
#[tokio::test]
async fn host_lines_about_a_request_carry_its_id() {
    for testbed in TESTBEDS {
        println!("with {testbed}");
        let server = Server::start(testbed, &["--access-log", "--request-timeout", "500ms"]);
        let mut conn = Conn::http1(server.addr).await;
        let denied = conn
            .send("GET", "/outbound?authority=127.0.0.1:9&token=denied", "")
            .await;
        assert_eq!(denied.status, StatusCode::BAD_GATEWAY);
        let cut = Conn::http1(server.addr)
            .await
            .try_send("GET", "/stream?chunks=20&ms=100", "")
            .await;
        assert!(cut.is_err(), "the body was not cut off: {cut:?}");
        server.wait_for_log("GET /stream?chunks=20").await;
        server.wait_for_log("cut it off").await;

        let log = server.log();
        let id_of = |access: &str| {
            let line = log
                .lines()
                .find(|line| line.contains(" access: ") && line.contains(access))
                .unwrap_or_else(|| panic!("no access line for {access:?} in:\n{log}"));
            let id = line
                .split(" id=")
                .nth(1)
                .and_then(|rest| rest.split(' ').next());
            format!("request{{id={}}}", id.expect("an id"))
        };
        let line_with = |needle: &str| {
            log.lines()
                .find(|line| line.contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in:\n{log}"))
                .to_string()
        };
        let denied_line = line_with("outbound request denied");
        assert!(
            denied_line.contains(&id_of("token=denied")),
            "{denied_line}"
        );
        let cut_line = line_with("cut it off");
        assert!(cut_line.contains(&id_of("/stream?chunks=20")), "{cut_line}");
    }
}
