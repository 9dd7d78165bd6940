#!/usr/bin/env python3
"""The benchmark behind `bench/run`: what orion-proxy costs against a bare Pingora pass-through
and nginx doing the same work, measured in one run on loopback.

Systems: `bare` (examples/bare_passthrough.rs), `nginx` (bench/nginx-equivalent.conf) and
`orion` (orion-proxy with a bench config), all in front of one nginx upstream serving
OrionVM-shaped JSON (bench/nginx-upstream.conf). Each figure is taken per scenario and system,
the systems in turn (A B C A B C ...), for several rounds; the table shows medians and their
ratios to the bare pass-through and to nginx.

Python standard library only. Every process it starts runs on 127.0.0.1, is bounded in time and
is stopped on exit, whatever the exit.
"""

import argparse
import base64
import datetime
import glob
import hashlib
import http.client
import json
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
INSTANCE_ID = "3b0c2f6e-1111-4222-8333-944455556666"


class BenchError(Exception):
    """The script itself is broken (or a system misbehaves): fail loudly."""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Processes


class Procs:
    """Every process the harness starts, each in its own process group, stopped at exit."""

    def __init__(self):
        self.items = []

    def start(self, name, argv, log_path, cpu=None, env=None, cwd=None):
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu)] + argv
        out = open(log_path, "ab")
        p = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
        out.close()
        self.items.append((name, p))
        return p

    def stop(self, p, sig=signal.SIGINT, wait=5.0):
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(p.pid, signal.SIGKILL)  # workers left behind by a master, if any
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.items = [(n, q) for (n, q) in self.items if q is not p]

    def stop_all(self):
        for _, p in list(reversed(self.items)):
            self.stop(p)


PROCS = Procs()


def on_signal(signum, _frame):
    raise BenchError(f"interrupted by signal {signum}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, name, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def tree(pid):
    """The process and its children (nginx: the master and its workers)."""
    return [pid] + children(pid)


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            pass
    return total


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


# ---------------------------------------------------------------------------------------------
# Data and configs


def fill(template, values):
    out = template
    for k, v in values.items():
        out = out.replace(f"@{k}@", str(v))
    left = re.findall(r"@[A-Z_]+@", out)
    if left:
        raise BenchError(f"unfilled placeholders {sorted(set(left))}")
    return out


def write_upstream_data(work):
    """OrionVM-shaped JSON from the examples the simulator uses."""
    with open(os.path.join(ROOT, "crates/orion-sim/src/orionvm-v1-examples.json")) as f:
        ex = json.load(f)
    inst = ex["instance"]
    data = os.path.join(work, "data")
    os.makedirs(data, exist_ok=True)
    with open(os.path.join(data, "instance.json"), "w") as f:
        json.dump(inst, f)
    items = []
    for i in range(100):
        o = json.loads(json.dumps(inst))
        o["id"] = str(uuid.UUID(int=0x3B0C2F6E111142228333944455550000 + i))
        o["name"] = o["hostname"] = f"web-{i + 1}"
        items.append(o)
    with open(os.path.join(data, "list.json"), "w") as f:
        json.dump(items, f)
    created = json.loads(json.dumps(inst))
    created["state"] = "stopped"
    created["name"] = created["hostname"] = "web-3"
    with open(os.path.join(data, "created.json"), "w") as f:
        json.dump(created, f)
    # The POST body: the assemble request padded with public key ids to 1 KiB.
    body = dict(ex["assemble_request"])
    keys = []
    while len(json.dumps(body)) < 1024 - 40:
        keys.append(str(uuid.UUID(int=0x6B7C8D9E0F1A4B2C8D3E4F5A6B7C0000 + len(keys))))
        body["public_keys"] = keys
    raw = json.dumps(body, separators=(", ", ": ")).encode()
    raw = raw + b" " * max(0, 1024 - len(raw))  # exactly 1 KiB, still one JSON document
    with open(os.path.join(work, "assemble-body.json"), "wb") as f:
        f.write(raw)
    return os.path.join(work, "assemble-body.json")


def merge(base, patch):
    """JSON merge patch (RFC 7396): objects merge, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(base) if isinstance(base, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(out.get(k), v)
    return out


# ---------------------------------------------------------------------------------------------
# Credentials for the identity scenarios (used only when the build has the feature)


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def der_ints(der):
    """The two INTEGERs (r, s) of a DER ECDSA signature."""
    if der[0] != 0x30:
        raise BenchError("unexpected ECDSA signature encoding")
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    out = []
    for _ in range(2):
        if der[i] != 0x02:
            raise BenchError("unexpected ECDSA signature encoding")
        n = der[i + 1]
        out.append(int.from_bytes(der[i + 2 : i + 2 + n], "big"))
        i += 2 + n
    return out


class Es256:
    """An ES256 key made with the openssl command, JWKs and signed JWTs from it."""

    def __init__(self, work):
        self.key = os.path.join(work, "jwt-es256.pem")
        subprocess.run(
            ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", self.key],
            check=True,
            capture_output=True,
        )
        pub = subprocess.run(
            ["openssl", "ec", "-in", self.key, "-pubout", "-outform", "DER"],
            check=True,
            capture_output=True,
        ).stdout
        point = pub[-65:]  # uncompressed point 04 || x || y at the end of the SPKI
        if point[0] != 4:
            raise BenchError("unexpected EC public key encoding")
        self.x, self.y = point[1:33], point[33:65]
        self.kid = "bench-es256"
        self.pub_pem = os.path.join(work, "jwt-es256.pub.pem")
        subprocess.run(
            ["openssl", "ec", "-in", self.key, "-pubout", "-out", self.pub_pem],
            check=True,
            capture_output=True,
        )

    def jwk(self):
        return {
            "kty": "EC",
            "crv": "P-256",
            "alg": "ES256",
            "use": "sig",
            "kid": self.kid,
            "x": b64url(self.x),
            "y": b64url(self.y),
        }

    def sign(self, claims):
        head = b64url(json.dumps({"alg": "ES256", "typ": "JWT", "kid": self.kid}).encode())
        body = b64url(json.dumps(claims).encode())
        signing_input = f"{head}.{body}".encode()
        der = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", self.key],
            input=signing_input,
            check=True,
            capture_output=True,
        ).stdout
        r, s = der_ints(der)
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{head}.{body}.{b64url(sig)}"


# ---------------------------------------------------------------------------------------------
# HTTP checks


def request(port, method, path, auth=None, body=None, headers=None, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"Content-Type": "application/json"}
    if auth:
        h["Authorization"] = auth
    h.update(headers or {})
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, dict(r.getheaders()), data


def redis_commandstats(port):
    """`INFO commandstats` of the redis-server on `port`: calls per command since its start
    (commands that scripts run are counted too, under their own names)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(b"INFO commandstats\r\n")
        head = b""
        while b"\r\n" not in head:
            chunk = c.recv(4096)
            if not chunk:
                raise BenchError("redis-server closed the connection during INFO")
            head += chunk
        line, rest = head.split(b"\r\n", 1)
        if not line.startswith(b"$"):
            raise BenchError(f"redis-server answered INFO with {line[:100]!r}")
        size = int(line[1:])
        while len(rest) < size:
            chunk = c.recv(65536)
            if not chunk:
                raise BenchError("redis-server closed the connection during INFO")
            rest += chunk
    out = {}
    for l in rest[:size].decode().splitlines():
        m = re.match(r"^cmdstat_([^:]+):calls=(\d+),", l)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


# Commands that redis-server counts but that the proxy does not send itself: what its scripts
# run (the counter script; the task sweep's SMEMBERS), and the INFO this harness sends.
REDIS_NESTED = {"incrby", "pttl", "pexpire", "smembers", "info"}
# Sent in the background, off the request path: the usage flush (one pipeline of HINCRBY and
# EXPIREAT per sync interval).
REDIS_BACKGROUND = {"hincrby", "expireat"}
# (The batched mode's sync, one script call per interval for all its keys, is counted: it
# replaces the per-request calls.)


def redis_calls(before, after, requests):
    """Redis commands per request between two `INFO commandstats`, and the round trips per
    request on the request path: the commands that the proxy sent itself (a script call counts
    once), without the background usage flush."""
    per = {k: (after.get(k, 0) - before.get(k, 0)) / requests for k in after}
    per = {k: v for k, v in sorted(per.items()) if v > 0}
    sent = sum(v for k, v in per.items() if k not in REDIS_NESTED | REDIS_BACKGROUND)
    # The background sweep for tasks of stopped nodes is one script call with one SMEMBERS
    # (every third of the task lease): not on the request path either.
    sent -= per.get("smembers", 0)
    return per, sent


def proxy_requests(metrics):
    """Requests a proxy has served, from its metrics listener (`host:port`), once those still
    in flight (cut off by the load generator's end) are done (5 s at most)."""
    port = int(metrics.rsplit(":", 1)[1])
    deadline = time.monotonic() + 5
    while True:
        st, _, text = request(port, "GET", "/metrics")
        if st != 200:
            raise BenchError(f"the metrics listener {metrics} answered {st}")
        lines = text.decode().splitlines()
        busy = sum(float(l.rsplit(" ", 1)[1]) for l in lines
                   if l.startswith("orion_proxy_requests_in_flight"))
        if busy <= 0 or time.monotonic() > deadline:
            return sum(float(l.rsplit(" ", 1)[1]) for l in lines
                       if l.startswith("orion_proxy_requests_total"))
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# Load


def run_wrk(port, sc, auth, seconds, conns, threads, cpu):
    env = dict(os.environ)
    env["BENCH_METHOD"] = sc["method"]
    env["BENCH_AUTH"] = auth or ""
    env["BENCH_BODY_FILE"] = sc.get("body_file") or ""
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{conns}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        os.path.join(BENCH, "wrk.lua"),
        f"http://127.0.0.1:{port}{sc['path']}",
    ]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + argv
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60)
    m = re.search(r"^BENCH_RESULT (\{.*\})$", r.stdout, re.M)
    if r.returncode != 0 or not m:
        raise BenchError(f"wrk failed ({r.returncode}): {r.stdout[-800:]} {r.stderr[-800:]}")
    return json.loads(m.group(1))


