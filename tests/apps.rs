//! A Spin application (`spin.toml`) served whole: several components behind
//! one listener, routed by path as Spin routes them, each with what its
//! manifest entry gives it (environment, variables, stores, files), and what
//! cannot be served refused at startup with its line.

use std::path::{Path, PathBuf};

use e2e::{Server, get, get_ok, run_to_exit};
use hyper::StatusCode;

/// Writes `spin.toml` (with `COMPONENTS` replaced by the folder of the
/// built components) and a `static/` folder into a fresh directory.
fn app_dir(name: &str, manifest: &str) -> PathBuf {
    let dir = e2e::temp_dir(name);
    let components = e2e::component("hello");
    let components = components.parent().unwrap().display().to_string();
    std::fs::write(
        dir.join("spin.toml"),
        manifest.replace("COMPONENTS", &components),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("static")).unwrap();
    std::fs::write(dir.join("static/index.html"), "<h1>static</h1>\n").unwrap();
    dir
}

/// Four components: the hello at `/`, the spin-sdk 7 guest under a route
/// with a named segment, the testbed at two exact routes, and a private one.
const APP: &str = r#"
spin_manifest_version = 2

[application]
name = "e2e-app"

[variables]
greeting = { default = "hello from the app" }
api_token = { required = true, secret = true }

[[trigger.http]]
route = "/"
component = "hello"

[[trigger.http]]
route = "/spin/:tenant/..."
component = "spin"

[[trigger.http]]
route = "/request"
component = "testbed"

[[trigger.http]]
route = "/env"
component = "testbed"

[[trigger.http]]
route = "/outbound"
component = "testbed"

[[trigger.http]]
route = { private = true }
component = "hidden"

[component.hello]
source = "COMPONENTS/hello.wasm"

[component.spin]
source = "COMPONENTS/spin-guest.wasm"
key_value_stores = ["default"]
files = [{ source = "static", destination = "/static" }]
variables = { message = "{{ greeting }}!", token = "{{ api_token }}" }

[component.spin.build]
command = "cargo build --target wasm32-wasip2 --release"

[component.testbed]
source = "COMPONENTS/testbed.wasm"
environment = { COMPONENT = "testbed" }
allowed_outbound_hosts = ["http://hidden.spin.internal", "http://ghost.spin.internal"]

[component.hidden]
source = "COMPONENTS/hello.wasm"
"#;

/// The application's server, with its secret given as Spin takes it.
fn start(dir: &Path) -> Server {
    let data = dir.join("data");
    Server::start_path(
        &dir.join("spin.toml"),
        &[],
        &[
            ("SPIN_VARIABLE_API_TOKEN", "s3cret-token"),
            ("XDG_DATA_HOME", data.to_str().unwrap()),
        ],
    )
}

/// Each route is answered by its component; an unmatched path is 404, and
/// Spin's health path is answered by the server.
#[tokio::test]
async fn each_route_reaches_its_component() {
    let dir = app_dir("app-routes", APP);
    let server = start(&dir);
    assert_eq!(get_ok(server.addr, "/").await, "Hello World\n");
    assert!(
        get_ok(server.addr, "/request")
            .await
            .contains("path /request\n")
    );
    assert_eq!(
        get_ok(server.addr, "/env?name=COMPONENT").await,
        "testbed\n"
    );
    assert_eq!(get_ok(server.addr, "/spin/acme/").await, "Hello World\n");
    for unmatched in ["/nowhere", "/request/more", "/spin"] {
        let reply = get(server.addr, unmatched).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{unmatched}");
    }
    assert_eq!(get_ok(server.addr, "/.well-known/spin/health").await, "OK");
    assert!(
        server.log().contains("an application of 4 components"),
        "{}",
        server.log()
    );
}

