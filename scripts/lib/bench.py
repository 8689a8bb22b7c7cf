"""Measurements for scripts/bench (run with the repository's .venv python).

scripts/bench installs the tools, builds the release binary and the stand-ins,
starts the moto server on a loopback port and then runs this file, which:

1. times "process start -> the node stand-in has parsed the key" for
   (a) `ssm-cosmovisor exec -- <node>`, (a') `ssm-cosmovisor run` through the
   cosmovisor stand-in, (b) the AWS CLI shell script an operator would write and
   (c) one raw SigV4-signed request with curl, interleaved, N times each;
2. measures delivery latency and re-arm latency over >= 100 upgrade rounds
   (cosmovisor stand-in, node holding 1,000 fds), re-arm after a plain node
   exit, and delivery latency while another process holds 0/100/1,000/10,000 fds;
3. samples the idle supervisor's RSS and context switches over >= 10 s;
4. reports the release binary's size;
5. times failover with the DynamoDB lease: clean handover and expiry takeover;
6. times the reader check's /proc scan per task (now) against per pid (before,
   kept in bench/scan.rs), interleaved, on this machine as it is and with a
   process of 64 threads and 1,000 fds added, also in split trust and as an
   unprivileged scanner;

then prints one markdown table and writes it (with the machine and method) to
bench/results.md. Everything it starts runs in its own session and is killed on
every exit path.
"""

import base64
import datetime
import hashlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

E = os.environ
REPO = Path(E["BENCH_REPO"])
WORK = Path(E["BENCH_WORK"])
BIN = Path(E["BENCH_BIN"])
EXAMPLES = Path(E["BENCH_EXAMPLES"])
VENV = Path(E["BENCH_VENV"])
ENDPOINT = E["BENCH_ENDPOINT"]
N = int(E.get("BENCH_N", "21"))
ROUNDS = int(E.get("BENCH_ROUNDS", "100"))
FD_ROUNDS = int(E.get("BENCH_FD_ROUNDS", "40"))
IDLE_S = float(E.get("BENCH_IDLE_S", "10"))
NODE_FDS = int(E.get("BENCH_NODE_FDS", "1000"))
JSON_TOOL = E.get("BENCH_JSON_TOOL", "jq")  # "jq" or "python"
HAVE_SIGV4 = E.get("BENCH_CURL_SIGV4", "1") == "1"
PARAM = "/bench/validator/priv_validator_key"
PARENT = os.getppid()
T0 = time.monotonic()

children = []  # every Popen we started (each in its own session)


def log(msg):
    print(f"==> [{time.monotonic() - T0:5.1f} s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# process handling: everything in its own session, killed on every exit path
# --------------------------------------------------------------------------------------


def spawn(cmd, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL):
    p = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr, stdin=stdin, start_new_session=True)
    children.append(p)
    with open(WORK / "pgids", "a") as f:
        f.write(f"{p.pid}\n")
    return p


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def kill_group(p, grace=3.0):
    """SIGTERM the session's process group, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        if not group_alive(p.pid):
            break
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            break
        end = time.monotonic() + wait
        while time.monotonic() < end and group_alive(p.pid):
            try:
                p.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                pass
    try:
        p.wait(timeout=1)
    except subprocess.TimeoutExpired:
        pass


def finish(p, timeout=60):
    """Waits for p, then for every process of its session (a backgrounded writer)."""
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(p)
        raise RuntimeError(f"{p.args!r} did not finish within {timeout}s")
    end = time.monotonic() + 10
    while group_alive(p.pid) and time.monotonic() < end:
        # A script's backgrounded writer outlives the node it exec'd into and
        # is re-parented to us (a child subreaper): reap it, or its zombie
        # keeps the group "alive".
        try:
            os.waitpid(-p.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.002)
    if group_alive(p.pid):
        kill_group(p)
    return rc


def cleanup():
    for p in children:
        kill_group(p, grace=2.0)
    if os.getppid() != PARENT:
        # scripts/bench died without running its trap (SIGKILL): its share too.
        moto = int(E.get("BENCH_MOTO_PID", "0") or 0)
        if moto > 0:
            try:
                os.kill(moto, signal.SIGTERM)
            except ProcessLookupError:
                pass
        import shutil

        shutil.rmtree(WORK, ignore_errors=True)


def on_signal(sig, _frame):
    raise SystemExit(128 + sig)


# --------------------------------------------------------------------------------------
# keys, homes, environment
# --------------------------------------------------------------------------------------


def genkey():
    k = Ed25519PrivateKey.generate()
    seed = k.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
    pub = k.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    doc = {
        "address": hashlib.sha256(pub).digest()[:20].hex().upper(),
        "pub_key": {"type": "tendermint/PubKeyEd25519", "value": base64.b64encode(pub).decode()},
        "priv_key": {"type": "tendermint/PrivKeyEd25519", "value": base64.b64encode(seed + pub).decode()},
    }
    return doc["address"], json.dumps(doc, indent=2) + "\n"


def link_or_copy(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        import shutil

        shutil.copy2(src, dst)


def make_home(name, upgrades=0, marker=False):
    """A node home laid out as cosmovisor expects (like tests/support Home::add_upgrades)."""
    home = WORK / name
    for d in ("config", "data", "cosmovisor/genesis/bin"):
        (home / d).mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    os.chmod(home / "config", 0o700)
    link_or_copy(EXAMPLES / "node-standin", home / "cosmovisor/genesis/bin/noded")
    os.symlink("genesis", home / "cosmovisor/current")
    for i in range(1, upgrades + 1):
        link_or_copy(EXAMPLES / "node-standin", home / f"cosmovisor/upgrades/upgrade-{i}/bin/noded")
    (home / "config/config.toml").write_text('moniker = "bench"\n')
    (home / "data/priv_validator_state.json").write_text('{"height":"0","round":0,"step":0}\n')
    if marker:
        # As after a chain's first upgrade: the SDK then rewrites this file in place
        # (no create event), and the stand-in does the same.
        (home / "data/upgrade-info.json").write_text('{"name":"genesis","height":0}')
    key = home / "config/priv_validator_key.json"
    key.write_text(SAFE_KEY)
    os.chmod(key, 0o600)
    return home


def base_env():
    env = {k: v for k, v in E.items() if not k.startswith(("BENCH_", "NODE_", "STANDIN_", "AWS_", "DAEMON_", "SSM_COSMOVISOR_"))}
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        env.pop(k, None)
    env.update(
        {
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PATH": f"{VENV}/bin:{env.get('PATH', '/usr/bin:/bin')}",
            "AWS_ENDPOINT_URL": ENDPOINT,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(WORK / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(WORK / "no-aws-credentials"),
            "AWS_PARAMETER": PARAM,
        }
    )
    return env


def tool_env(home, **extra):
    env = base_env()
    env.update({"USE_SSM_KEY": "true", "DAEMON_HOME": str(home), "DAEMON_NAME": "noded"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def read_jsonl(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
    except FileNotFoundError:
        pass
    return out


EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def ts_us(ts):
    """tracing-subscriber's RFC 3339 timestamp (µs precision) -> µs since the epoch."""
    dt = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    return (dt - EPOCH) // datetime.timedelta(microseconds=1)