def run_oha(port, sc, auth, seconds, rate, conns, cpu):
    argv = [
        "oha",
        "-z",
        f"{seconds}s",
        "-c",
        str(conns),
        "-q",
        str(rate),
        "--latency-correction",
        "--no-tui",
        "--output-format",
        "json",
        "-m",
        sc["method"],
        "-H",
        "Content-Type: application/json",
    ]
    if auth:
        argv += ["-H", f"Authorization: {auth}"]
    if sc.get("body_file"):
        argv += ["-D", sc["body_file"]]
    argv.append(f"http://127.0.0.1:{port}{sc['path']}")
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + argv
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0:
        raise BenchError(f"oha failed ({r.returncode}): {r.stderr[-800:]}")
    try:
        return json.loads(r.stdout)
    except ValueError as e:
        raise BenchError(f"oha printed no JSON: {e}: {r.stdout[:400]}")


# ---------------------------------------------------------------------------------------------
# Idle keep-alive connections (run as a child: `harness.py idle-client ...`)


def idle_client(args):
    """Opens `count` connections, sends one request on each and reads its answer, then holds them
    open until told (a line on stdin); then reports how many are still open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    req = (
        f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {args.auth}\r\n"
        "Content-Type: application/json\r\n\r\n"
    ).encode()
    socks, ok, failed = [], 0, 0
    deadline = time.monotonic() + args.timeout
    batch = 200
    for start in range(0, args.count, batch):
        sel = selectors.DefaultSelector()
        pending = {}
        for _ in range(min(batch, args.count - start)):
            try:
                s = socket.create_connection(("127.0.0.1", args.port), timeout=5)
                s.sendall(req)
                s.setblocking(False)
                socks.append(s)
                pending[s] = b""
                sel.register(s, selectors.EVENT_READ)
            except OSError:
                failed += 1
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                s = key.fileobj
                try:
                    chunk = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    failed += 1
                    sel.unregister(s)
                    del pending[s]
                    continue
                buf = pending[s] + chunk
                head, sep, rest = buf.partition(b"\r\n\r\n")
                if sep:
                    m = re.search(rb"content-length:\s*(\d+)", head, re.I)
                    if m and len(rest) >= int(m.group(1)):
                        if head.startswith(b"HTTP/1.1 200"):
                            ok += 1
                        else:
                            failed += 1
                        sel.unregister(s)
                        del pending[s]
                        continue
                    if not m and head.startswith(b"HTTP/1.1") and rest.endswith(b"0\r\n\r\n"):
                        ok += 1
                        sel.unregister(s)
                        del pending[s]
                        continue
                pending[s] = buf
        failed += len(pending)
        sel.close()
        if time.monotonic() >= deadline:
            break
    print(json.dumps({"opened": len(socks), "ok": ok, "failed": failed}), flush=True)
    sys.stdin.readline()  # the harness has measured
    still = 0
    for s in socks:
        try:
            if s.recv(1) == b"":
                continue
            still += 1
        except BlockingIOError:
            still += 1
        except OSError:
            pass
    print(json.dumps({"still_open": still}), flush=True)
    for s in socks:
        s.close()


def measure_idle(port, pids_fn, auth, count, path, cpu):
    argv = [
        sys.executable,
        os.path.abspath(__file__),
        "idle-client",
        "--port",
        str(port),
        "--count",
        str(count),
        "--auth",
        auth,
        "--path",
        path,
    ]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + argv
    # The verify requests just ran: let the allocators give their freed pages back first
    # (mimalloc's purge delay is 1 s), or "before" counts garbage that "held" no longer does.
    time.sleep(2.5)
    before = rss_kib(pids_fn())
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        if not line:
            raise BenchError("the idle-connection client died")
        opened = json.loads(line)
        time.sleep(1.0)  # let the server settle after the last answer
        during = rss_kib(pids_fn())
        p.stdin.write("done\n")
        p.stdin.flush()
        line = p.stdout.readline()
        still = json.loads(line)["still_open"] if line else 0
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return {
        "connections": count,
        "answered_ok": opened["ok"],
        "failed": opened["failed"],
        "still_open": still,
        "rss_before_kib": before,
        "rss_kib": during,
    }


# ---------------------------------------------------------------------------------------------
# The run


def git_rev():
    try:
        rev = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except OSError:
        return "unknown"


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="orion-bench-")
        # nginx workers run as an unprivileged user when started by root: they need to reach
        # data/ (the rest of the directory stays unreadable to them).
        os.chmod(self.work, 0o711)
        os.makedirs(os.path.join(self.work, "tmp"), exist_ok=True)
        self.target = os.path.join(ROOT, "target", args.target_dir)
        self.orion_bin = os.path.join(self.target, "orion-proxy")
        self.bare_bin = os.path.join(self.target, "examples", "bare_passthrough")
        ncpu = os.cpu_count() or 1
        pin = args.pin and ncpu >= 2
        # The system under test on one core, the load generator and the upstream on the other.
        self.cpu_sut = 1 if pin else None
        self.cpu_load = 0 if pin else None
        self.systems = {}  # name -> dict(port, proc, pids)
        self.redis_port = None
        self.redis_proc = None
        self.notes = []
        self.features = {}
        self.sent = {}  # requests answered per process, to compare with its access log
        self.access_log = {}
        self.orion_access_logs = {}

    # -- systems --

    def start_redis(self):
        """A local redis-server for the shared-state scenarios, pinned beside the upstream (no
        persistence). Left out (the scenarios skipped) when redis-server is not installed."""
        if not shutil.which("redis-server"):
            return
        port = free_port()
        p = PROCS.start(
            "redis",
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.work],
            os.path.join(self.work, "redis.out"),
            cpu=self.cpu_load,
        )
        wait_port(port, p, "redis-server")
        self.redis_port = port
        self.redis_proc = p

    def start_upstream(self):
        port = free_port()
        conf = fill(
            open(os.path.join(BENCH, "nginx-upstream.conf")).read(),
            {"WORK": self.work, "PORT": port},
        )
        path = os.path.join(self.work, "upstream.conf")
        open(path, "w").write(conf)
        p = PROCS.start(
            "upstream",
            ["nginx", "-p", self.work, "-c", path],
            os.path.join(self.work, "upstream.out"),
            cpu=self.cpu_load,
        )
        wait_port(port, p, "upstream nginx")
        self.upstream_port = port
        st, _, body = request(port, "GET", f"/api/v1/instances/{INSTANCE_ID}")
        if st != 200 or json.loads(body).get("id") != INSTANCE_ID:
            raise BenchError(f"upstream GET answered {st}")
        st, _, body = request(port, "POST", "/api/v1/instances/assemble", body=b"{}")
        if st != 200 or json.loads(body).get("state") != "stopped":
            raise BenchError(f"upstream POST answered {st}: {body[:200]!r}")
        st, _, body = request(port, "GET", "/api/v1/instances")
        if st != 200 or len(json.loads(body)) != 100:
            raise BenchError(f"upstream list answered {st}")

    def start_bare(self):
        port = free_port()
        p = PROCS.start(
            "bare",
            [
                self.bare_bin,
                "--listen",
                f"127.0.0.1:{port}",
                "--upstream",
                f"127.0.0.1:{self.upstream_port}",
                "--threads",
                str(self.args.threads),
            ] + (["--l4-read-buffer", str(self.args.bare_l4_read_buffer)]
                 if self.args.bare_l4_read_buffer is not None else []),
            os.path.join(self.work, "bare.out"),
            cpu=self.cpu_sut,
        )
        wait_port(port, p, "bare pass-through")
        self.systems["bare"] = {"port": port, "proc": p, "pids": lambda p=p: [p.pid]}

    def nginx_equivalent_conf(self, port, master=True):
        conf = fill(
            open(os.path.join(BENCH, "nginx-equivalent.conf")).read(),
            {
                "WORK": self.work,
                "PORT": port,
                "UPSTREAM_PORT": self.upstream_port,
                "WORKERS": self.args.threads,
                "API_KEY": self.api_key,
                "UPSTREAM_TOKEN": self.upstream_token,
            },
        )
        if not master:
            conf = conf.replace("master_process on;", "master_process off;")
        path = os.path.join(self.work, f"nginx-equivalent-{port}.conf")
        open(path, "w").write(conf)
        return path

    def start_nginx(self):
        port = free_port()
        path = self.nginx_equivalent_conf(port)
        p = PROCS.start(
            "nginx",
            ["nginx", "-p", self.work, "-c", path],
            os.path.join(self.work, "nginx.out"),
            cpu=self.cpu_sut,
        )
        wait_port(port, p, "nginx-equivalent")
        self.systems["nginx"] = {"port": port, "proc": p, "pids": lambda p=p: tree(p.pid)}

    def make_credentials(self):
        out = subprocess.run(
            [self.orion_bin, "keygen", "--name", "bench", "--role", "admin", "--tenant", "bench"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        key = re.search(r"^\s+(\S{64})\s*$", out, re.M)
        hsh = re.search(r'hash: "(sha256:[0-9a-f]{64})"', out)
        if not key or not hsh:
            raise BenchError(f"unexpected `orion-proxy keygen` output: {out!r}")
        self.api_key, self.api_key_hash = key.group(1), hsh.group(1)
        self.upstream_token = "bench-upstream-" + os.urandom(16).hex()
        self.token_file = os.path.join(self.work, "upstream-token")
        with open(self.token_file, "w") as f:
            f.write(self.upstream_token)
        self.client_secret = base64.urlsafe_b64encode(os.urandom(24)).decode()
        # The client's secret hash as the build stores it (builds without issued tokens have no
        # such command; their probe skips the feature on the unknown `clients` key anyway).
        self.client_secret_hash = "sha256:" + hashlib.sha256(self.client_secret.encode()).hexdigest()
        r = subprocess.run(
            [self.orion_bin, "client-secret", "--id", "bench-client", "--role", "admin",
             "--tenant", "bench", "--stdin"],
            input=self.client_secret + "\n", capture_output=True, text=True, timeout=60)
        m = re.search(r"secret_hash: '([^']+)'", r.stdout)
        if r.returncode == 0 and m:
            self.client_secret_hash = m.group(1)
        self.token_signing_key = os.path.join(self.work, "token-signing-key")
        with open(self.token_signing_key, "w") as f:
            f.write(base64.b64encode(os.urandom(32)).decode())
        self.es256 = None
        if shutil.which("openssl"):
            self.es256 = Es256(self.work)
            with open(os.path.join(self.work, "jwks.json"), "w") as f:
                json.dump({"keys": [self.es256.jwk()]}, f)

    def placeholders(self):
        v = {
            "WORK": self.work,
            "CLIENT_ID": "bench-client",
            "CLIENT_SECRET": self.client_secret,
            "CLIENT_SECRET_HASH": self.client_secret_hash,
            "TOKEN_SIGNING_KEY_FILE": self.token_signing_key,
            "JWT_ISS": "https://idp.bench.invalid/",
            "JWT_AUD": "orion-proxy-bench",
        }
        if self.redis_port:
            v["REDIS_URL"] = f"redis://127.0.0.1:{self.redis_port}/0"
        if self.es256:
            v.update(
                {
                    "JWT_KID": self.es256.kid,
                    "JWT_X": b64url(self.es256.x),
                    "JWT_Y": b64url(self.es256.y),
                    "JWKS_FILE": os.path.join(self.work, "jwks.json"),
                    "JWT_PUBLIC_PEM_FILE": self.es256.pub_pem,
                }
            )
        return v

    def base_config(self, port):
        return {
            "server": {
                "listen": f"127.0.0.1:{port}",
                "admin_listen": None,
                "metrics_listen": f"127.0.0.1:{free_port()}",
                "threads": self.args.threads,
                "grace_period_seconds": 1,
                # The idle-connection figure holds thousands of connections from one address:
                # no connection caps here (bench/hostile measures them).
                "max_connections": 0,
                "max_connections_per_ip": 0,
            },
            "accounts": {
                "bench-orionvm": {
                    "endpoints": [{"url": f"http://127.0.0.1:{self.upstream_port}"}],
                    "credentials": {"type": "static_token", "token": {"file": self.token_file}},
                }
            },
            "tenants": {"bench": {"account": "bench-orionvm"}},
            "api_keys": [
                {"name": "bench", "hash": self.api_key_hash, "roles": ["admin"], "tenant": "bench"}
            ],
            "logging": {"access_log": os.path.join(self.work, f"orion-access-{port}.log")},
        }

    def check_config(self, cfg, name):
        path = os.path.join(self.work, f"check-{name}.yaml")
        with open(path, "w") as f:
            json.dump(cfg, f, indent=1)  # YAML is a superset of JSON
        r = subprocess.run(
            [self.orion_bin, "check", "-c", path], capture_output=True, text=True, timeout=60
        )
        errors = [l.strip() for l in r.stderr.splitlines()[1:] if l.strip()]
        return r.returncode == 0, errors

    def probe_features(self):
        """A feature is a JSON merge patch in bench/features/; it is available when
        `orion-proxy check` accepts the bench config with it, unavailable when the only errors
        are keys the build does not know, and the script is broken otherwise."""
        ok, errors = self.check_config(self.base_config(free_port()), "base")
        if not ok:
            raise BenchError(f"the bench config does not pass `orion-proxy check`: {errors}")
        values = self.placeholders()
        fdir = os.path.join(BENCH, "features")
        for fname in sorted(os.listdir(fdir)):
            if not fname.endswith(".json"):
                continue
            name = fname[:-5]
            spec = json.load(open(os.path.join(fdir, fname)))
            needs_es256 = "@JWT_X@" in json.dumps(spec)
            if needs_es256 and not self.es256:
                self.features[name] = None
                self.notes.append(f"{name}: skipped, the openssl command is missing")
                continue
            if "@REDIS_URL@" in json.dumps(spec) and not self.redis_port:
                self.features[name] = None
                self.notes.append(f"{name}: skipped, redis-server is not installed")
                continue
            patch = json.loads(fill(json.dumps(spec["config"]), values))
            ok, errors = self.check_config(merge(self.base_config(free_port()), patch), name)
            if ok:
                self.features[name] = {"spec": spec, "patch": patch}
                log(f"feature {name}: available")
            elif errors and all(re.search(r"' (was|were) unexpected", e) for e in errors):
                self.features[name] = None
                line = f"{name}: not available in this build ({errors[0]})"
                self.notes.append(line)
                log(f"feature {line}")
            else:
                raise BenchError(
                    f"bench/features/{fname} is rejected by `orion-proxy check` for another "
                    f"reason than an unknown key; update it to the config the build expects: "
                    f"{errors}"
                )

    def orion_config(self, port, variant):
        cfg = self.base_config(port)
        for name, f in self.features.items():
            if f and f["spec"].get("apply") == "always":
                cfg = merge(cfg, f["patch"])
        if variant:
            cfg = merge(cfg, self.features[variant]["patch"])
        return cfg

    def start_orion(self, name, variant=None):
        port = free_port()
        cfg = self.orion_config(port, variant)
        self.orion_access_logs[name] = cfg["logging"]["access_log"]
        path = os.path.join(self.work, f"{name}.yaml")
        with open(path, "w") as f:
            json.dump(cfg, f, indent=1)
        p = PROCS.start(
            name,
            [self.orion_bin, "run", "-c", path],
            os.path.join(self.work, f"{name}.out"),
            cpu=self.cpu_sut,
            env=dict(os.environ, RUST_LOG="warn"),
        )
        wait_port(port, p, name)
        self.systems[name] = {
            "port": port,
            "proc": p,
            "pids": lambda p=p: [p.pid],
            "metrics": cfg["server"]["metrics_listen"],
        }
        if variant and variant.startswith("state-redis") and self.redis_proc:
            # Redis' own CPU per request, reported beside the proxy's.
            self.systems[name]["aux_pids"] = lambda r=self.redis_proc: [r.pid]

    # -- scenarios --

    def scenarios(self):
        body_file = self.body_file
        get = f"/api/v1/instances/{INSTANCE_ID}"
        sc = [
            {"name": "get_instance", "method": "GET", "path": get, "auth": "key",
             "systems": ["bare", "nginx", "orion"], "what": "GET /api/v1/instances/{id}, API key"},
            {"name": "list_instances", "method": "GET", "path": "/api/v1/instances", "auth": "key",
             "systems": ["bare", "nginx", "orion"], "what": "GET /api/v1/instances, 100 items"},
            {"name": "post_assemble", "method": "POST", "path": "/api/v1/instances/assemble",
             "auth": "key", "body_file": body_file, "systems": ["bare", "nginx", "orion"],
             "what": "POST /api/v1/instances/assemble, 1 KiB body, as the shipped route checks it"},
            {"name": "post_assemble_unvalidated", "method": "POST",
             "path": "/api/v1/instances/assemble", "auth": "key", "body_file": body_file,
             "feature": "body-unvalidated", "systems": ["orion"], "bare_ref": "post_assemble",
             "nginx_ref": "post_assemble",
             "what": "the same POST with the route's schema switched off"},
            {"name": "get_instance_limits_off", "method": "GET", "path": get, "auth": "key",
             "feature": "limits-off", "systems": ["orion"], "bare_ref": "get_instance",
             "nginx_ref": "get_instance",
             "what": "the same GET with the limits section switched off"},
            {"name": "get_instance_redis", "method": "GET", "path": get, "auth": "key",
             "feature": "state-redis", "systems": ["orion"], "bare_ref": "get_instance",
             "nginx_ref": "get_instance",
             "what": "the same GET with rate limits on Redis, exact (one atomic call a request)"},
            {"name": "get_instance_redis_batched", "method": "GET", "path": get, "auth": "key",
             "feature": "state-redis-batched", "systems": ["orion"], "bare_ref": "get_instance",
             "nginx_ref": "get_instance",
             "what": "the same GET with rate limits on Redis, batched (synced every 100 ms)"},
            {"name": "get_token", "method": "GET", "path": get, "auth": "token",
             "feature": "identity-token", "systems": ["orion"], "bare_ref": "get_instance",
             "nginx_ref": "get_instance", "what": "GET instance with a proxy-issued token"},
            {"name": "get_jwt", "method": "GET", "path": get, "auth": "jwt",
             "feature": "identity-jwt", "systems": ["orion"], "bare_ref": "get_instance",
             "nginx_ref": "get_instance", "what": "GET instance with an ES256 JWT"},
            {"name": "unauthorized", "method": "GET", "path": get, "auth": "bad", "expect": 401,
             "systems": ["nginx", "orion"], "bare_ref": "get_instance",
             "what": "GET instance with an unknown key: 401"},
        ]
        chosen = set(self.args.scenarios or [s["name"] for s in sc])
        unknown = chosen - {s["name"] for s in sc}
        if unknown:
            raise BenchError(f"unknown scenarios {sorted(unknown)}")
        for s in sc:  # a scenario compared with another's figures needs that one too
            if s["name"] in chosen:
                chosen.update(r for r in (s.get("bare_ref"), s.get("nginx_ref")) if r)
        out = []
        for s in sc:
            f = s.get("feature")
            if s["name"] not in chosen or (f and not self.features.get(f)):
                continue
            out.append(s)
        return out

    def system_for(self, sc, system):
        """The process that serves a scenario's system (orion variants have their own)."""
        if system == "orion" and sc.get("feature") and self.features[sc["feature"]]["spec"].get(
            "apply"
        ) == "variant":
            return f"orion+{sc['feature']}"
        return system

    def auth_for(self, sc, system):
        kind = sc["auth"]
        if kind == "key":
            return f"Bearer {self.api_key}"
        if kind == "bad":
            return "Bearer " + "x" * 64
        if kind == "token":
            return f"Bearer {self.issued_token}"
        if kind == "jwt":
            return f"Bearer {self.jwt}"
        raise BenchError(f"unknown auth kind {kind}")

    def obtain_tokens(self):
        if self.features.get("identity-token"):
            port = self.systems["orion"]["port"]
            body = json.dumps(
                {
                    "grant_type": "client_credentials",
                    "client_id": "bench-client",
                    "client_secret": self.client_secret,
                }
            ).encode()
            st, _, data = request(port, "POST", "/oauth/token", body=body)
            if st != 200:
                raise BenchError(f"POST /oauth/token answered {st}: {data[:300]!r}")
            self.issued_token = json.loads(data)["access_token"]
        if self.features.get("identity-jwt"):
            now = int(time.time())
            v = self.placeholders()
            self.jwt = self.es256.sign(
                {
                    "iss": v["JWT_ISS"],
                    "aud": v["JWT_AUD"],
                    "sub": "bench-user",
                    "iat": now,
                    "nbf": now - 5,
                    "exp": now + 6 * 3600,
                    "roles": ["admin"],
                    "tenant": "bench",
                }
            )

    def verify(self, sc, system):
        """One request through the system: the status must be what the scenario expects."""
        name = self.system_for(sc, system)
        port = self.systems[name]["port"]
        body = open(sc["body_file"], "rb").read() if sc.get("body_file") else None
        st, headers, data = request(port, sc["method"], sc["path"], self.auth_for(sc, system), body)
        self.sent[name] = self.sent.get(name, 0) + 1
        want = sc.get("expect", 200)
        if st != want:
            raise BenchError(
                f"{sc['name']} on {name}: status {st}, expected {want}: {data[:300]!r}"
            )
        try:
            json.loads(data)
        except ValueError:
            raise BenchError(f"{sc['name']} on {name}: the answer is not JSON: {data[:200]!r}")
        if system != "bare" and not any(k.lower() == "x-request-id" for k in headers):
            raise BenchError(f"{sc['name']} on {name}: no X-Request-Id on the answer")

    def check_statuses(self, sc, name, res):
        want = sc.get("expect", 200)
        errs = res["connect_errors"] + res["read_errors"] + res["write_errors"] + res["timeouts"]
        if res["requests"] <= 0:
            raise BenchError(f"{sc['name']} on {name}: no request was served")
        bad = res["status_errors"] if want < 400 else res["requests"] - res["status_errors"]
        if bad > 0 or errs > res["requests"] * 0.001:
            raise BenchError(
                f"{sc['name']} on {name}: {bad} answers with an unexpected status and {errs} "
                f"transport errors out of {res['requests']}"
            )

    def log_timings(self, name):
        """Where the time of one latency run went, from the proxy's own access log (it holds
        this run's lines only: `trim_logs` empties it after every run): the request's time in
        the proxy (`event.duration`), OrionVM's part (`orion.upstream.latency_ms`) and the rest.
        A client's latency beyond the first is time before the proxy read the request (queueing,
        scheduling), which no line shows."""
        path = self.orion_access_logs.get(name)
        if not path:
            return None
        time.sleep(0.1)  # the writer flushes every 20 ms
        total, upstream = [], []
        for f in sorted(glob.glob(path + "*")):
            try:
                with open(f, "rb") as fh:
                    for raw in fh:
                        try:
                            d = json.loads(raw)
                        except ValueError:
                            continue
                        if d.get("http.response.status_code") != 200:
                            continue
                        total.append(d.get("event.duration", 0) / 1e6)
                        upstream.append(float(d.get("orion.upstream.latency_ms") or 0.0))
            except OSError:
                continue
        if not total:
            return None
        own = [t - u for t, u in zip(total, upstream)]

        def pcts(xs):
            xs = sorted(xs)
            at = lambda q: xs[min(len(xs) - 1, int(len(xs) * q))]  # noqa: E731
            return {"p50_ms": at(0.5), "p99_ms": at(0.99), "p999_ms": at(0.999), "max_ms": xs[-1]}

        return {"lines": len(total), "total": pcts(total), "upstream": pcts(upstream),
                "own": pcts(own)}

    def trim_logs(self):
        """Access logs are written in full (that is part of the work measured) but emptied
        after each run, so that a run never holds more than one run's lines on disk. The writers
        append (O_APPEND), so they carry on at the new end."""
        for f in os.listdir(self.work):
            if "access" in f and f.endswith((".log",)) or re.search(r"access.*\.log\.\d+$", f):
                try:
                    os.truncate(os.path.join(self.work, f), 0)
                except OSError:
                    pass

    def saturate(self, sc, system, seconds):
        name = self.system_for(sc, system)
        s = self.systems[name]
        auth = self.auth_for(sc, system)
        aux = s.get("aux_pids", lambda: [])
        stats0 = redis_commandstats(self.redis_port) if "aux_pids" in s else None
        served0 = proxy_requests(s["metrics"]) if "aux_pids" in s else None
        t0, a0 = cpu_ticks(s["pids"]()), cpu_ticks(aux())
        res = run_wrk(s["port"], sc, auth, seconds, self.args.connections, self.args.wrk_threads,
                      self.cpu_load)
        t1, a1 = cpu_ticks(s["pids"]()), cpu_ticks(aux())
        served1 = proxy_requests(s["metrics"]) if "aux_pids" in s else None
        stats1 = redis_commandstats(self.redis_port) if "aux_pids" in s else None
        self.check_statuses(sc, name, res)
        self.trim_logs()
        self.sent[name] = self.sent.get(name, 0) + res["requests"]
        out = {
            "rps": res["requests"] / (res["duration_us"] / 1e6),
            "cpu_us_per_req": (t1 - t0) / CLK * 1e6 / res["requests"],
            "requests": res["requests"],
        }
        if "aux_pids" in s:
            out["redis_cpu_us_per_req"] = (a1 - a0) / CLK * 1e6 / res["requests"]
            # Per request the proxy served (wrk does not count those cut off at its end).
            out["redis_calls_per_req"], out["redis_round_trips_per_req"] = redis_calls(
                stats0, stats1, max(1, served1 - served0))
        return out

    def open_loop(self, sc, system, seconds, rate):
        name = self.system_for(sc, system)
        s = self.systems[name]
        auth = self.auth_for(sc, system)
        aux = s.get("aux_pids", lambda: [])
        stats0 = redis_commandstats(self.redis_port) if "aux_pids" in s else None
        served0 = proxy_requests(s["metrics"]) if "aux_pids" in s else None
        t0, a0 = cpu_ticks(s["pids"]()), cpu_ticks(aux())
        res = run_oha(s["port"], sc, auth, seconds, rate, self.args.oha_connections,
                      self.cpu_load)
        t1, a1 = cpu_ticks(s["pids"]()), cpu_ticks(aux())
        served1 = proxy_requests(s["metrics"]) if "aux_pids" in s else None
        stats1 = redis_commandstats(self.redis_port) if "aux_pids" in s else None
        codes = res.get("statusCodeDistribution", {})
        total = sum(codes.values())
        want = str(sc.get("expect", 200))
        if codes.get(want, 0) != total:
            raise BenchError(f"{sc['name']} on {name} at {rate}/s: statuses {codes}, "
                             f"errors {res.get('errorDistribution')}")
        if total == 0:
            # Nothing answered in time: an overloaded machine, not a broken script.
            self.notes.append(f"latency {sc['name']} on {name} at {rate}/s: no answer within "
                              f"the run ({res.get('errorDistribution')}); figure left out")
            return None
        pct = res["latencyPercentiles"]
        timings = self.log_timings(name)
        self.trim_logs()
        self.sent[name] = self.sent.get(name, 0) + total
        extra = {}
        if "aux_pids" in s:
            extra["redis_cpu_us_per_req"] = (a1 - a0) / CLK * 1e6 / total
            _, extra["redis_round_trips_per_req"] = redis_calls(
                stats0, stats1, max(1, served1 - served0))
        if timings:
            extra["access_log_timings"] = timings
        return {
            **extra,
            "rate": rate,
            "achieved_rps": res["summary"]["requestsPerSec"],
            "p50_ms": pct["p50"] * 1e3,
            "p99_ms": pct["p99"] * 1e3,
            "p999_ms": pct["p99.9"] * 1e3,
            "aborted_at_end": sum((res.get("errorDistribution") or {}).values()),
            "cpu_us_per_req": (t1 - t0) / CLK * 1e6 / total,
            "requests": total,
        }

    # -- the run --

    def run(self):
        a = self.args
        started = datetime.datetime.now(datetime.timezone.utc)
        for b in (self.orion_bin, self.bare_bin):
            if not os.access(b, os.X_OK):
                raise BenchError(f"{b} is missing: build it first (bench/run does)")
        self.body_file = write_upstream_data(self.work)
        self.make_credentials()
        self.start_upstream()
        self.start_redis()
        self.probe_features()
        self.start_bare()
        self.start_nginx()
        self.start_orion("orion")
        for name, f in self.features.items():
            if f and f["spec"].get("apply") == "variant":
                self.start_orion(f"orion+{name}", name)
        self.obtain_tokens()
        scenarios = self.scenarios()
        for sc in scenarios:
            for system in sc["systems"]:
                self.verify(sc, system)
        log(f"work dir {self.work}; scenarios: {', '.join(s['name'] for s in scenarios)}")

        # RSS with idle keep-alive connections, each system fresh from the load of the others.
        rss = {}
        if a.idle_connections > 0:
            get = next(s for s in scenarios if s["name"] == "get_instance") if any(
                s["name"] == "get_instance" for s in scenarios) else None
            if get:
                for system in ("bare", "nginx", "orion"):
                    s = self.systems[system]
                    rss[system] = measure_idle(
                        s["port"], s["pids"], f"Bearer {self.api_key}", a.idle_connections,
                        get["path"], self.cpu_load)
                    self.sent[system] = self.sent.get(system, 0) + rss[system]["answered_ok"]
                    log(f"idle {system}: {rss[system]}")
                    if rss[system]["answered_ok"] < a.idle_connections * 0.99:
                        raise BenchError(f"idle connections on {system}: {rss[system]}")

        self.loadavg = {"start": os.getloadavg()}
        # Saturation, systems in turn, the first system rotating each round.
        sat = {}
        for r in range(a.rounds):
            for sc in scenarios:
                systems = sc["systems"]
                order = systems[r % len(systems):] + systems[: r % len(systems)]
                for system in order:
                    if r == 0 and a.warmup > 0:
                        self.saturate(sc, system, a.warmup)
                    m = self.saturate(sc, system, a.duration)
                    sat.setdefault(sc["name"], {}).setdefault(system, []).append(m)
                    log(f"round {r + 1}/{a.rounds} saturation {sc['name']:<26} {system:<6} "
                        f"{m['rps']:9.0f} req/s {m['cpu_us_per_req']:7.1f} us/req")

        self.loadavg["after_saturation"] = os.getloadavg()
        # Latency at a fixed rate: half of the bare pass-through's saturation.
        lat = {}
        have_oha = shutil.which("oha") is not None
        if not have_oha:
            self.notes.append("latency: skipped, oha is not installed (bench/run installs it "
                              "unless --smoke)")
        for r in range(a.rounds if have_oha else 0):
            for sc in scenarios:
                ref = sc["name"] if "bare" in sc["systems"] else sc["bare_ref"]
                bare_rps = statistics.median(m["rps"] for m in sat[ref]["bare"])
                rate = max(10, int(bare_rps * a.load_fraction))
                systems = sc["systems"]
                order = systems[r % len(systems):] + systems[: r % len(systems)]
                for system in order:
                    m = self.open_loop(sc, system, a.latency_duration, rate)
                    if m is None:
                        continue
                    lat.setdefault(sc["name"], {}).setdefault(system, []).append(m)
                    log(f"round {r + 1}/{a.rounds} latency    {sc['name']:<26} {system:<6} "
                        f"at {rate}/s p50 {m['p50_ms']:.3f} p99 {m['p99_ms']:.3f} "
                        f"p99.9 {m['p999_ms']:.3f} ms")

        self.loadavg["after_latency"] = os.getloadavg()
        self.check_access_logs()
        PROCS.stop_all()

        profile = None
        if a.profile:
            profile = self.profile_all()

        return self.report(started, scenarios, sat, lat, rss, profile)

    def check_access_logs(self):
        """The pipeline really logged: the access log files have lines."""
        for name, s in self.systems.items():
            if not name.startswith("orion") or not self.sent.get(name):
                continue
            path = os.path.join(self.work, f"orion-access-{s['port']}.log")
            self.trim_logs()
            request(s["port"], "GET", f"/api/v1/instances/{INSTANCE_ID}",
                    f"Bearer {self.api_key}")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if os.path.exists(path) and os.path.getsize(path) > 0:
                    break
                time.sleep(0.1)
            else:
                raise BenchError(f"{name} wrote no access-log line to {path}")
            # Lines are rotated away past `logging.rotate`, so the count of written lines comes
            # from the metrics listener: requests served against lines the queue dropped.
            host, port = s["metrics"].rsplit(":", 1)
            st, _, text = request(int(port), "GET", "/metrics")
            if st != 200:
                raise BenchError(f"{name}: the metrics listener answered {st}")
            dropped = sum(
                float(l.rsplit(" ", 1)[1])
                for l in text.decode().splitlines()
                if l.startswith("orion_proxy_access_log_dropped_total")
            )
            sent = self.sent.get(name, 0)
            self.access_log[name] = {"requests": sent, "dropped_lines": int(dropped)}
            if dropped > sent * 0.01:
                self.notes.append(f"{name}: the access log dropped {int(dropped)} of {sent} lines "
                                  "under load (less work than nginx, which logs every request)")

    # -- instruction profile --

    def profile_all(self):
        """callgrind on the GET scenario: instructions per request of each system (exact and
        repeatable, unlike time on a shared machine) and the functions that cost them."""
        if not shutil.which("valgrind"):
            self.notes.append("profile: skipped, valgrind is not installed")
            return None
        out = {}
        sc = {"name": "get_instance", "method": "GET",
              "path": f"/api/v1/instances/{INSTANCE_ID}"}
        self.start_upstream()
        for system in ("bare", "nginx", "orion"):
            port = free_port()
            cg = os.path.join(self.work, f"callgrind.{system}.out")
            if system == "bare":
                argv = [self.bare_bin, "--listen", f"127.0.0.1:{port}", "--upstream",
                        f"127.0.0.1:{self.upstream_port}", "--threads", str(self.args.threads)]
            elif system == "nginx":
                argv = ["nginx", "-p", self.work, "-c",
                        self.nginx_equivalent_conf(port, master=False)]
            else:
                path = os.path.join(self.work, "orion-profile.yaml")
                with open(path, "w") as f:
                    json.dump(self.orion_config(port, None), f, indent=1)
                argv = [self.orion_bin, "run", "-c", path]
            vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg}",
                  "--instr-atstart=no", "--dump-line=no"]
            p = PROCS.start(f"callgrind-{system}", vg + argv,
                            os.path.join(self.work, f"callgrind-{system}.log"),
                            cpu=self.cpu_sut, env=dict(os.environ, RUST_LOG="warn"))
            wait_port(port, p, f"{system} under callgrind", timeout=180)
            auth = f"Bearer {self.api_key}"
            run_wrk(port, sc, auth, 2, 4, 1, self.cpu_load)  # warm: connections, caches
            self.callgrind_control(p.pid, "-i", "on")
            res = run_wrk(port, sc, auth, self.args.profile_seconds, 4, 1, self.cpu_load)
            self.callgrind_control(p.pid, "-i", "off")
            self.check_statuses(sc, system, res)
            PROCS.stop(p, signal.SIGINT if system != "nginx" else signal.SIGQUIT, wait=60)
            files = [f for f in os.listdir(self.work) if f.startswith(f"callgrind.{system}.out")]
            total = 0
            for f in files:
                total += callgrind_total(os.path.join(self.work, f))
            if total <= 0:
                raise BenchError(f"callgrind counted no instructions for {system}")
            top = self.annotate([os.path.join(self.work, f) for f in files])
            out[system] = {"requests": res["requests"], "instructions": total,
                           "instructions_per_req": total / max(1, res["requests"]),
                           "top": top}
            log(f"profile {system}: {res['requests']} requests, "
                f"{out[system]['instructions_per_req']:.0f} instructions/request")
        PROCS.stop_all()
        return out

    def callgrind_control(self, pid, *args):
        r = subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True,
                           text=True, timeout=60)
        if r.returncode != 0:
            raise BenchError(f"callgrind_control {args} failed: {r.stdout} {r.stderr}")

    def annotate(self, files):
        files = [f for f in files if os.path.getsize(f) > 0]
        if not files:
            return []
        r = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", *files],
                           capture_output=True, text=True, timeout=300)
        rows = []
        for line in r.stdout.splitlines():
            m = re.match(r"^\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(.*)$", line)
            if m and "PROGRAM TOTALS" not in line:
                rows.append({"ir": int(m.group(1).replace(",", "")), "pct": float(m.group(2)),
                             "function": m.group(3).strip()})
        groups = {}
        for row in rows:
            g = component(row["function"])
            groups[g] = groups.get(g, 0) + row["ir"]
        total = sum(groups.values()) or 1
        by_component = [{"component": k, "ir": v, "pct": round(100 * v / total, 2)}
                        for k, v in sorted(groups.items(), key=lambda kv: -kv[1])]
        return {"functions": rows[: self.args.profile_top],
                "components": by_component[: self.args.profile_top]}

    # -- report --

    def report(self, started, scenarios, sat, lat, rss, profile):
        med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
        rows = []
        for sc in scenarios:
            bare_ref = sc["name"] if "bare" in sc["systems"] else sc.get("bare_ref")
            nginx_ref = sc["name"] if "nginx" in sc["systems"] else sc.get("nginx_ref")
            for system in sc["systems"]:
                s = sat[sc["name"]][system]
                row = {
                    "scenario": sc["name"],
                    "system": system,
                    "process": self.system_for(sc, system),
                    "rps": med([m["rps"] for m in s]),
                    "cpu_us_per_req": med([m["cpu_us_per_req"] for m in s]),
                    "rounds": len(s),
                }
                if any("redis_cpu_us_per_req" in m for m in s):
                    row["redis_cpu_us_per_req"] = med(
                        [m["redis_cpu_us_per_req"] for m in s if "redis_cpu_us_per_req" in m])
                    row["redis_round_trips_per_req"] = med(
                        [m["redis_round_trips_per_req"] for m in s])
                    row["redis_calls_per_req"] = {
                        k: med([m["redis_calls_per_req"].get(k, 0) for m in s])
                        for k in sorted({k for m in s for k in m["redis_calls_per_req"]})}
                l = lat.get(sc["name"], {}).get(system)
                if l:
                    row.update({
                        "rate": l[0]["rate"],
                        "achieved_rps": med([m["achieved_rps"] for m in l]),
                        "p50_ms": med([m["p50_ms"] for m in l]),
                        "p99_ms": med([m["p99_ms"] for m in l]),
                        "p999_ms": med([m["p999_ms"] for m in l]),
                        "cpu_us_per_req_at_rate": med([m["cpu_us_per_req"] for m in l]),
                    })
                    if all("redis_cpu_us_per_req" in m for m in l):
                        row["redis_cpu_us_per_req_at_rate"] = med(
                            [m["redis_cpu_us_per_req"] for m in l])
                        row["redis_round_trips_per_req_at_rate"] = med(
                            [m["redis_round_trips_per_req"] for m in l])
                    if all("access_log_timings" in m for m in l):
                        t = [m["access_log_timings"] for m in l]
                        row["access_log_timings"] = {
                            part: {k: med([x[part][k] for x in t]) for k in t[0][part]}
                            for part in ("total", "upstream", "own")}
                row["bare_ref"] = bare_ref
                row["nginx_ref"] = nginx_ref
                rows.append(row)

        def ref_row(scn, system):
            return next((r for r in rows if r["scenario"] == scn and r["system"] == system),
                        None)

        for row in rows:
            b = ref_row(row["bare_ref"], "bare") if row["bare_ref"] else None
            n = ref_row(row["nginx_ref"], "nginx") if row["nginx_ref"] else None
            for key in ("rps", "cpu_us_per_req", "p99_ms"):
                if b and b.get(key) and row.get(key) is not None:
                    row[f"{key}_x_bare"] = row[key] / b[key]
                if n and n.get(key) and row.get(key) is not None:
                    row[f"{key}_x_nginx"] = row[key] / n[key]
            if b and row.get("p99_ms") is not None and b.get("p99_ms") is not None:
                row["p99_added_ms"] = row["p99_ms"] - b["p99_ms"]
            # A shared-state variant against the same GET on the memory backend (same process
            # config otherwise, same run): what Redis adds.
            mem = ref_row(row["bare_ref"], "orion") if row.get("redis_cpu_us_per_req") is not None \
                else None
            if mem:
                row["memory_ref"] = mem["scenario"]
                if mem.get("cpu_us_per_req"):
                    row["cpu_us_per_req_x_memory"] = row["cpu_us_per_req"] / mem["cpu_us_per_req"]
                    row["cpu_with_redis_us_per_req"] = (row["cpu_us_per_req"]
                                                        + row["redis_cpu_us_per_req"])
                    row["cpu_with_redis_x_memory"] = (row["cpu_with_redis_us_per_req"]
                                                      / mem["cpu_us_per_req"])
                for key in ("p50_ms", "p99_ms"):
                    if row.get(key) is not None and mem.get(key) is not None:
                        row[f"{key[:-3]}_added_vs_memory_ms"] = row[key] - mem[key]

        result = {
            "started": started.isoformat(timespec="seconds"),
            "commit": git_rev(),
            "mode": "smoke" if self.args.smoke else "full",
            "build_profile": self.args.target_dir,
            "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                        "loadavg": self.loadavg},
            "settings": {k: v for k, v in vars(self.args).items() if k not in ("func",)},
            "pinning": {"sut_cpu": self.cpu_sut, "load_and_upstream_cpu": self.cpu_load},
            "features": {k: bool(v) for k, v in self.features.items()},
            "notes": self.notes,
            "rows": rows,
            "idle_connections": rss,
            "access_log": self.access_log,
            "profile": profile,
        }
        result["targets"] = targets(result)
        return result