/// A routed component gets the headers Spin sets, with Spin's values, and a
/// client cannot forge them.
#[tokio::test]
async fn routed_requests_carry_spins_headers() {
    let dir = app_dir("app-headers", APP);
    let server = start(&dir);
    // The support client sends `host: test.local`.
    let headers = get_ok(server.addr, "/spin/acme/headers?x=1").await;
    for expected in [
        "spin-full-url: http://test.local/spin/acme/headers?x=1".to_string(),
        "spin-path-info: /headers".into(),
        "spin-matched-route: /spin/:tenant/...".into(),
        "spin-raw-component-route: /spin/:tenant/...".into(),
        "spin-component-route: /spin/:tenant".into(),
        "spin-base-path: /".into(),
        "spin-path-match-tenant: acme".into(),
        "spin-client-addr: 127.0.0.1:".into(),
    ] {
        assert!(headers.contains(&expected), "{expected} not in\n{headers}");
    }
    let seen = get_ok(server.addr, "/request").await;
    assert!(
        seen.contains("header spin-matched-route: /request\n"),
        "{seen}"
    );
    assert!(seen.contains("header spin-path-info: \n"), "{seen}");

    let mut conn = e2e::Conn::http1(server.addr).await;
    let request = hyper::Request::get("/spin/acme/headers")
        .header("host", "127.0.0.1")
        .header("spin-path-match-tenant", "forged")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let reply = conn.try_exchange(request).await.unwrap();
    assert!(
        reply.text().contains("spin-path-match-tenant: acme\n"),
        "{}",
        reply.text()
    );
    assert!(!reply.text().contains("forged"), "{}", reply.text());
}

/// A private component has no route, yet another component reaches it at
/// `http://hidden.spin.internal`, in process, when its manifest allows that
/// host; a component it does not allow is denied, and a name the
/// application lacks is not found.
#[tokio::test]
async fn a_private_component_is_reached_only_from_inside() {
    let dir = app_dir("app-private", APP);
    let server = start(&dir);
    assert_eq!(
        get_ok(server.addr, "/outbound?authority=hidden.spin.internal").await,
        "Hello World\n"
    );
    for (authority, error) in [
        ("hello.spin.internal", "HttpRequestDenied"),
        ("ghost.spin.internal", "DestinationNotFound"),
    ] {
        let reply = get(server.addr, &format!("/outbound?authority={authority}")).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{authority}");
        assert!(
            reply.text().contains(error),
            "{authority}: {}",
            reply.text()
        );
    }
    let reply = get(server.addr, "/hidden").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

/// Each component's `allowed_outbound_hosts`, in Spin's forms (a port
/// range, `self`, `*.spin.internal`), lets that component out and no other:
/// the same requests from a component that lists nothing are denied.
#[tokio::test]
async fn outbound_hosts_are_per_component_in_spins_forms() {
    let upstream = Server::start("hello", &[]);
    let port = upstream.addr.port();
    let manifest = format!(
        r#"
spin_manifest_version = 2
[application]
name = "e2e-outbound"
[[trigger.http]]
route = "/"
component = "hello"
[[trigger.http]]
route = "/outbound"
component = "open"
[[trigger.http]]
route = "/closed/..."
component = "closed"
[component.hello]
source = "COMPONENTS/hello.wasm"
[component.open]
source = "COMPONENTS/testbed.wasm"
allowed_outbound_hosts = ["http://127.0.0.1:{}..{}", "http://self", "http://*.spin.internal"]
[component.closed]
source = "COMPONENTS/testbed.wasm"
"#,
        port - 1,
        port + 1
    );
    let dir = app_dir("app-outbound", &manifest);
    let server = start(&dir);
    for authority in [
        format!("127.0.0.1:{port}"),
        "self".to_string(),
        "hello.spin.internal".to_string(),
    ] {
        assert_eq!(
            get_ok(server.addr, &format!("/outbound?authority={authority}")).await,
            "Hello World\n",
            "{authority}"
        );
        let reply = get(
            server.addr,
            &format!("/closed/outbound?authority={authority}"),
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{authority}");
        assert!(
            reply.text().contains("HttpRequestDenied"),
            "{authority}: {}",
            reply.text()
        );
    }
    let reply = get(
        server.addr,
        &format!("/outbound?authority=localhost:{port}"),
    )
    .await;
    assert!(
        reply.text().contains("HttpRequestDenied"),
        "{}",
        reply.text()
    );
}

/// A component that calls itself through `http://self` without end holds
/// one instance per hop until its slots are taken; the next hop waits
/// `--queue-timeout` and is refused, the chain unwinds, and the server
/// serves the next requests, the same component's included.
#[tokio::test]
async fn a_component_calling_itself_forever_is_stopped_by_its_limits() {
    let manifest = r#"
spin_manifest_version = 2
[application]
name = "e2e-recursion"
[[trigger.http]]
route = "/"
component = "hello"
[[trigger.http]]
route = "/recurse"
component = "loop"
[component.hello]
source = "COMPONENTS/hello.wasm"
[component.loop]
source = "COMPONENTS/testbed.wasm"
allowed_outbound_hosts = ["http://self"]
"#;
    let dir = app_dir("app-recursion", manifest);
    let server = Server::start_path(
        &dir.join("spin.toml"),
        &["--max-concurrent-requests", "4", "--queue-timeout", "200ms"],
        &[("XDG_DATA_HOME", dir.join("data").to_str().unwrap())],
    );
    for _ in 0..2 {
        let reply = get(server.addr, "/recurse").await;
        // The outermost hop answers with what the innermost was told: the
        // server is busy (503), its slots (in the serving process the chain
        // runs in) held by the chain.
        assert!(
            reply.text().contains("Service Unavailable"),
            "{:?}: {}",
            reply.status,
            reply.text()
        );
        e2e::assert_hello(&get(server.addr, "/").await);
    }
}

/// Variables are bound per component through its templates, from the
/// application's defaults and `SPIN_VARIABLE_*`; a secret never reaches the
/// log. Another component has no variables.
#[tokio::test]
async fn variables_are_bound_per_component_and_secrets_stay_out_of_the_log() {
    let dir = app_dir("app-variables", APP);
    let server = start(&dir);
    assert_eq!(
        get_ok(server.addr, "/spin/acme/var/message").await,
        "hello from the app!"
    );
    assert_eq!(
        get_ok(server.addr, "/spin/acme/var/token").await,
        "s3cret-token"
    );
    let reply = get(server.addr, "/spin/acme/var/greeting").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());
    assert!(reply.text().contains("Undefined"), "{}", reply.text());
    assert!(!server.log().contains("s3cret-token"), "{}", server.log());
}

/// A component opens only the stores its manifest lists (`access-denied`
/// for others, as Spin), and its `files` are readable, not writable.
#[tokio::test]
async fn stores_and_files_are_what_the_manifest_grants() {
    let dir = app_dir("app-grants", APP);
    let server = start(&dir);
    assert_eq!(get_ok(server.addr, "/spin/acme/count").await, "1\n");
    assert_eq!(get_ok(server.addr, "/spin/acme/count").await, "2\n");
    assert_eq!(
        get_ok(server.addr, "/spin/acme/open/default").await,
        "opened\n"
    );
    let reply = get(server.addr, "/spin/acme/open/other").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.text().contains("AccessDenied"), "{}", reply.text());
    assert_eq!(
        get_ok(server.addr, "/spin/acme/file/index.html").await,
        "<h1>static</h1>\n"
    );
    let reply = get(server.addr, "/spin/acme/write/new.txt").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert!(!dir.join("static/new.txt").exists());
}