def now_us():
    return time.time_ns() // 1000


def events(log_path, name=None):
    evs = []
    for r in read_jsonl(log_path):
        if "event" in r and "timestamp" in r:
            r["_us"] = ts_us(r["timestamp"])
            if name is None or r["event"] == name:
                evs.append(r)
    return evs


def wait_for(pred, timeout, what, proc=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited early with status {proc.returncode}")
        time.sleep(0.02)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def stats(xs):
    xs = sorted(xs)
    return {"n": len(xs), "median": statistics.median(xs), "min": xs[0], "max": xs[-1]}


# --------------------------------------------------------------------------------------
# 1. time to key
# --------------------------------------------------------------------------------------

SCRIPT_B = """#!/usr/bin/env bash
# What an operator would write without ssm-cosmovisor: fetch with the AWS CLI into a FIFO
# at the key path and start the node, which blocks on the FIFO until the key arrives.
set -eu
rm -f "$KEY_FIFO"; mkfifo -m 0600 "$KEY_FIFO"
aws ssm get-parameter --name "$AWS_PARAMETER" --with-decryption \\
    --query Parameter.Value --output text --endpoint-url "$AWS_ENDPOINT_URL" >"$KEY_FIFO" &
exec "$NODE_BIN" start
"""

SCRIPT_C = """#!/usr/bin/env bash
# The floor: one raw SigV4-signed GetParameter request, the value extracted and written
# to the FIFO the node reads.
set -eu
rm -f "$KEY_FIFO"; mkfifo -m 0600 "$KEY_FIFO"
curl -sS --fail --aws-sigv4 "aws:amz:us-east-1:ssm" -u "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \\
    -H 'X-Amz-Target: AmazonSSM.GetParameter' -H 'Content-Type: application/x-amz-json-1.1' \\
    -d "{\\"Name\\":\\"$AWS_PARAMETER\\",\\"WithDecryption\\":true}" "$AWS_ENDPOINT_URL/" \\
    | __EXTRACT__ >"$KEY_FIFO" &
exec "$NODE_BIN" start
"""

EXTRACT = {
    "jq": "jq -r .Parameter.Value",
    "python": f"{VENV}/bin/python -c 'import json,sys; print(json.load(sys.stdin)[\"Parameter\"][\"Value\"])'",
}

STAGES = ["slot_checked", "fetching", "fetched", "backup", "armed", "child_started", "stripped", "delivered"]


def time_to_key():
    homes = {"a": make_home("ttk-exec"), "a2": make_home("ttk-run"), "bc": make_home("ttk-scripts")}
    sb = WORK / "operator-awscli.sh"
    sb.write_text(SCRIPT_B)
    sc = WORK / "operator-curl.sh"
    sc.write_text(SCRIPT_C.replace("__EXTRACT__", EXTRACT[JSON_TOOL]))
    node = homes["bc"] / "cosmovisor/genesis/bin/noded"
    variants = ["a", "a2", "b"] + (["c"] if HAVE_SIGV4 else [])
    res = {v: [] for v in variants}
    stage_deltas = {}  # (from,to) -> [µs]
    failures = []
    for i in range(N):
        for v in variants:
            rep = WORK / f"ttk-{v}-{i}.report.jsonl"
            logf = WORK / f"ttk-{v}-{i}.log"
            if v == "a":
                h = homes["a"]
                cmd = [str(BIN), "--log-format", "json", "exec", "--", str(h / "cosmovisor/genesis/bin/noded"), "start", "--home", str(h)]
                env = tool_env(h, NODE_REPORT=rep, NODE_EXIT_AFTER_MS=0)
            elif v == "a2":
                h = homes["a2"]
                cmd = [str(BIN), "--log-format", "json", "run", "start", "--home", str(h)]
                env = tool_env(h, NODE_REPORT=rep, NODE_EXIT_AFTER_MS=0, COSMOVISOR_BIN=EXAMPLES / "cosmovisor-standin")
            else:
                fifo = WORK / f"fifo-{v}"
                cmd = ["bash", str(sb if v == "b" else sc)]
                env = base_env()
                env.update({"KEY_FIFO": str(fifo), "NODE_KEY_FILE": str(fifo), "NODE_BIN": str(node), "NODE_REPORT": str(rep), "NODE_EXIT_AFTER_MS": "0"})
            with open(logf, "wb") as lf:
                t0 = now_us()
                p = spawn(cmd, env, stderr=lf)
                rc = finish(p)
            r = read_jsonl(rep)
            ok = rc == 0 and len(r) == 1 and r[0].get("outcome") == "ok" and r[0].get("address") == CONSENSUS_ADDR
            if not ok:
                failures.append(f"{v}#{i}: exit {rc}, report {r[:1]}, log {logf.name}")
                continue
            res[v].append((r[0]["read_done_unix_us"] - t0) / 1000.0)
            if v == "a":
                evs = {e["event"]: e["_us"] for e in events(logf) if e["event"] in STAGES}
                evs["start"] = t0
                evs["node_parsed"] = r[0]["read_done_unix_us"]
                chain = sorted(evs, key=lambda k: evs[k])
                for x, y in zip(chain, chain[1:]):
                    stage_deltas.setdefault((x, y), []).append((evs[y] - evs[x]) / 1000.0)
        if i == 0 or (i + 1) % 5 == 0:
            log(f"time to key: round {i + 1}/{N}: " + ", ".join(f"{v} {res[v][-1]:.1f} ms" for v in variants if res[v]))
    return res, stage_deltas, failures


# --------------------------------------------------------------------------------------
# 2. delivery and re-arm latency
# --------------------------------------------------------------------------------------


def supervise_rounds(name, rounds, after_ms, mode, node_fds, timeout):
    """One `ssm-cosmovisor run` under the cosmovisor stand-in whose node reads the key,
    then (mode "marker") writes the upgrade marker and exits, or (mode "exit") exits
    without a marker and is restarted, `rounds` times; the start after that keeps
    running. Returns the tool's process (still running), its log, report and marker log."""
    home = make_home(name, upgrades=rounds if mode == "marker" else 0, marker=(mode == "marker"))
    rep, mlog, logf = WORK / f"{name}.report.jsonl", WORK / f"{name}.markers.jsonl", WORK / f"{name}.log"
    extra = dict(NODE_REPORT=rep, NODE_MARKER_LOG=mlog, NODE_HOLD_FDS=node_fds, COSMOVISOR_BIN=EXAMPLES / "cosmovisor-standin")
    if mode == "marker":
        extra.update(NODE_UPGRADE_AFTER_MS=after_ms, NODE_UPGRADES=rounds)
    else:
        extra.update(NODE_EXIT_AFTER_MS=after_ms, NODE_EXITS=rounds, STANDIN_RESTART_ALWAYS=1, STANDIN_MAX_STARTS=rounds * 3)
    cmd = [str(BIN), "--log-format", "json", "run", "start", "--home", str(home)]
    lf = open(logf, "wb")
    p = spawn(cmd, tool_env(home, **extra), stderr=lf)
    lf.close()

    def done():
        planned = read_jsonl(mlog)
        r = read_jsonl(rep)
        # `rounds` planned upgrades/exits, then a start that read the key and stays up,
        # and the tool has logged that last delivery.
        return len(planned) >= rounds and r and r[-1].get("outcome") == "ok" and len(events(logf, "delivered")) >= rounds + 1

    wait_for(done, timeout, f"{rounds} {mode} rounds in {name}", proc=p)
    return p, logf, rep, mlog


def pair_after(starts, ends):
    """For each start time, the first end time at or after it (each end used once)."""
    out, j = [], 0
    ends = sorted(ends)
    for s in sorted(starts):
        while j < len(ends) and ends[j] < s:
            j += 1
        if j == len(ends):
            break
        out.append((ends[j] - s) / 1000.0)
        j += 1
    return out


def stop_tool(p):
    try:
        os.kill(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        finish(p, timeout=30)
    except RuntimeError:
        pass


def delivery_and_rearm():
    out = {}
    # (1) upgrade rounds: delivery with the node holding NODE_FDS fds; re-arm on the marker.
    log(f"delivery/re-arm: {ROUNDS} upgrade rounds, node holding {NODE_FDS} fds")
    p, logf, rep, mlog = supervise_rounds("upgrades", ROUNDS, 50, "marker", NODE_FDS, timeout=ROUNDS * 2 + 60)
    deliv = events(logf, "delivered")
    out["delivery_tool"] = [e["latency_us"] / 1000.0 for e in deliv]
    reports = read_jsonl(rep)
    out["delivery_node"] = [r["elapsed_read_us"] / 1000.0 for r in reports if r.get("outcome") == "ok"]
    out["bad_reads_marker"] = [r.get("outcome") for r in reports if r.get("outcome") != "ok"]
    marks = [m["marker_written_unix_us"] for m in read_jsonl(mlog) if "marker_written_unix_us" in m]
    rearm = events(logf, "re_armed")
    out["rearm_marker_reasons"] = sorted({e.get("reason") for e in rearm})
    out["rearm_marker"] = pair_after(marks, [e["_us"] for e in rearm])
    # (3) idle cost, on this supervisor after its last delivery.
    out["idle"] = idle_cost(p)
    stop_tool(p)

    # (2) node exits without a marker; a supervisor restarts it at once.
    log(f"re-arm after node exit: {ROUNDS} rounds")
    p, logf, rep, mlog = supervise_rounds("exits", ROUNDS, 50, "exit", NODE_FDS, timeout=ROUNDS * 2 + 60)
    exits = [m["exit_unix_us"] for m in read_jsonl(mlog) if "exit_unix_us" in m]
    rearm = [e for e in events(logf, "re_armed") if e.get("reason") == "node exited"]
    out["rearm_exit"] = pair_after(exits, [e["_us"] for e in rearm])
    out["bad_reads_exit"] = [r.get("outcome") for r in read_jsonl(rep) if r.get("outcome") != "ok"]
    stop_tool(p)

    # (4) delivery latency vs fds held by another process (the /proc scan's cost).
    out["fd_table"] = []
    for nfds in (0, 100, 1000, 10000):
        holder = None
        try:
            if nfds:
                holder = hold_fds(nfds)
                if holder is None:
                    out["fd_table"].append((nfds, None))
                    continue
            log(f"delivery with another process holding {nfds} fds: {FD_ROUNDS} rounds")
            # The node runs long enough for each hand-off (and its final scan) to finish.
            after_ms = 100 if nfds < 10000 else 400
            p, logf, _, _ = supervise_rounds(f"fds{nfds}", FD_ROUNDS, after_ms, "marker", 0, timeout=FD_ROUNDS * 3 + 60)
            out["fd_table"].append((nfds, [e["latency_us"] / 1000.0 for e in events(logf, "delivered")]))
            stop_tool(p)
        finally:
            if holder is not None:
                kill_group(holder)
    return out


HOLDER = r"""
import os, resource, sys
n = int(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = n + 64
if soft < want:
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
try:
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(n)]
except OSError as e:
    print("FAIL", e, flush=True)
    sys.exit(1)
print("READY", flush=True)
sys.stdin.read()
"""


def hold_fds(n):
    p = spawn([str(VENV / "bin/python"), "-c", HOLDER, str(n)], base_env(), stdout=subprocess.PIPE, stdin=subprocess.PIPE)
    line = p.stdout.readline().decode().strip()
    if line != "READY":
        log(f"cannot hold {n} fds in another process: {line} (RLIMIT_NOFILE)")
        kill_group(p)
        return None
    return p


# --------------------------------------------------------------------------------------
# 6. reader scan: per task (now) against per pid (before)
# --------------------------------------------------------------------------------------

SCAN_ROUNDS = int(E.get("BENCH_SCAN_ROUNDS", "40"))

# A process with THREADS threads sharing one table of FDS open fds (as a Go node's).
THREADED = r"""
import os, resource, sys, threading
n, t = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < n + 64:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 64), hard))
fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(n)]
ev = threading.Event()
for _ in range(t - 1):
    threading.Thread(target=ev.wait, daemon=True).start()
print("READY", flush=True)
sys.stdin.read()
"""


def any_user_python():
    # The virtualenv's Python may sit under a home only its owner can enter.
    for p in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(p):
            return p
    return str(VENV / "bin/python")


def nobody_ids():
    import pwd

    u = pwd.getpwnam("nobody")
    return u.pw_uid, u.pw_gid


def as_nobody(cmd, bounded_root=False):
    uid, gid = nobody_ids()
    if bounded_root:
        # Root as the split-trust unit runs it: no CAP_SYS_PTRACE, no CAP_DAC_*.
        return ["setpriv", "--bounding-set=-all,+setuid,+setgid,+chown,+kill", "--inh-caps=-all", "--"] + cmd
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"] + cmd


def threaded_process(fds, threads, user=False):
    cmd = [any_user_python(), "-c", THREADED, str(fds), str(threads)]
    p = spawn(as_nobody(cmd) if user else cmd, base_env(), stdout=subprocess.PIPE, stdin=subprocess.PIPE)
    if p.stdout.readline().decode().strip() != "READY":
        kill_group(p)
        raise RuntimeError("the threaded fd holder did not start")
    return p


def scan_bench(prefix=(), node=None):
    cmd = list(prefix) + [str(EXAMPLES / "scan-bench"), str(SCAN_ROUNDS)] + ([str(x) for x in node] if node else [])
    p = spawn(cmd, base_env(), stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"scan-bench failed with status {p.returncode}")
    d = json.loads(out)
    return [x / 1000.0 for x in d["per_pid_us"]], [x / 1000.0 for x in d["per_task_us"]], d["pids"], d["tasks"]


BASELINE = E.get("BENCH_BASELINE_BIN", "")
BASELINE_LABEL = E.get("BENCH_BASELINE_LABEL", Path(BASELINE).name if BASELINE else "")


def delivery_vs_baseline():
    """Delivery latency of this build against BENCH_BASELINE_BIN (e.g. the release binary
    of the commit before the per-task scan), interleaved: `exec -- node`, the node holding
    NODE_FDS fds, FD_ROUNDS rounds each. None without a baseline."""
    if not BASELINE:
        return None
    home = make_home("baseline")
    out = {"current": [], "baseline": []}
    log(f"delivery latency, this build against {BASELINE}: {FD_ROUNDS} interleaved rounds each")
    node = home / "cosmovisor/genesis/bin/noded"
    for i in range(FD_ROUNDS):
        order = [("current", BIN), ("baseline", Path(BASELINE))]
        for name, b in order if i % 2 == 0 else reversed(order):
            logf = WORK / f"baseline-{name}-{i}.log"
            with open(logf, "wb") as lf:
                env = tool_env(home, NODE_HOLD_FDS=NODE_FDS, NODE_EXIT_AFTER_MS=50)
                p = spawn([str(b), "--log-format", "json", "exec", "--", str(node), "start", "--home", str(home)], env, stderr=lf)
            finish(p, timeout=60)
            out[name] += [e["latency_us"] / 1000.0 for e in events(logf, "delivered")]
    return out


def scan_cost():
    rows = []
    log(f"reader scan, per pid vs per task: {SCAN_ROUNDS} interleaved rounds per case")
    rows.append(("this machine as it is", scan_bench()))
    p = threaded_process(1000, 64)
    try:
        rows.append(("with a process of 64 threads sharing 1,000 fds", scan_bench()))
    finally:
        kill_group(p)
    if os.geteuid() == 0 and subprocess.run(["which", "setpriv"], capture_output=True).returncode == 0:
        # Split trust: the same process as the node user; kcmp needs ptrace rights the unit
        # does not have, so every thread's table of a node-uid process is read.
        p = threaded_process(1000, 64, user=True)
        try:
            rows.append(("split trust (root without CAP_SYS_PTRACE), the node user's process of 64 threads and 1,000 fds", scan_bench(as_nobody([], bounded_root=True), nobody_ids())))
        finally:
            kill_group(p)
        # The unprivileged unit: another uid's threads are each tried (and skipped).
        p = threaded_process(1000, 64)
        try:
            rows.append(("unprivileged scanner (nobody), another uid's process of 64 threads", scan_bench(as_nobody([]))))
        finally:
            kill_group(p)
    return rows


# --------------------------------------------------------------------------------------
# 5. failover lease
# --------------------------------------------------------------------------------------

LEASE_S = int(E.get("BENCH_LEASE_S", "6"))
LEASE_ROUNDS = int(E.get("BENCH_LEASE_ROUNDS", "5"))
LEASE_TABLE = "bench-lease"


def create_lease_table():
    import boto3

    c = boto3.client(
        "dynamodb",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    c.create_table(
        TableName=LEASE_TABLE,
        KeySchema=[{"AttributeName": "lease", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "lease", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


class LeaseHost:
    """One host of a two-host validator: a node home, its report, one log per start."""

    def __init__(self, name):
        self.name = name
        self.home = make_home(f"lease-{name}")
        self.report = WORK / f"lease-{name}.report.jsonl"
        self.starts = 0
        self.p = None
        self.logf = None

    def start(self):
        self.starts += 1
        self.logf = WORK / f"lease-{self.name}-{self.starts}.log"
        env = tool_env(
            self.home,
            NODE_REPORT=self.report,
            COSMOVISOR_BIN=EXAMPLES / "cosmovisor-standin",
            SSM_COSMOVISOR_LEASE_TABLE=LEASE_TABLE,
            SSM_COSMOVISOR_LEASE_DURATION=f"{LEASE_S}s",
        )
        lf = open(self.logf, "wb")
        self.p = spawn([str(BIN), "--log-format", "json", "run", "start", "--home", str(self.home)], env, stderr=lf)
        lf.close()

    def keyed_reads(self):
        return [r for r in read_jsonl(self.report) if r.get("outcome") == "ok" and r.get("address") == CONSENSUS_ADDR]


def lease_failover():
    """Alternating roles over LEASE_ROUNDS rounds: the holder is stopped cleanly (the
    standby takes the released lease), then the new holder is SIGKILLed (the standby
    waits for the lease to expire). Times run from the stop/kill to the standby's node
    having read the key. Also the idle cost of a holder renewing its lease."""
    log(f"failover lease: {LEASE_ROUNDS} rounds of clean handover + expiry takeover, {LEASE_S} s lease")
    create_lease_table()
    a, b = LeaseHost("a"), LeaseHost("b")
    out = {"clean": [], "expiry": [], "idle": None}
    holder, standby = a, b
    holder.start()
    wait_for(lambda: len(holder.keyed_reads()) >= 1, 60, "first holder's node gets the key", proc=holder.p)
    for i in range(LEASE_ROUNDS):
        for kind in ("clean", "expiry"):
            standby.start()
            wait_for(lambda: events(standby.logf, "lease_waiting"), 60, f"{standby.name} standing by", proc=standby.p)
            if i == 0 and kind == "clean":
                out["idle"] = idle_cost(holder.p)
            had = len(standby.keyed_reads())
            t0 = now_us()
            if kind == "clean":
                os.kill(holder.p.pid, signal.SIGTERM)
            else:
                os.kill(holder.p.pid, signal.SIGKILL)
            wait_for(lambda: len(standby.keyed_reads()) > had, LEASE_S * 4 + 30, f"{kind} takeover by {standby.name}", proc=standby.p)
            out[kind].append((standby.keyed_reads()[had]["read_done_unix_us"] - t0) / 1000.0)
            if kind == "clean":
                finish(holder.p, timeout=30)
            else:
                kill_group(holder.p, grace=2.0)
            holder, standby = standby, holder
    stop_tool(holder.p)
    return out


# --------------------------------------------------------------------------------------
# 3. idle cost
# --------------------------------------------------------------------------------------


def proc_status(pid):
    d = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            d[k] = v.strip()
    return d


def ctxt_switches(pid):
    total, threads = 0, 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            s = proc_status(f"{pid}/task/{t}")
        except FileNotFoundError:
            continue
        total += int(s["voluntary_ctxt_switches"]) + int(s["nonvoluntary_ctxt_switches"])
        threads += 1
    return total, threads


def idle_cost(p):
    time.sleep(1.0)  # let the last delivery's final scan and logging finish
    c0, threads = ctxt_switches(p.pid)
    t0 = time.monotonic()
    time.sleep(IDLE_S)
    c1, _ = ctxt_switches(p.pid)
    dt = time.monotonic() - t0
    st = proc_status(p.pid)
    kb = lambda k: int(st.get(k, "0 kB").split()[0])
    return {
        "seconds": dt,
        "switches": c1 - c0,
        "per_s": (c1 - c0) / dt,
        "threads": threads,
        "rss_kb": kb("VmRSS"),
        "hwm_kb": kb("VmHWM"),
        "rss_anon_kb": kb("RssAnon"),
        "rss_file_kb": kb("RssFile"),
    }


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------


def fmt_ms(x):
    return f"{x:.2f} ms" if x < 10 else f"{x:.1f} ms"


def row(cells):
    return "| " + " | ".join(cells) + " |"


def verdict(ok):
    return "met" if ok else "**MISSED**"


def loadavg():
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def become_subreaper():
    """Orphans of what we start are re-parented to us, so we can reap and kill them;
    and our parent's death stops us."""
    import ctypes

    PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        # If scripts/bench dies without its trap (SIGKILL), we still clean up.
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def main():
    load_before = loadavg()
    become_subreaper()
    # SIGINT too: started in the background by scripts/bench, we inherit it ignored.
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)
    global SAFE_KEY, CONSENSUS_ADDR
    started = time.monotonic()
    _, SAFE_KEY = genkey()
    CONSENSUS_ADDR, consensus = genkey()
    keyfile = WORK / "consensus.json"
    keyfile.write_text(consensus)
    os.chmod(keyfile, 0o600)
    rc = finish(spawn([str(BIN), "import", "-f", str(keyfile)], base_env()))
    keyfile.unlink()
    if rc != 0:
        raise SystemExit(f"ssm-cosmovisor import failed with status {rc}")

    ttk, stages, ttk_fail = time_to_key()
    dr = delivery_and_rearm()
    lf = lease_failover()
    sc = scan_cost()
    vb = delivery_vs_baseline()
    size = BIN.stat().st_size

    m = {v: stats(xs) for v, xs in ttk.items() if xs}
    lines = []
    lines.append(row(["measurement", "median", "min", "max", "n", "target", ""]))
    lines.append(row(["---"] * 7))

    def add(name, st, target="", ok=None, unit=fmt_ms):
        lines.append(row([name, unit(st["median"]), unit(st["min"]), unit(st["max"]), str(st["n"]), target, "" if ok is None else verdict(ok)]))

    names = {
        "a": "time to key (a) `ssm-cosmovisor exec -- node`",
        "a2": "time to key (a') `ssm-cosmovisor run` via cosmovisor stand-in",
        "b": "time to key (b) AWS CLI script (`aws ssm get-parameter` → FIFO)",
        "c": f"time to key (c) floor: `curl --aws-sigv4` \\| {JSON_TOOL} → FIFO",
    }
    for v in ("a", "a2", "b", "c"):
        if v in m:
            add(names[v], m[v])
    ratios = []
    if "a" in m and "b" in m:
        r = m["a"]["median"] / m["b"]["median"]
        ratios.append(("ratio (a)/(b) of medians", r, "≤ 0.10", r <= 0.10))
    if "a" in m and "c" in m:
        r = m["a"]["median"] / m["c"]["median"]
        ratios.append(("ratio (a)/(c) of medians", r, "≤ 1.5", r <= 1.5))
    if "a2" in m and "c" in m:
        r = m["a2"]["median"] / m["c"]["median"]
        ratios.append(("ratio (a')/(c) of medians", r, "", None))
    for name, r, target, ok in ratios:
        lines.append(row([name, f"{r:.3f}", "", "", "", target, "" if ok is None else verdict(ok)]))

    d = stats(dr["delivery_tool"])
    add(f"delivery latency, node holding {NODE_FDS} fds (tool: writer open → drain confirmed, incl. verification)", d, "median ≤ 5 ms", d["median"] <= 5.0)
    dn = stats(dr["delivery_node"])
    add(f"delivery latency, node holding {NODE_FDS} fds (node: open → EOF)", dn)
    rm = stats(dr["rearm_marker"])
    add("re-arm: upgrade marker written → FIFO in place", rm, "median ≤ 2 ms", rm["median"] <= 2.0)
    re = stats(dr["rearm_exit"])
    add("re-arm: node calls exit() → FIFO in place", re, "median ≤ 2 ms", re["median"] <= 2.0)
    for nfds, xs in dr["fd_table"]:
        name = f"delivery latency, another process holding {nfds:,} fds (node holds none)"
        if xs is None:
            lines.append(row([name, "skipped (RLIMIT_NOFILE)", "", "", "", "", ""]))
        else:
            add(name, stats(xs))
    if vb and vb["current"] and vb["baseline"]:
        sb, sn = stats(vb["baseline"]), stats(vb["current"])
        add(f"delivery latency, `exec`, node holding {NODE_FDS} fds, baseline {BASELINE_LABEL} (BENCH_BASELINE_BIN)", sb)
        add(f"delivery latency, `exec`, node holding {NODE_FDS} fds, this build, interleaved with the baseline", sn)
        lines.append(row(["ratio this build / baseline of medians (delivery latency)", f"{sn['median'] / sb['median']:.2f}", "", "", "", "", ""]))
    for label, (old, new, pids, tasks) in sc:
        so, sn = stats(old), stats(new)
        add(f"reader scan, {label} ({pids} processes, {tasks} tasks): per pid (before)", so)
        add(f"reader scan, {label}: per task (now)", sn)
        lines.append(row([f"ratio per task / per pid of medians, {label}", f"{sn['median'] / so['median']:.2f}", "", "", "", "", ""]))
    idle = dr["idle"]
    lines.append(row([f"idle supervisor after {ROUNDS + 1} deliveries: RSS (VmRSS)", f"{idle['rss_kb'] / 1024:.1f} MB", "", "", "", "≤ 8 MB", verdict(idle["rss_kb"] <= 8 * 1024)]))
    lines.append(
        row(
            [
                f"idle supervisor: context switches/s, all {idle['threads']} threads, over {idle['seconds']:.1f} s",
                f"{idle['per_s']:.2f} /s",
                "",
                "",
                "",
                "0 /s",
                verdict(idle["switches"] == 0),
            ]
        )
    )
    lc, le = stats(lf["clean"]), stats(lf["expiry"])
    add(f"failover, {LEASE_S} s lease: holder stopped (SIGTERM) → standby's node has the key", lc)
    add(f"failover, {LEASE_S} s lease: holder killed (SIGKILL) → standby's node has the key", le)
    d_ms = LEASE_S * 1000.0
    lines.append(
        row(
            [
                "ratio expiry takeover / lease duration",
                f"{le['median'] / d_ms:.2f}",
                f"{le['min'] / d_ms:.2f}",
                f"{le['max'] / d_ms:.2f}",
                str(le["n"]),
                "min ≥ 0.67 (never before expiry)",
                verdict(le["min"] >= d_ms * 2 / 3),
            ]
        )
    )
    li = lf["idle"]
    lines.append(row([f"idle holder renewing a {LEASE_S} s lease: context switches/s, all {li['threads']} threads, over {li['seconds']:.1f} s", f"{li['per_s']:.2f} /s", "", "", "", "", ""]))
    lines.append(row(["release binary size (strip = symbols)", f"{size:,} B ({size / 1048576:.1f} MiB)", "", "", "", "", ""]))
    build = E.get("BENCH_BUILD_NOTE", "")
    if build:
        lines.append(row(["release build (`cargo build --release --bin ssm-cosmovisor --examples`)", build, "", "", "", "", ""]))
    table = "\n".join(lines)

    notes = []
    if stages:
        notes.append(
            "Where (a)'s time goes (medians, from its JSON log's timestamps): "
            + ", ".join(f"{x}→{y} {statistics.median(v):.2f} ms" for (x, y), v in stages.items())
            + "."
        )
    notes.append(
        f"Idle supervisor memory: VmRSS {idle['rss_kb'] / 1024:.1f} MB = RssAnon {idle['rss_anon_kb'] / 1024:.1f} MB"
        f" + RssFile {idle['rss_file_kb'] / 1024:.1f} MB (mapped pages of the binary and libc; VmHWM {idle['hwm_kb'] / 1024:.1f} MB)."
    )
    notes.append(
        f"Re-arm pairing: marker rounds {len(dr['rearm_marker'])}, exit rounds {len(dr['rearm_exit'])}; "
        f"re_armed reasons seen in the upgrade run: {', '.join(map(str, dr['rearm_marker_reasons']))}."
    )
    for k, label in (("bad_reads_marker", "upgrade"), ("bad_reads_exit", "exit")):
        if dr[k]:
            notes.append(f"In the {label} run, {len(dr[k])} node start(s) did not get the key: {', '.join(dr[k])} (the node restarted before the FIFO was back).")
    if JSON_TOOL != "jq":
        notes.append("jq was not available: (c) extracts the value with Python instead (its start-up, ~20 ms, inflates the floor, flattering (a)/(c)).")
    if not HAVE_SIGV4:
        notes.append("curl lacks --aws-sigv4 (needs ≥ 7.75): (c) was skipped.")
    if ttk_fail:
        notes.append("Failed time-to-key runs (left out): " + "; ".join(ttk_fail))
    elapsed = time.monotonic() - started
    total = ""
    if E.get("BENCH_T0"):
        total = f"; `scripts/bench` as a whole (installs, build, measurements) {time.time() - float(E['BENCH_T0']):.0f} s"
    notes.append(f"Measurements took {elapsed:.0f} s{total}.")

    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    header = (
        f"Machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}, Linux {platform.release()}; "
        f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; commit {E.get('BENCH_COMMIT', '?')}; "
        f"moto {E.get('BENCH_MOTO', '?')} on 127.0.0.1, {E.get('BENCH_AWSCLI', 'aws-cli ?')}, {E.get('BENCH_CURL', 'curl ?')}; "
        f"N = {N} interleaved runs per time-to-key variant, {ROUNDS} delivery/re-arm rounds; "
        f"load average {load_before} before, {loadavg()} after (other work on the machine adds noise)."
    )
    method = """How: time to key is wall-clock from just before the benchmark spawns the command to the
`read_done_unix_us` the node stand-in reports after parsing the key; every variant runs the same
node stand-in (which exits right after reading) against the same moto server, interleaved
(a, a', b, c, a, ...). (b) and (c) are bash scripts that `mkfifo`, start the fetch in the
background writing to the FIFO, and `exec` the node (`scripts/lib/bench.py` holds them). Delivery
latency is the tool's `delivered.latency_us`, and the node's own open→EOF time, over the upgrade
rounds of one `ssm-cosmovisor run` with the cosmovisor stand-in (`NODE_UPGRADE_AFTER_MS=50`,
`NODE_UPGRADES`, one `upgrades/upgrade-N/bin/noded` hard link per round, `NODE_HOLD_FDS`). Re-arm
latency pairs the node's `NODE_MARKER_LOG` times (marker file closed / just before `exit()`)
with the tool's `re_armed` log timestamps. The fd table reruns the upgrade rounds while a
separate process of the same uid holds N open fds of /dev/null. Idle cost: VmRSS and the sum
of voluntary+nonvoluntary context switches over /proc/<pid>/task/*/status, before and after.
Reader scan: `scan-bench` (bench/scan.rs) times one full scan of /proc for an inode nobody
holds (every process scanned to the end, as in the scans of a hand-off that find only the node)
with the library's per-task scan and with the per-pid scan of commit ce0a855 kept in that file,
alternating which goes first; the delivery latency rows above already include the per-task scan.
Failover: two hosts (two node homes) share the key and a lease in moto's DynamoDB; each round
stops the holder with SIGTERM (the standby takes the released lease at its next poll, a third
of the duration at most) and then SIGKILLs the new holder (the standby may take over only a
full duration after it last saw the lease change, so the ratio to the duration is at least
2/3: the holder's last renewal can be up to a third old when it dies). Times run from the
signal to the standby's node stand-in having parsed the key."""
    text = f"{header}\n\n{table}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    print(text)
    out = REPO / "bench/results.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        "# scripts/bench results\n\nWritten by `scripts/bench`; rerun it to refresh.\n\n"
        + text
        + "\n"
        + method
        + "\n"
    )
    (WORK / "table.md").write_text(text)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    SAFE_KEY = CONSENSUS_ADDR = None
    try:
        sys.exit(main())
    finally:
        # A second signal must not cut the clean-up short.
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        cleanup()