def targets(res):
    rows = res["rows"]

    def get(scn, system, key):
        r = next((r for r in rows if r["scenario"] == scn and r["system"] == system), None)
        return r.get(key) if r else None

    validated = res["features"].get("body-unvalidated", False)
    out = []

    def add(name, value, limit, unit, ok_if_le=True, note=""):
        if value is None:
            out.append({"target": name, "value": None, "limit": limit, "met": None,
                        "note": note or "not measured in this run"})
        else:
            out.append({"target": name, "value": value, "limit": limit, "unit": unit,
                        "met": (value <= limit) if ok_if_le else (value >= limit), "note": note})

    add("GET CPU/request vs bare", get("get_instance", "orion", "cpu_us_per_req_x_bare"), 1.15, "x")
    add("validated POST CPU/request vs bare",
        get("post_assemble", "orion", "cpu_us_per_req_x_bare"), 1.3, "x",
        note="" if validated else "schema validation is not in this build: JSON parse only")
    add("token GET CPU/request vs bare", get("get_token", "orion", "cpu_us_per_req_x_bare"), 1.2,
        "x")
    add("JWT GET CPU/request vs bare", get("get_jwt", "orion", "cpu_us_per_req_x_bare"), 1.2, "x")
    add("GET added p99 at half load", get("get_instance", "orion", "p99_added_ms"), 1.0, "ms")
    idle = res["idle_connections"].get("orion")
    add(f"RSS with {idle['connections'] if idle else 10000} idle keep-alive connections",
        idle["rss_kib"] / 1024 if idle else None, 64.0, "MiB")
    add("stretch: GET CPU/request vs nginx", get("get_instance", "orion", "cpu_us_per_req_x_nginx"),
        1.0, "x")
    # Issue 14: rate limits on Redis against the memory backend.
    if any(r["scenario"] == "get_instance_redis" for r in rows):
        add("Redis exact: round trips per request (saturation)",
            get("get_instance_redis", "orion", "redis_round_trips_per_req"), 1.0, "",
            note="commands the proxy sent, from redis-server's INFO commandstats")
        add("Redis exact: added p99 vs memory at half load",
            get("get_instance_redis", "orion", "p99_added_vs_memory_ms"), 0.3, "ms")
    if any(r["scenario"] == "get_instance_redis_batched" for r in rows):
        add("Redis batched: proxy CPU/request vs memory",
            get("get_instance_redis_batched", "orion", "cpu_us_per_req_x_memory"), 1.1, "x")
        add("Redis batched: proxy + redis-server CPU/request vs memory",
            get("get_instance_redis_batched", "orion", "cpu_with_redis_x_memory"), 1.1, "x")
    return out


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(res):
    lines = []
    if res["mode"] == "smoke":
        lines.append(f"smoke run ({res['build_profile']} build, one short round): checks that the "
                     "benchmark works; its figures mean nothing")
    hdr = (f"{'scenario':<26} {'system':<6} {'req/s':>8} {'x bare':>6} {'x nginx':>7} "
           f"{'CPU us/req':>10} {'x bare':>6} {'x nginx':>7} {'at req/s':>8} {'p50 ms':>7} "
           f"{'p99 ms':>7} {'p99.9 ms':>8} {'+p99 ms':>7}")
    lines.append(hdr)
    lines.append("-" * len(hdr))
    last = None
    for r in res["rows"]:
        scn = r["scenario"] if r["scenario"] != last else ""
        last = r["scenario"]
        mark = "*" if r["bare_ref"] and r["bare_ref"] != r["scenario"] else ""
        lines.append(
            f"{scn:<26} {r['system']:<6} {fmt(r['rps'], '8.0f')} "
            f"{fmt(r.get('rps_x_bare'), '5.2f')}{mark:1} {fmt(r.get('rps_x_nginx'), '7.2f')} "
            f"{fmt(r['cpu_us_per_req'], '10.1f')} {fmt(r.get('cpu_us_per_req_x_bare'), '5.2f')}"
            f"{mark:1} {fmt(r.get('cpu_us_per_req_x_nginx'), '7.2f')} "
            f"{fmt(r.get('rate'), '8d')} "
            f"{fmt(r.get('p50_ms'), '7.3f')} {fmt(r.get('p99_ms'), '7.3f')} "
            f"{fmt(r.get('p999_ms'), '8.3f')} {fmt(r.get('p99_added_ms'), '+7.3f')}"
        )
    lines.append("* against the bare pass-through's figures for "
                 + ", ".join(sorted({f"{r['scenario']} -> {r['bare_ref']}" for r in res["rows"]
                                     if r["bare_ref"] and r["bare_ref"] != r["scenario"]}))
                 if any(r["bare_ref"] and r["bare_ref"] != r["scenario"] for r in res["rows"])
                 else "")
    redis_rows = [r for r in res["rows"] if r.get("redis_cpu_us_per_req") is not None]
    if redis_rows:
        lines.append("")
        lines.append(f"{'shared state on Redis':<26} {'proxy CPU':>9} {'x mem':>6} "
                     f"{'redis CPU':>9} {'sum x mem':>9} {'trips/req':>9} {'+p50 ms':>7} "
                     f"{'+p99 ms':>7}  (against {redis_rows[0].get('memory_ref') or '-'}, "
                     "same run; CPU in us/req at saturation, latency at the rate above)")
        for r in redis_rows:
            lines.append(
                f"{r['scenario']:<26} {fmt(r['cpu_us_per_req'], '9.1f')} "
                f"{fmt(r.get('cpu_us_per_req_x_memory'), '6.2f')} "
                f"{fmt(r['redis_cpu_us_per_req'], '9.1f')} "
                f"{fmt(r.get('cpu_with_redis_x_memory'), '9.2f')} "
                f"{fmt(r.get('redis_round_trips_per_req'), '9.3f')} "
                f"{fmt(r.get('p50_added_vs_memory_ms'), '+7.3f')} "
                f"{fmt(r.get('p99_added_vs_memory_ms'), '+7.3f')}")
            calls = ", ".join(f"{k} {v:.3f}" for k, v in r.get("redis_calls_per_req", {}).items())
            lines.append(f"{'':<26} redis commands/req: {calls}")
        lines.append("trips/req: commands the proxy sent on the request path per request served "
                     "(a script call is one; the usage flush's HINCRBY/EXPIREAT pipeline is not)")
    timed = [r for r in res["rows"] if r.get("access_log_timings")]
    if timed:
        lines.append("")
        lines.append("latency runs, from orion's access log (median of rounds; ms): the request in "
                     "the proxy, OrionVM's part, the proxy's own; the client's p99 above minus "
                     "the proxy's is time before the proxy read the request")
        lines.append(f"{'scenario':<26} {'process':<27} {'total p50/p99':>15} "
                     f"{'upstream p50/p99':>17} {'own p50/p99':>13} {'client p99':>10}")
        for r in timed:
            t = r["access_log_timings"]
            lines.append(
                f"{r['scenario']:<26} {r['process']:<27} "
                f"{t['total']['p50_ms']:6.3f}/{t['total']['p99_ms']:7.3f} "
                f"{t['upstream']['p50_ms']:7.3f}/{t['upstream']['p99_ms']:8.3f} "
                f"{t['own']['p50_ms']:5.3f}/{t['own']['p99_ms']:6.3f} "
                f"{fmt(r.get('p99_ms'), '10.3f')}")
    idle = res["idle_connections"]
    if idle:
        lines.append("")
        lines.append(f"{'idle keep-alive connections':<28} {'RSS before':>10} {'RSS held':>9} "
                     f"{'x bare':>6} {'x nginx':>7} {'still open':>10}")
        for system, m in idle.items():
            xb = m["rss_kib"] / idle["bare"]["rss_kib"] if "bare" in idle else None
            xn = m["rss_kib"] / idle["nginx"]["rss_kib"] if "nginx" in idle else None
            lines.append(f"{system + ' (' + str(m['connections']) + ')':<28} "
                         f"{m['rss_before_kib'] / 1024:8.1f}Mi {m['rss_kib'] / 1024:7.1f}Mi "
                         f"{fmt(xb, '6.2f')} {fmt(xn, '7.2f')} {m['still_open']:>10}")
    prof = res.get("profile")
    if prof:
        lines.append("")
        lines.append(f"{'callgrind, get_instance':<28} {'instr/req':>10} {'x bare':>6} "
                     f"{'x nginx':>7}")
        for system, m in prof.items():
            xb = m["instructions_per_req"] / max(1, prof["bare"]["instructions_per_req"])
            xn = m["instructions_per_req"] / max(1, prof["nginx"]["instructions_per_req"])
            lines.append(f"{system:<28} {m['instructions_per_req']:10.0f} {xb:6.2f} {xn:7.2f}")
    lines.append("")
    for t in res["targets"]:
        if t["met"] is None:
            state = "n/a "
            val = ""
        else:
            state = "MET " if t["met"] else "MISS"
            val = f"{t['value']:.2f}{t['unit']} (limit {t['limit']}{t['unit']})"
        note = f"  [{t['note']}]" if t.get("note") else ""
        lines.append(f"target {state} {t['target']}: {val}{note}")
    for n in res["notes"]:
        lines.append(f"note: {n}")
    return "\n".join(lines)