/// The repo's own `spin.toml`, as the README runs it: the hello at `/`, the
/// counter on the default store, the file server on `app/static`, and
/// nothing else.
#[tokio::test]
async fn the_repos_own_application_answers_its_three_routes() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let data = e2e::temp_dir("repo-app");
    let server = Server::start_path(
        &repo.join("spin.toml"),
        &[],
        &[("XDG_DATA_HOME", data.to_str().unwrap())],
    );
    e2e::assert_hello(&get(server.addr, "/").await);
    assert_eq!(get_ok(server.addr, "/count").await, "1\n");
    assert_eq!(get_ok(server.addr, "/count").await, "2\n");
    let page = get(server.addr, "/static/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let index = std::fs::read_to_string(repo.join("app/static/index.html")).unwrap();
    assert_eq!(page.text(), index);
    let css = get(server.addr, "/static/style.css").await;
    assert_eq!(css.headers["content-type"], "text/css; charset=utf-8");
    let mut conn = e2e::Conn::http1(server.addr).await;
    let head = conn.send("HEAD", "/static/index.html", "").await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.headers["content-length"], index.len().to_string());
    assert!(head.body.is_empty());
    let delete = conn.send("DELETE", "/static/index.html", "").await;
    assert_eq!(delete.status, StatusCode::METHOD_NOT_ALLOWED);
    for outside in [
        "/static/missing.html",
        "/static/../spin.toml",
        "/static/%2e%2e/spin.toml",
        "/elsewhere",
    ] {
        let reply = get(server.addr, outside).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{outside}: {}",
            reply.text()
        );
    }
}

