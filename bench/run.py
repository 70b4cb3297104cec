#!/usr/bin/env python3
"""`make bench`: our server against its peers, on loopback, with wrk.

Starts, on 127.0.0.1: our server with hello.wasm (WASI 0.2), hello-p3.wasm
(WASI 0.3), and the hello guests built by componentize-js and componentize-py;
a plain hyper hello server (no wasm: the ceiling), the seed's Node.js server,
and `wasmtime serve` with pooling on and its compile cache, with each of the
four components (when target/bench-tools has it); and our hello traced
(OpenTelemetry, to a collector sink in this script), a tenth of requests
sampled and all of them. Runs the same wrk load
against each, in interleaved rounds so that drift on the machine hits all
alike, and reads each server's CPU time around each run (CPU per request).
Then measures cold start (process start to first 200, compile caches warm),
memory (PSS of all its processes) idle, under 1,000 concurrent connections
and after the load.
Prints a Markdown report and writes it into BENCHMARKS.md between the
`bench:start` and `bench:end` markers.

Every load run is bounded in time by wrk's own duration.
"""

import argparse
import datetime
import http.server
import threading
import os
import platform
import re
import socket
import ssl
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELLO = os.path.join(ROOT, "target/components/hello.wasm")
HELLO_P3 = os.path.join(ROOT, "target/components/hello-p3.wasm")
JS_GUEST = os.path.join(ROOT, "target/components/js-guest.wasm")
PYTHON_GUEST = os.path.join(ROOT, "target/components/python-guest.wasm")
WASMTIME = os.path.join(ROOT, "target/bench-tools/bin/wasmtime")
READY_TIMEOUT = 30.0
SPIN = os.path.join(ROOT, "target/bench-tools/bin/spin")


def many_routes_app(routes):
    """A spin.toml serving the hello at `routes - 1` routes `/rN/:id/...` and
    `/...`, in target/bench-tools; returns its path."""
    folder = os.path.join(ROOT, f"target/bench-tools/app-{routes}-routes")
    os.makedirs(folder, exist_ok=True)
    lines = ["spin_manifest_version = 2", "[application]", f'name = "routes-{routes}"']
    for n in range(routes - 1):
        lines += ["[[trigger.http]]", f'route = "/r{n}/:id/..."', 'component = "hello"']
    lines += ["[[trigger.http]]", 'route = "/..."', 'component = "hello"']
    lines += ["[component.hello]", f'source = "{HELLO}"']
    path = os.path.join(folder, "spin.toml")
    with open(path, "w") as manifest:
        manifest.write("\n".join(lines) + "\n")
    return path


def tls_pair():
    """A self-signed certificate and key for 127.0.0.1 in target/bench-tools."""
    folder = os.path.join(ROOT, "target/bench-tools/tls")
    os.makedirs(folder, exist_ok=True)
    cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-days", "30", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-addext", "basicConstraints=critical,CA:FALSE", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )
    return cert, key