def component(function):
    """Where a function belongs, for the per-component summary: the crate (orion_proxy down to
    its module), or the shared object for C code (libc's memcpy, mimalloc, nginx)."""
    text = function.split(" [", 1)
    obj = os.path.basename(text[1].rstrip("]")) if len(text) > 1 else "?"
    sym = text[0].split(":", 1)[1] if ":" in text[0] else text[0]
    if "memcpy" in sym or "memmove" in sym or "memset" in sym:
        return "libc mem*"
    if sym.startswith(("mi_", "_mi_")) or "mimalloc" in text[0]:
        return "mimalloc"
    m = re.search(r"([A-Za-z_][A-Za-z0-9_]*)::", sym)
    if not m or m.group(1) in ("core", "alloc", "std") and "orion_proxy" not in sym:
        if m and m.group(1) in ("core", "alloc", "std"):
            return f"rust {m.group(1)}"
        return obj
    crate = m.group(1)
    if crate == "orion_proxy" or "orion_proxy::" in sym:
        parts = re.search(r"orion_proxy::([A-Za-z0-9_]+)(::([A-Za-z0-9_]+))?", sym)
        if parts:
            return "orion_proxy::" + parts.group(1) + (
                "::" + parts.group(3) if parts.group(3) and parts.group(3)[0].islower() else "")
    return crate