/// `--processes 2` serves the same application from two single-threaded
/// processes: every route answers, and the counter, on one store shared by
/// both, gives every count once under 8 concurrent clients.
#[tokio::test]
async fn several_processes_serve_the_application_alike() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let data = e2e::temp_dir("repo-app-processes");
    let server = Server::start_path(
        &repo.join("spin.toml"),
        &["--processes", "2"],
        &[("XDG_DATA_HOME", data.to_str().unwrap())],
    );
    e2e::assert_hello(&get(server.addr, "/").await);
    let css = get(server.addr, "/static/style.css").await;
    assert_eq!(css.status, StatusCode::OK, "{}", css.text());
    e2e::each_answer_once(&[&server], "/count", 80).await;
}

/// Two components built from the same file are still two pools: each takes
/// `--max-concurrent-requests` instances at once, while the other is full.
#[tokio::test]
async fn alike_components_each_have_their_own_slots() {
    let manifest = r#"
spin_manifest_version = 2
[application]
name = "e2e-alike"
[[trigger.http]]
route = "/a/..."
component = "a"
[[trigger.http]]
route = "/b/..."
component = "b"
[component.a]
source = "COMPONENTS/testbed.wasm"
[component.b]
source = "COMPONENTS/testbed.wasm"
"#;
    let dir = app_dir("app-alike", manifest);
    // Pools belong to a serving process, and which process a connection
    // reaches is the kernel's choice: one process makes it exact.
    let server = Server::start_path(
        &dir.join("spin.toml"),
        &["--max-concurrent-requests", "2", "--processes", "1"],
        &[("XDG_DATA_HOME", dir.join("data").to_str().unwrap())],
    );
    // Each answers at once and keeps its instance for a second after.
    let requests: Vec<_> = ["/a", "/a", "/b", "/b"]
        .into_iter()
        .map(|prefix| {
            let addr = server.addr;
            tokio::spawn(async move { get(addr, &format!("{prefix}/after?ms=1000")).await })
        })
        .collect();
    for request in requests {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
}

/// `/metrics` counts each route's requests by component, route and status
/// class, every route listed from the start; the access log names the
/// component and route of a routed request, and none for an unmatched one.
#[tokio::test]
async fn metrics_and_the_access_log_name_the_component_and_route() {
    let dir = app_dir("app-metrics", APP);
    let data = dir.join("data");
    let server = Server::start_path(
        &dir.join("spin.toml"),
        &["--access-log", "--admin-addr", "127.0.0.1:0"],
        &[
            ("SPIN_VARIABLE_API_TOKEN", "s3cret-token"),
            ("XDG_DATA_HOME", data.to_str().unwrap()),
        ],
    );
    get_ok(server.addr, "/").await;
    get_ok(server.addr, "/").await;
    get_ok(server.addr, "/spin/acme/").await;
    assert_eq!(
        get(server.addr, "/unrouted").await.status,
        StatusCode::NOT_FOUND
    );
    server.wait_for_log("GET /unrouted").await;
    let metrics = get(server.admin.unwrap(), "/metrics").await;
    let count = |labels: &str| {
        let series = format!("wasi_http_server_route_requests_total{{{labels}}} ");
        let line = metrics
            .text()
            .lines()
            .find(|line| line.starts_with(&series));
        let line = line.unwrap_or_else(|| panic!("no {series} in\n{}", metrics.text()));
        line[series.len()..].parse::<u64>().unwrap()
    };
    assert_eq!(count(r#"component="hello",route="/",class="2xx""#), 2);
    assert_eq!(
        count(r#"component="spin",route="/spin/:tenant/...",class="2xx""#),
        1
    );
    assert_eq!(count(r#"component="testbed",route="/env",class="2xx""#), 0);
    assert!(
        !metrics.text().contains(r#"component="hidden""#),
        "a private component has no route"
    );
    let log = server.log();
    let access = |request: &str| {
        log.lines()
            .find(|line| line.contains(" access: ") && line.contains(request))
            .unwrap_or_else(|| panic!("no access line for {request:?} in:\n{log}"))
            .to_string()
    };
    let routed = access("GET /spin/acme/ ");
    assert!(
        routed.contains(r#"component="spin" route="/spin/:tenant/...""#),
        "{routed}"
    );
    let unrouted = access("GET /unrouted ");
    assert!(!unrouted.contains("component="), "{unrouted}");
}

/// `files` given as Spin's globs and single files, with `exclude_files`:
/// the component sees what they select at the paths Spin gives them, and
/// nothing else of the application's folder.
#[tokio::test]
async fn globs_single_files_and_exclusions_place_files_as_spin_does() {
    let manifest = APP.replace(
        r#"files = [{ source = "static", destination = "/static" }]"#,
        r#"files = ["static/*.html", { source = "notes.txt", destination = "/static/notes.txt" }]
exclude_files = ["static/secret*"]"#,
    );
    let dir = app_dir("app-globs", &manifest);
    std::fs::write(dir.join("static/secret.html"), "secret\n").unwrap();
    std::fs::write(dir.join("static/draft.tmp"), "draft\n").unwrap();
    std::fs::write(dir.join("notes.txt"), "notes\n").unwrap();
    let server = start(&dir);
    assert_eq!(
        get_ok(server.addr, "/spin/acme/file/index.html").await,
        "<h1>static</h1>\n"
    );
    assert_eq!(
        get_ok(server.addr, "/spin/acme/file/notes.txt").await,
        "notes\n"
    );
    for hidden in ["secret.html", "draft.tmp", "../spin.toml"] {
        let reply = get(server.addr, &format!("/spin/acme/file/{hidden}")).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{hidden}: {}",
            reply.text()
        );
    }
    let reply = get(server.addr, "/spin/acme/write/index.html").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert_eq!(
        std::fs::read_to_string(dir.join("static/index.html")).unwrap(),
        "<h1>static</h1>\n"
    );
}

/// The manifest's folder works as the path, as `spin up --from DIR` does,
/// and is the same application: it finds the default store the manifest's
/// path filled.
#[tokio::test]
async fn a_folder_holding_spin_toml_is_the_same_application() {
    let dir = app_dir("app-folder", APP);
    let server = start(&dir);
    assert_eq!(get_ok(server.addr, "/spin/acme/count").await, "1\n");
    drop(server);
    let data = dir.join("data");
    let server = Server::start_path(
        &dir,
        &["--config", "api_token=from-config"],
        &[("XDG_DATA_HOME", data.to_str().unwrap())],
    );
    assert_eq!(
        get_ok(server.addr, "/spin/acme/var/token").await,
        "from-config"
    );
    assert_eq!(get_ok(server.addr, "/spin/acme/count").await, "2\n");
}

/// Two components, each in a file of its own.
const TWO: &str = r#"
spin_manifest_version = 2

[application]
name = "reloaded"

[[trigger.http]]
route = "/"
component = "a"

[[trigger.http]]
route = "/request"
component = "b"

[component.a]
source = "a.wasm"

[component.b]
source = "b.wasm"
"#;

/// A reload takes every changed component of the application as one step:
/// two components swapped at once are both served anew; a reload in which
/// one component is broken changes none; a changed manifest is served
/// whole, and a broken one changes nothing.
#[tokio::test]
async fn a_reload_swaps_the_applications_components_all_or_nothing() {
    let dir = app_dir("app-reload", TWO);
    let copy = |name: &str, to: &str| {
        std::fs::copy(e2e::component(name), dir.join(to)).unwrap();
    };
    copy("hello", "a.wasm");
    copy("testbed", "b.wasm");
    let server = Server::start_path(&dir, &[], &[]);
    assert_eq!(get_ok(server.addr, "/").await, "Hello World\n");
    assert!(
        get_ok(server.addr, "/request")
            .await
            .contains("path /request\n")
    );

    copy("testbed", "a.wasm");
    copy("hello", "b.wasm");
    server.hangup();
    server.wait_for_log_in_each("reloaded ", 1).await;
    assert_eq!(get_ok(server.addr, "/request").await, "Hello World\n");
    let reply = get(server.addr, "/").await;
    assert_ne!(reply.text(), "Hello World\n", "a is the testbed now");

    // One broken component: neither is replaced.
    copy("hello", "a.wasm");
    std::fs::write(dir.join("b.wasm"), b"not a component").unwrap();
    server.hangup();
    server.wait_for_log_in_each("reload failed", 1).await;
    assert!(server.log().contains("component `b`"), "{}", server.log());
    assert_eq!(get_ok(server.addr, "/request").await, "Hello World\n");
    assert_ne!(get(server.addr, "/").await.text(), "Hello World\n");

    // A changed manifest is read whole and served as one: a new route, a
    // route gone, and the files it names now.
    copy("testbed", "b.wasm");
    let manifest = dir.join("spin.toml");
    let edited = TWO.replace("route = \"/request\"", "route = \"/moved/...\"");
    std::fs::write(&manifest, &edited).unwrap();
    server.hangup();
    server.wait_for_log_in_each("reloaded ", 2).await;
    assert_eq!(
        get(server.addr, "/request").await.status,
        StatusCode::NOT_FOUND
    );
    assert!(
        get_ok(server.addr, "/moved/request")
            .await
            .contains("path /moved/request\n")
    );

    // A manifest that cannot be served changes nothing.
    std::fs::write(
        &manifest,
        edited.replace("[component.b]", "[component.b]\nsurprise = 1"),
    )
    .unwrap();
    server.hangup();
    server.wait_for_log_in_each("reload failed", 2).await;
    assert!(server.log().contains("surprise"), "{}", server.log());
    assert!(
        get_ok(server.addr, "/moved/request")
            .await
            .contains("path /moved/request\n")
    );
}

/// What cannot be served stops the server before it listens, with one
/// `error:` line naming the place and the reason.
#[test]
fn what_cannot_be_served_is_refused_at_startup() {
    let surprising = APP.replace(
        "source = \"COMPONENTS/hello.wasm\"\n\n[component.spin]",
        "source = \"COMPONENTS/hello.wasm\"\nsurprise = 1\n\n[component.spin]",
    );
    let line = surprising
        .lines()
        .position(|l| l == "surprise = 1")
        .unwrap()
        + 1;
    let surprise = format!("line {line}: unknown field `surprise`");
    let cases = [
        (
            APP.replace("route = \"/request\"\n", "route = \"/request\"\nexecutor = { type = \"wagi\" }\n"),
            "the `wagi` executor is not served",
        ),
        (
            APP.replace("[[trigger.http]]\nroute = \"/\"", "[[trigger.redis]]\nchannel = \"x\"\ncomponent = \"hello\"\n\n[[trigger.http]]\nroute = \"/\""),
            "`[[trigger.redis]]` is not served",
        ),
        (
            APP.replace("key_value_stores = [\"default\"]", "key_value_stores = [\"default\"]\nsqlite_databases = [\"default\"]"),
            "component `spin`: `sqlite_databases`: Spin's SQLite is not served",
        ),
        (surprising.clone(), surprise.as_str()),
        (APP.replace("\"{{ greeting }}!\"", "\"{{ nope }}\""), "no value for variable `nope`"),
    ];
    for (index, (manifest, expected)) in cases.iter().enumerate() {
        let dir = app_dir(&format!("app-refused-{index}"), manifest);
        let path = dir.join("spin.toml");
        let args = [path.to_str().unwrap(), "--addr", "127.0.0.1:0"];
        let failed = run_to_exit(&[&args[..], &["--config", "api_token=t"]].concat());
        let error = failed.the_error();
        assert!(error.contains(expected), "{expected:?} not in {error}");
    }
    // A required variable with no value.
    let dir = app_dir("app-refused-required", APP);
    let path = dir.join("spin.toml");
    let failed = run_to_exit(&[path.to_str().unwrap(), "--addr", "127.0.0.1:0"]);
    assert!(
        failed.stderr.contains("`api_token` is required"),
        "{}",
        failed.stderr
    );
    assert!(
        failed.stderr.contains("SPIN_VARIABLE_API_TOKEN"),
        "{}",
        failed.stderr
    );
}