class CollectorSink(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP collector that takes every export and keeps nothing:
    the traced rows' server exports to it as to a real one."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def collector_sink():
    """Starts a `CollectorSink` on 127.0.0.1 and returns its URL."""
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CollectorSink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{sink.server_address[1]}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers_200(url):
    try:
        # The TLS row's certificate is self-signed: readiness only.
        insecure = ssl._create_unverified_context() if url.startswith("https:") else None
        with urllib.request.urlopen(url, timeout=1, context=insecure) as response:
            return response.status == 200
    except OSError:
        return False


class Server:
    """One server under test: how to start it on a given port."""

    def __init__(self, name, argv, env=None, ours=None, ours_processes=None, path="/", scheme="http"):
        self.name, self.argv, self.env, self.path = name, argv, env or {}, path
        self.scheme = scheme
        # The rows of ours this one is compared with: the same component,
        # served by one process and with --processes.
        self.ours, self.ours_processes = ours, ours_processes
        self.process = None

    def command(self, port):
        return [arg.replace("{port}", str(port)) for arg in self.argv]

    def environment(self, port):
        env = dict(os.environ)
        env.update({k: v.replace("{port}", str(port)) for k, v in self.env.items()})
        return env

    def start(self):
        """Starts the server and returns seconds from spawn to its first 200."""
        self.port = free_port()
        self.url = f"{self.scheme}://127.0.0.1:{self.port}{self.path}"
        started = time.perf_counter()
        self.process = subprocess.Popen(
            self.command(self.port),
            env=self.environment(self.port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while not answers_200(self.url):
            if self.process.poll() is not None:
                sys.exit(f"{self.name} exited with {self.process.returncode}: {self.command(self.port)}")
            if time.perf_counter() - started > READY_TIMEOUT:
                self.stop()
                sys.exit(f"{self.name} did not answer within {READY_TIMEOUT} s")
            time.sleep(0.001)
        return time.perf_counter() - started

    def processes(self):
        """The server's process and its children (ours with --processes)."""
        pids = [self.process.pid]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as stat:
                        if int(stat.read().rsplit(")", 1)[1].split()[1]) == self.process.pid:
                            pids.append(int(entry))
                except (OSError, IndexError, ValueError):
                    pass
        return pids

    def memory_mib(self):
        """Memory of the server's processes: their proportional set sizes
        (PSS), summed. A page shared by several processes, such as the mapped
        compiled code, counts once in all, split between them; RSS would
        count it once per process. For a single process PSS is its RSS less
        its share of the shared libraries."""
        total = 0
        for pid in self.processes():
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                for line in rollup:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        return total / 1024

    def cpu_seconds(self):
        """User plus system CPU time the server's processes have used so far."""
        ticks = 0
        for pid in self.processes():
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def wrk(url, connections, seconds, server=None):
    """Runs wrk with one thread and returns (req/s, p50 ms, p99 ms, errors,
    server CPU us per request)."""
    cpu_before = server.cpu_seconds() if server else 0.0
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def percentile(p):
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Socket errors: (.*)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    problems = ", ".join(x for x in [errors and errors.group(1), non_2xx and f"{non_2xx.group(1)} non-2xx"] if x)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    cpu_us = (server.cpu_seconds() - cpu_before) * 1e6 / max(requests, 1) if server else float("nan")
    return rps, percentile(50), percentile(99), problems, cpu_us


def rss_under_load(server, connections, seconds):
    """Peak memory while wrk holds `connections` connections open."""
    load = subprocess.Popen(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", server.url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    peak = server.memory_mib()
    while load.poll() is None:
        peak = max(peak, server.memory_mib())
        time.sleep(0.1)
    return peak


def machine():
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--record", action="store_true", help="write the report into BENCHMARKS.md")
    args = parser.parse_args()

    notes = []
    ours_bin = os.path.join(ROOT, "target/release/wasi-http-server")
    # Ours as it starts by default (one single-threaded serving process per
    # core), and as one process with a thread per core (`--processes 1`).
    processes = ["--processes", "1"]
    ours = Server("ours (wasi-http-server)", [ours_bin, HELLO, "--addr", "127.0.0.1:{port}"])
    ours_p3 = Server("ours, WASI 0.3 hello", [ours_bin, HELLO_P3, "--addr", "127.0.0.1:{port}"])
    ours_js = Server("ours, JS hello (componentize-js)", [ours_bin, JS_GUEST, "--addr", "127.0.0.1:{port}"])
    ours_py = Server("ours, Python hello (componentize-py)", [ours_bin, PYTHON_GUEST, "--addr", "127.0.0.1:{port}"])
    multi = "ours --processes 1"
    ours_n = Server(f"{multi}, hello", [ours_bin, HELLO, "--addr", "127.0.0.1:{port}", *processes])
    ours_p3_n = Server(f"{multi}, WASI 0.3 hello", [ours_bin, HELLO_P3, "--addr", "127.0.0.1:{port}", *processes])
    ours_js_n = Server(f"{multi}, JS hello", [ours_bin, JS_GUEST, "--addr", "127.0.0.1:{port}", *processes])
    ours_py_n = Server(f"{multi}, Python hello", [ours_bin, PYTHON_GUEST, "--addr", "127.0.0.1:{port}", *processes])
    # Each row of ours is compared with its twin, too.
    for one, many in [(ours, ours_n), (ours_p3, ours_p3_n), (ours_js, ours_js_n), (ours_py, ours_py_n)]:
        one.ours_processes, many.ours = many, one
    # The hello as one route of the repo's application, and as one of 100
    # (matched through `:id` and a wildcard): what routing costs.
    app = os.path.join(ROOT, "spin.toml")
    ours_app = Server("ours, the hello as `/` of spin.toml", [ours_bin, app, "--addr", "127.0.0.1:{port}"], ours=ours, ours_processes=ours_n)
    routes_100 = many_routes_app(100)
    ours_100 = Server("ours, the hello as 1 of 100 routes", [ours_bin, routes_100, "--addr", "127.0.0.1:{port}"], ours=ours, ours_processes=ours_n, path="/r50/7/x")
    # The hello over TLS (keep-alive, so the handshake is paid once per
    # connection): what rustls costs per request.
    cert, key = tls_pair()
    ours_tls = Server(
        "ours, the hello over TLS",
        [ours_bin, HELLO, "--addr", "127.0.0.1:{port}", "--tls-cert", cert, "--tls-key", key],
        ours=ours,
        ours_processes=ours_n,
        scheme="https",
    )
    # The hello traced: every request a server span and its children,
    # exported over OTLP/HTTP; a tenth of them sampled, as production
    # tracing usually is, and all of them.
    collector = collector_sink()
    traced = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector, "OTEL_TRACES_SAMPLER": "traceidratio"}
    ours_traced = Server(
        "ours, the hello traced (10% sampled)",
        [ours_bin, HELLO, "--addr", "127.0.0.1:{port}"],
        env={**traced, "OTEL_TRACES_SAMPLER_ARG": "0.1"},
        ours=ours,
        ours_processes=ours_n,
    )
    ours_traced_all = Server(
        "ours, the hello traced (all sampled)",
        [ours_bin, HELLO, "--addr", "127.0.0.1:{port}"],
        env={**traced, "OTEL_TRACES_SAMPLER_ARG": "1"},
        ours=ours,
        ours_processes=ours_n,
    )
    node = Server("Node.js seed", ["node", os.path.join(ROOT, "bench/hello.js")], env={"PORT": "{port}"}, ours=ours, ours_processes=ours_n)
    servers = [
        ours,
        ours_p3,
        ours_js,
        ours_py,
        ours_n,
        ours_p3_n,
        ours_js_n,
        ours_py_n,
        ours_app,
        ours_100,
        ours_tls,
        ours_traced,
        ours_traced_all,
        Server("plain hyper, no wasm", [os.path.join(ROOT, "target/release/hyper-hello"), "127.0.0.1:{port}"], ours=ours, ours_processes=ours_n),
        node,
    ]
    if os.access(WASMTIME, os.X_OK):
        # `-S cli`: the JS and Python guests import WASI beyond the proxy
        # world (as our server links it all). `-C cache=y`: a warm compile
        # cache, as ours has, so cold starts compare like for like.
        serve = [WASMTIME, "serve", "-O", "pooling-allocator=y", "-S", "cli", "-C", "cache=y", "--addr", "127.0.0.1:{port}"]
        servers.append(Server("wasmtime serve (48, pooling)", serve + [HELLO], ours=ours, ours_processes=ours_n))
        servers.append(Server("wasmtime serve, WASI 0.3 hello", serve + [HELLO_P3], ours=ours_p3, ours_processes=ours_p3_n))
        servers.append(Server("wasmtime serve, JS hello", serve + [JS_GUEST], ours=ours_js, ours_processes=ours_js_n))
        servers.append(Server("wasmtime serve, Python hello", serve + [PYTHON_GUEST], ours=ours_py, ours_processes=ours_py_n))
    else:
        notes.append("`wasmtime serve` skipped: `cargo install wasmtime-cli` into target/bench-tools failed.")
    if os.access(SPIN, os.X_OK):
        servers.append(Server("Spin, the same spin.toml", [SPIN, "up", "-f", app, "--listen", "127.0.0.1:{port}"], ours=ours_app))
    else:
        notes.append(
            "Spin skipped: no Spin binary at target/bench-tools/bin/spin (Spin is not on crates.io and "
            "its release downloads are out of reach here; see BENCHMARKS.md step 21 for the figure from a source build)."
        )

    # Fill both compile caches, so cold starts measure a restart.
    for server in servers:
        server.start()
        server.stop()
    # Cold start: each server alone on the machine, median of 5.
    cold = {}
    for server in servers:
        runs = []
        for _ in range(5):
            runs.append(server.start() * 1000)
            server.stop()
        cold[server.name] = statistics.median(runs)

    for server in servers:
        server.start()
    idle = {s.name: s.memory_mib() for s in servers}
    for server in servers:
        wrk(server.url, args.connections, 2)  # warm-up

    results = {s.name: [] for s in servers}
    for round_ in range(args.rounds):
        # Rotate the order so no server always runs first or last.
        order = servers[round_ % len(servers):] + servers[: round_ % len(servers)]
        for server in order:
            results[server.name].append(wrk(server.url, args.connections, args.seconds, server))
            print(f"round {round_ + 1}: {server.name}: {results[server.name][-1][0]:,.0f} req/s", file=sys.stderr)

    after = {s.name: s.memory_mib() for s in servers}
    loaded = {s.name: rss_under_load(s, 1000, 5) for s in servers}
    for server in servers:
        server.stop()

    def median(name, i):
        return statistics.median(r[i] for r in results[name])

    lines = [
        f"Run on {datetime.date.today().isoformat()}, {machine()}; server and load on the same machine.",
        f"wrk 1 thread, {args.connections} keep-alive connections, {args.rounds} interleaved rounds of {args.seconds} s;"
        " medians shown. Cold start: process start to first 200, median of 5.",
        "",
        "Ours ÷ it compares each server with ours serving the same component (the WASI 0.2 hello for hyper and Node),"
        f" as it starts by default (one single-threaded serving process per core: {os.cpu_count()} here)"
        " and with `--processes 1` (one process, a thread per core).",
        "",
        "CPU: the server's user + system time over each run ÷ its requests (all its processes).",
        "Memory: PSS summed over the server's processes (pages they share count once); after load: after the rounds.",
        "",
        "| server | req/s | ours ÷ it | --processes 1 ÷ it | p50 ms | p99 ms | CPU us/req | cold start ms "
        "| idle MiB | after load MiB | 1,000 conns MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for server in servers:
        name = server.name
        rps = median(name, 0)
        ours_rps = median((server.ours or server).name, 0)
        ours_n_rps = median((server.ours_processes or server).name, 0)
        problems = "; ".join(sorted({r[3] for r in results[name] if r[3]}))
        lines.append(
            f"| {name} | {rps:,.0f} | {ours_rps / rps:.2f} | {ours_n_rps / rps:.2f} | {median(name, 1):.2f} | {median(name, 2):.2f} "
            f"| {median(name, 4):.1f} | {cold[name]:.1f} | {idle[name]:.1f} | {after[name]:.1f} | {loaded[name]:.1f} |"
            + (f" errors: {problems}" if problems else "")
        )
    # The JS guest is the seed's program, compiled to a component.
    notes.append(
        f"ours serving the JS hello ÷ the Node.js seed (the same program): "
        f"{median(ours_js.name, 0) / median(node.name, 0):.2f} in req/s, "
        f"{median(ours_js_n.name, 0) / median(node.name, 0):.2f} with --processes 1."
    )
    cpu = lambda server: median(server.name, 4)
    notes.append(
        f"tracing: CPU per request {cpu(ours):.1f} us off, {cpu(ours_traced):.1f} us with a tenth sampled "
        f"({cpu(ours_traced) / cpu(ours):.2f}x), {cpu(ours_traced_all):.1f} us with all sampled "
        f"({cpu(ours_traced_all) / cpu(ours):.2f}x); TLS {cpu(ours_tls):.1f} us "
        f"({median(ours_tls.name, 0) / median(ours.name, 0):.2f}x plain in req/s)."
    )
    # Issue 21's goals, by default settings, each against its aim.
    theirs = {s.ours.name: s for s in servers if s.name.startswith("wasmtime serve") and s.ours}
    if theirs:
        def against(ours_server, aim_rps, aim_memory):
            them = theirs[ours_server.name]
            ratio = median(ours_server.name, 0) / median(them.name, 0)
            memory = after[ours_server.name] / after[them.name]
            cold_ratio = cold[ours_server.name] / cold[them.name]
            return (
                f"{ours_server.name}: {ratio:.2f}x `{them.name}` in req/s (aim >= {aim_rps}x), "
                f"memory after load {memory:.2f}x theirs" + (f" (aim <= {aim_memory}x)" if aim_memory else "")
                + f", cold start {cold_ratio:.2f}x theirs (aim <= 1.00x)"
            )
        goals = [
            against(ours, 4, None),
            against(ours_p3, 1.0, None),
            against(ours_js, 8, 1.5),
            against(ours_py, 5, 1.5),
            f"{ours.name} ÷ the Node.js seed: {median(ours.name, 0) / median(node.name, 0):.2f} in req/s (aim >= 1.00), "
            f"CPU per request {median(ours.name, 4) / median(node.name, 4):.2f}x Node's (aim <= 1.00x)",
            f"{ours_p3.name}: CPU per request {median(ours_p3.name, 4) / median(ours.name, 4):.2f}x the WASI 0.2 hello's (aim <= 1.3x)",
        ]
        lines += ["", "Goals (issue 21), default settings:", *(f"- {goal}" for goal in goals)]
    lines += [f"", *(f"Note: {note}" for note in notes)]
    report = "\n".join(lines).rstrip() + "\n"
    print(report)

    if args.record:
        path = os.path.join(ROOT, "BENCHMARKS.md")
        text = open(path).read()
        start, end = "<!-- bench:start -->\n", "<!-- bench:end -->"
        before, rest = text.split(start)
        _, after = rest.split(end)
        open(path, "w").write(before + start + report + end + after)
        print(f"recorded in {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