def callgrind_total(path):
    """The run's instruction count: `totals:` (written at the end), else `summary:`."""
    found = {}
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                key, value = line.split()[:2]
                found[key] = int(value)
    return found.get("totals:") or found.get("summary:", 0)


def main():
    ap = argparse.ArgumentParser(prog="bench/run")
    sub = ap.add_subparsers(dest="cmd")
    ic = sub.add_parser("idle-client")
    ic.add_argument("--port", type=int, required=True)
    ic.add_argument("--count", type=int, required=True)
    ic.add_argument("--auth", required=True)
    ic.add_argument("--path", required=True)
    ic.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--smoke", action="store_true", help="a few seconds per scenario")
    ap.add_argument("--target-dir", default="release", help="target/<dir> holding the binaries")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=6, help="seconds per saturation run")
    ap.add_argument("--latency-duration", type=int, default=6, help="seconds per latency run")
    ap.add_argument("--warmup", type=int, default=2, help="seconds before the first round")
    ap.add_argument("--threads", type=int, default=1,
                    help="worker threads of each proxy (nginx workers)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections")
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--oha-connections", type=int, default=64)
    ap.add_argument("--load-fraction", type=float, default=0.5,
                    help="latency rate as a fraction of the bare saturation")
    ap.add_argument("--idle-connections", type=int, default=10000)
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin the proxies and the load to separate cores")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--profile-seconds", type=int, default=10)
    ap.add_argument("--profile-top", type=int, default=30)
    ap.add_argument("--bare-l4-read-buffer", type=int, default=None,
                    help="experiment: the bare pass-through's downstream read buffer in bytes")
    ap.add_argument("--scenarios", type=lambda s: s.split(","), default=None)
    ap.add_argument("--out", help="result JSON (default bench/results/<time>-<commit>.json)")
    ap.add_argument("--max-seconds", type=int, default=3600,
                    help="the whole run stops after this long")
    args = ap.parse_args()
    if args.cmd == "idle-client":
        return idle_client(args)
    if args.smoke:
        args.rounds, args.duration, args.latency_duration, args.warmup = 1, 1, 2, 0
        args.idle_connections = min(args.idle_connections, 200)
        args.profile = False
        args.max_seconds = min(args.max_seconds, 600)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    signal.alarm(args.max_seconds)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.idle_connections + 1000:
        raise SystemExit(f"bench: open files limit {hard} is too low for "
                         f"{args.idle_connections} idle connections (raise `ulimit -Hn`)")
    bench = Bench(args)
    try:
        res = bench.run()
    except (BenchError, subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError,
            KeyError, ValueError) as e:
        PROCS.stop_all()
        log(f"bench: FAILED: {e}")
        log(f"bench: logs and configs kept in {bench.work}")
        return 1
    except KeyboardInterrupt:
        PROCS.stop_all()
        log("bench: interrupted")
        return 130
    finally:
        signal.alarm(0)
        PROCS.stop_all()
    text = table(res)
    print(text)
    out = args.out
    if not out and not args.smoke:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = os.path.join(BENCH, "results", f"{stamp}-{res['commit']}.json")
    encoded = json.dumps(res, indent=1)
    json.loads(encoded)  # the result must round-trip, smoke run included
    if os.environ.get("BENCH_KEEP_WORK"):
        # The configs, access logs and process output, for a look at what a run did (the
        # access log's timings of slow requests, README "Performance").
        log(f"bench: work dir kept: {bench.work}")
    else:
        shutil.rmtree(bench.work, ignore_errors=True)
    if not out:
        log("bench: smoke run passed (results not kept)")
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(encoded + "\n")
    if not args.smoke and not args.out:
        with open(os.path.join(BENCH, "results", "latest.txt"), "w") as f:
            f.write(f"# {res['started']} commit {res['commit']} ({res['build_profile']} build)\n")
            f.write(text + "\n")
        shutil.copyfile(out, os.path.join(BENCH, "results", "latest.json"))
    log(f"bench: results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
