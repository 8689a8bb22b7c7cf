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
7. metrics on and off: the idle supervisor with metrics off, textfile only,
   endpoint only and both, sampled over the same windows (wakeups/s, threads,
   RSS, ratios to off), and what one scrape of the endpoint costs;

then prints one markdown table and writes it (with the machine and method) to
bench/results.md, the metrics in their own section ("## metrics on and off").
With BENCH_ONLY=metrics (`scripts/bench metrics`) only 7. runs, and only that
section of bench/results.md is replaced. Everything it starts runs in its own session and is killed on
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


GUARD_TIP = 1000
GUARD_STATE = GUARD_TIP - 5


def guard_endpoint(home):
    """The CometBFT RPC stand-in for variant (g): a chain at GUARD_TIP whose last signature
    of the key is the home's sign state (a restart after a short stop: 4 heights to read),
    and the home's genesis naming the chain. Returns (url, chain file, process)."""
    chain_file = WORK / "guard-chain.json"
    port_file = WORK / "guard-port"
    (home / "config/genesis.json").write_text(json.dumps({"chain_id": "bench-1", "app_state": {}}))
    (home / "data/priv_validator_state.json").write_text(json.dumps({"height": str(GUARD_STATE), "round": 0, "step": 3}))
    refresh_guard_chain(chain_file)
    p = spawn([str(VENV / "bin/python"), str(REPO / "tests/standins/cometbft_rpc.py"), str(chain_file), str(port_file)], base_env())
    wait_for(lambda: port_file.exists(), 20, "the CometBFT RPC stand-in's port", p)
    return f"http://127.0.0.1:{port_file.read_text().strip()}", chain_file, p


def refresh_guard_chain(chain_file):
    """The chain as the guard must see it: a fresh tip (rewritten before each run)."""
    now_ms = int(time.time() * 1000)
    sigs = {str(h): [{"flag": 2, "address": CONSENSUS_ADDR, "time_ms": now_ms - 10_000}] for h in range(GUARD_TIP - 40, GUARD_STATE + 1)}
    tmp = chain_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"chain_id": "bench-1", "tip": GUARD_TIP, "tip_time_ms": now_ms - 1000, "earliest": 1, "signatures": sigs}))
    os.replace(tmp, chain_file)


def time_to_key():
    homes = {"a": make_home("ttk-exec"), "a2": make_home("ttk-run"), "bc": make_home("ttk-scripts"), "g": make_home("ttk-guard")}
    guard_url, guard_chain, guard_proc = guard_endpoint(homes["g"])
    sb = WORK / "operator-awscli.sh"
    sb.write_text(SCRIPT_B)
    sc = WORK / "operator-curl.sh"
    sc.write_text(SCRIPT_C.replace("__EXTRACT__", EXTRACT[JSON_TOOL]))
    node = homes["bc"] / "cosmovisor/genesis/bin/noded"
    variants = ["a", "g", "a2", "b"] + (["c"] if HAVE_SIGV4 else [])
    res = {v: [] for v in variants}
    stage_deltas = {}  # (from,to) -> [µs]
    failures = []
    for i in range(N):
        for v in variants:
            rep = WORK / f"ttk-{v}-{i}.report.jsonl"
            logf = WORK / f"ttk-{v}-{i}.log"
            if v in ("a", "g"):
                h = homes[v]
                cmd = [str(BIN), "--log-format", "json", "exec", "--", str(h / "cosmovisor/genesis/bin/noded"), "start", "--home", str(h)]
                env = tool_env(h, NODE_REPORT=rep, NODE_EXIT_AFTER_MS=0)
                if v == "g":
                    refresh_guard_chain(guard_chain)
                    env["SSM_COSMOVISOR_GUARD_RPC"] = guard_url
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
    kill_group(guard_proc)
    return res, stage_deltas, failures


# --------------------------------------------------------------------------------------
# 2. delivery and re-arm latency
# --------------------------------------------------------------------------------------


def supervise_rounds(name, rounds, after_ms, mode, node_fds, timeout, env_extra=None):
    """One `ssm-cosmovisor run` under the cosmovisor stand-in whose node reads the key,
    then (mode "marker") writes the upgrade marker and exits, or (mode "exit") exits
    without a marker and is restarted, `rounds` times; the start after that keeps
    running. Returns the tool's process (still running), its log, report and marker log."""
    home = make_home(name, upgrades=rounds if mode == "marker" else 0, marker=(mode == "marker"))
    rep, mlog, logf = WORK / f"{name}.report.jsonl", WORK / f"{name}.markers.jsonl", WORK / f"{name}.log"
    extra = dict(NODE_REPORT=rep, NODE_MARKER_LOG=mlog, NODE_HOLD_FDS=node_fds, COSMOVISOR_BIN=EXAMPLES / "cosmovisor-standin")
    if mode == "marker":
        extra.update(NODE_UPGRADE_AFTER_MS=after_ms, NODE_UPGRADES=rounds, STANDIN_INSTANT_UPGRADE=1)
    else:
        extra.update(NODE_EXIT_AFTER_MS=after_ms, NODE_EXITS=rounds, STANDIN_RESTART_ALWAYS=1, STANDIN_MAX_STARTS=rounds * 3)
    extra.update(env_extra or {})
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
    """(voluntary+nonvoluntary switches of all threads, thread count), from tasks()."""
    ts = tasks(pid)
    return sum(sw for _, sw, _ in ts.values()), len(ts)


def idle_cost(p):
    time.sleep(1.0)  # let the last delivery's final scan and logging finish
    c0, threads = ctxt_switches(p.pid)
    t0 = time.monotonic()
    time.sleep(IDLE_S)
    c1, _ = ctxt_switches(p.pid)
    dt = time.monotonic() - t0
    m = mem(p.pid)
    return {
        "seconds": dt,
        "switches": c1 - c0,
        "per_s": (c1 - c0) / dt,
        "threads": threads,
        "rss_kb": m["rss_kb"],
        "hwm_kb": m["hwm_kb"],
        "rss_anon_kb": m["anon_kb"],
        "rss_file_kb": m["file_kb"],
    }


# --------------------------------------------------------------------------------------
# 7. metrics on and off
# --------------------------------------------------------------------------------------

METRICS_ROUNDS = int(E.get("BENCH_METRICS_ROUNDS", "20"))
METRICS_WINDOWS = int(E.get("BENCH_METRICS_WINDOWS", "3"))
SCRAPES = int(E.get("BENCH_SCRAPES", "200"))
METRICS_DELIVERIES = int(E.get("BENCH_METRICS_DELIVERIES", "40"))
# name, textfile, endpoint
METRICS_VARIANTS = [("off", False, False), ("textfile", True, False), ("endpoint", False, True), ("both", True, True)]
METRICS_HEADING = "## metrics on and off"


def free_port():
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tasks(pid):
    """{tid: (comm, voluntary+nonvoluntary switches, ns on CPU)} for every thread of pid."""
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{t}"
        try:
            st = proc_status(f"{pid}/task/{t}")
            with open(f"{base}/schedstat") as f:
                ns = int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
        sw = int(st["voluntary_ctxt_switches"]) + int(st["nonvoluntary_ctxt_switches"])
        out[int(t)] = (st.get("Name", "?"), sw, ns)
    return out


def task_delta(a, b):
    """Per thread: (comm, switches, cpu ns) between two tasks() snapshots (threads that
    came or went count from 0)."""
    out = {}
    for tid in set(a) | set(b):
        comm = (b.get(tid) or a.get(tid))[0]
        sw0, ns0 = (a[tid][1], a[tid][2]) if tid in a else (0, 0)
        sw1, ns1 = (b[tid][1], b[tid][2]) if tid in b else (sw0, ns0)
        out[tid] = (comm, sw1 - sw0, ns1 - ns0)
    return out


def mem(pid):
    st = proc_status(pid)
    kb = lambda k: int(st.get(k, "0 kB").split()[0])
    return {"rss_kb": kb("VmRSS"), "anon_kb": kb("RssAnon"), "file_kb": kb("RssFile"), "hwm_kb": kb("VmHWM"), "threads": int(st["Threads"])}


def file_id(path):
    try:
        st = os.stat(path)
        return (st.st_ino, st.st_mtime_ns, st.st_size)
    except FileNotFoundError:
        return None


def scrape(port, openmetrics=False):
    """One GET /metrics on a fresh connection (the endpoint answers one request per
    connection and closes): ms from connect to EOF, and the response."""
    import socket

    req = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if openmetrics:
        req += b"Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n"
    req += b"\r\n"
    t0 = time.perf_counter_ns()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(req)
        chunks = []
        while True:
            b = c.recv(65536)
            if not b:
                break
            chunks.append(b)
    t1 = time.perf_counter_ns()
    return (t1 - t0) / 1e6, b"".join(chunks)


def idle_windows(sups, n, seconds):
    """n windows of `seconds`, every supervisor sampled over the same window (the snapshot
    order rotates): per variant a list of task_delta() per window, and each window's length."""
    per = {name: [] for name in sups}
    lengths = []
    names = list(sups)
    for w in range(n):
        order = names[w % len(names):] + names[: w % len(names)]
        t0 = time.monotonic()
        a = {name: tasks(sups[name]["p"].pid) for name in order}
        time.sleep(seconds)
        b = {name: tasks(sups[name]["p"].pid) for name in order}
        lengths.append(time.monotonic() - t0)
        for name in names:
            per[name].append(task_delta(a[name], b[name]))
    return per, lengths


def metrics_delivery(mdir):
    """Delivery latency with each metrics variant, interleaved (the order rotates each
    round): `exec -- node`, one short-lived supervisor per delivery."""
    home = make_home("metrics-exec")
    node = home / "cosmovisor/genesis/bin/noded"
    out = {n: [] for n, _, _ in METRICS_VARIANTS}
    log(f"metrics: delivery latency, `exec`, {METRICS_DELIVERIES} interleaved rounds per variant")
    for i in range(METRICS_DELIVERIES):
        k = i % len(METRICS_VARIANTS)
        for name, tf, ep in METRICS_VARIANTS[k:] + METRICS_VARIANTS[:k]:
            extra = {"NODE_EXIT_AFTER_MS": 50}
            if tf:
                extra["SSM_COSMOVISOR_METRICS_FILE"] = mdir / f"exec-{name}.prom"
            if ep:
                extra["SSM_COSMOVISOR_METRICS_ADDR"] = f"127.0.0.1:{free_port()}"
            logf = WORK / f"metrics-exec-{name}-{i}.log"
            with open(logf, "wb") as lf:
                p = spawn([str(BIN), "--log-format", "json", "exec", "--", str(node), "start", "--home", str(home)], tool_env(home, **extra), stderr=lf)
            rc = finish(p, timeout=60)
            d = events(logf, "delivered")
            if rc != 0 or len(d) != 1:
                raise RuntimeError(f"metrics delivery {name}#{i}: exit {rc}, {len(d)} deliveries (log {logf})")
            out[name].append(d[0]["latency_us"] / 1000.0)
    return out


def metrics_cost():
    """The idle supervisor (after its last delivery) with metrics off, textfile only,
    endpoint only and both, started back to back and then sampled over the same windows;
    then SCRAPES GETs of /metrics against each endpoint, interleaved."""
    log(f"metrics on and off: {len(METRICS_VARIANTS)} supervisors, {METRICS_ROUNDS} upgrade rounds each, then {METRICS_WINDOWS} idle windows of {IDLE_S:.0f} s side by side")
    mdir = WORK / "textfile-collector"
    mdir.mkdir(mode=0o755, exist_ok=True)
    os.chmod(mdir, 0o755)
    sups = {}
    try:
        for name, tf, ep in METRICS_VARIANTS:
            extra, sup = {}, {"textfile": None, "port": None}
            if tf:
                sup["textfile"] = mdir / f"ssm-cosmovisor-{name}.prom"
                extra["SSM_COSMOVISOR_METRICS_FILE"] = sup["textfile"]
            if ep:
                sup["port"] = free_port()
                extra["SSM_COSMOVISOR_METRICS_ADDR"] = f"127.0.0.1:{sup['port']}"
            p, logf, _, _ = supervise_rounds(f"metrics-{name}", METRICS_ROUNDS, 50, "marker", 0, timeout=METRICS_ROUNDS * 3 + 60, env_extra=extra)
            sup.update(p=p, logf=logf)
            sups[name] = sup
            # Metrics are what the variant says, no more.
            has_file, has_ep = bool(events(logf, "metrics_file")), bool(events(logf, "metrics_endpoint"))
            if (has_file, has_ep) != (tf, ep):
                raise RuntimeError(f"metrics variant {name}: the tool logged metrics_file={has_file}, metrics_endpoint={has_ep}")
            if tf:
                # A writer thread rewrites the file after each change (coalescing): wait for it.
                want = f'ssm_cosmovisor_key_deliveries_total{{outcome="delivered"}} {METRICS_ROUNDS + 1}\n'
                wait_for(lambda: want in sup["textfile"].read_text(), 10, f"{want.strip()!r} in {sup['textfile']}", proc=p)
                sup["textfile_bytes"] = len(sup["textfile"].read_bytes())
        time.sleep(1.0)  # the last delivery's final scan and logging
        for sup in sups.values():
            sup["file_before"] = file_id(sup["textfile"]) if sup["textfile"] else None
        per, lengths = idle_windows(sups, METRICS_WINDOWS, IDLE_S)
        for name, sup in sups.items():
            sup["idle"] = per[name]
            sup["mem"] = mem(sup["p"].pid)
            sup["comms"] = sorted(c for c, _, _ in tasks(sup["p"].pid).values())
            sup["file_after_idle"] = file_id(sup["textfile"]) if sup["textfile"] else None

        # One scrape's cost, interleaved between the two endpoints.
        eps = [n for n, _, ep in METRICS_VARIANTS if ep]
        log(f"metrics: {SCRAPES} GETs of /metrics against each of {', '.join(eps)}, interleaved")
        t_before = {n: tasks(sups[n]["p"].pid) for n in eps}
        for n in eps:
            sups[n]["scrape_ms"] = []
        for i in range(SCRAPES):
            for n in eps if i % 2 == 0 else reversed(eps):
                ms, resp = scrape(sups[n]["port"])
                if not resp.startswith(b"HTTP/1.1 200 OK") or b"ssm_cosmovisor_key_deliveries_total" not in resp:
                    raise RuntimeError(f"metrics variant {n}: bad /metrics answer: {resp[:200]!r}")
                sups[n]["scrape_ms"].append(ms)
                sups[n]["scrape_bytes"] = len(resp)
        for n in eps:
            d = task_delta(t_before[n], tasks(sups[n]["p"].pid))
            sups[n]["scrape_switches"] = sum(sw for _, sw, _ in d.values())
            sups[n]["scrape_cpu_ns"] = sum(ns for _, _, ns in d.values())
            sups[n]["scrape_by_thread"] = {}
            for comm, sw, ns in d.values():
                a = sups[n]["scrape_by_thread"].setdefault(comm, [0, 0])
                a[0] += sw
                a[1] += ns
        # OpenMetrics answers once, for their size.
        for n in eps:
            _, resp = scrape(sups[n]["port"], openmetrics=True)
            sups[n]["scrape_bytes_om"] = len(resp)
        time.sleep(1.0)
        for sup in sups.values():
            sup["mem_after"] = mem(sup["p"].pid)
        log(f"metrics: one more idle window of {IDLE_S:.0f} s after the scrapes")
        per2, lengths2 = idle_windows(sups, 1, IDLE_S)
        for name, sup in sups.items():
            sup["idle_after"] = per2[name]
            sup["file_after_scrapes"] = file_id(sup["textfile"]) if sup["textfile"] else None
    finally:
        for sup in sups.values():
            stop_tool(sup["p"])
    return {"sups": sups, "lengths": lengths, "lengths_after": lengths2, "delivery": metrics_delivery(mdir)}


def metrics_section(mc):
    sups, lengths = mc["sups"], mc["lengths"]
    names = [n for n, _, _ in METRICS_VARIANTS]
    total_s = sum(lengths)
    after_s = sum(mc["lengths_after"])

    def switches(windows):
        return sum(sw for w in windows for _, sw, _ in w.values())

    wake = {n: switches(sups[n]["idle"]) / total_s for n in names}
    wake_max = {n: max(sum(sw for _, sw, _ in w.values()) for w in sups[n]["idle"]) / (total_s / len(lengths)) for n in names}
    wake_after = {n: switches(sups[n]["idle_after"]) / after_s for n in names}

    def ratio(n, v):
        base = v["off"]
        if n == "off":
            return "1"
        if base == 0:
            return "— (both 0)" if v[n] == 0 else f"∞ (off is 0; +{v[n]:.2f})"
        return f"{v[n] / base:.2f}"

    mb = lambda kb: f"{kb / 1024:.2f} MB"
    header = ["", "off", "textfile only", "endpoint only", "both"]
    lines = [row(header), row(["---"] * len(header))]

    def add(label, vals, fmt):
        lines.append(row([label] + [fmt(vals[n]) for n in names]))

    def add_ratio(label, vals):
        lines.append(row([label] + [ratio(n, vals) for n in names]))

    add(f"idle wakeups/s (voluntary+nonvoluntary context switches, all threads), {len(lengths)} window{'s' if len(lengths) != 1 else ''}, {total_s:.1f} s in all", wake, lambda x: f"{x:.2f} /s")
    add_ratio("ratio to off", wake)
    add("idle wakeups/s, busiest window", wake_max, lambda x: f"{x:.2f} /s")
    thr = {n: sups[n]["mem"]["threads"] for n in names}
    add("threads", thr, str)
    add_ratio("ratio to off", thr)
    rss = {n: sups[n]["mem"]["rss_kb"] for n in names}
    add("RSS (VmRSS), idle", rss, mb)
    add_ratio("ratio to off", rss)
    anon = {n: sups[n]["mem"]["anon_kb"] for n in names}
    add("RssAnon, idle", anon, mb)
    add_ratio("ratio to off", anon)
    add("RssFile, idle (mapped pages of the binary and libc)", {n: sups[n]["mem"]["file_kb"] for n in names}, mb)
    hwm = {n: sups[n]["mem"]["hwm_kb"] for n in names}
    add("VmHWM (peak RSS)", hwm, mb)
    dl = {n: statistics.median(mc["delivery"][n]) for n in names}
    nd = {n: len(mc["delivery"][n]) for n in names}
    lines.append(row(["delivery latency, `exec`, interleaved, median (tool's `delivered.latency_us`, node holding 0 fds)"] + [f"{fmt_ms(dl[n])} (n {nd[n]})" for n in names]))
    add_ratio("ratio to off", dl)
    rss2 = {n: sups[n]["mem_after"]["rss_kb"] for n in names}
    add(f"RSS (VmRSS) after {SCRAPES} scrapes of each endpoint", rss2, mb)
    add_ratio("ratio to off", rss2)
    add(f"idle wakeups/s after the scrapes (1 window, {after_s:.1f} s)", wake_after, lambda x: f"{x:.2f} /s")
    table = "\n".join(lines)

    eps = [n for n in names if sups[n]["port"]]
    sl = [row(["one scrape of `/metrics` (fresh connection, text format)", "median", "min", "max", "n", "tool CPU per scrape", "tool context switches per scrape", "answer"]), row(["---"] * 8)]
    for n in eps:
        st = stats(sups[n]["scrape_ms"])
        sup = sups[n]
        sl.append(
            row(
                [
                    f"{n}: connect → EOF, client side",
                    fmt_ms(st["median"]),
                    fmt_ms(st["min"]),
                    fmt_ms(st["max"]),
                    str(st["n"]),
                    f"{sup['scrape_cpu_ns'] / st['n'] / 1000:.0f} µs",
                    f"{sup['scrape_switches'] / st['n']:.2f}",
                    f"{sup['scrape_bytes']:,} B (OpenMetrics {sup['scrape_bytes_om']:,} B)",
                ]
            )
        )
    scrape_table = "\n".join(sl)

    notes = []
    for n in names:
        notes.append(f"Threads of `{n}` (comm): {', '.join(sups[n]['comms'])}.")
    woke = []
    for n in names:
        for label, windows in (("idle", sups[n]["idle"]), ("after the scrapes", sups[n]["idle_after"])):
            for wi, w in enumerate(windows):
                for tid, (comm, sw, ns) in sorted(w.items()):
                    if sw:
                        woke.append(f"`{n}` {label} window {wi + 1}: thread {tid} `{comm}` {sw} switches, {ns / 1000:.0f} µs on CPU")
    if woke:
        notes.append("Threads that woke while idle (from /proc/PID/task/TID/status and schedstat): " + "; ".join(woke) + ".")
    else:
        notes.append("No thread of any variant switched even once in any idle window (per thread, /proc/PID/task/TID/status).")
    for n in names:
        sup = sups[n]
        if sup["textfile"]:
            same = sup["file_before"] == sup["file_after_idle"] == sup["file_after_scrapes"]
            notes.append(
                f"`{n}`'s textfile ({sup['textfile_bytes']:,} B) was {'not rewritten' if same else '**rewritten**'} while idle or scraped"
                f" (inode, mtime and size before the idle windows, after them and after the scrapes{': ' + repr([sup['file_before'], sup['file_after_idle'], sup['file_after_scrapes']]) if not same else ''})."
            )
    for n in eps:
        by = ", ".join(f"`{c}` {v[0]} switches, {v[1] / 1e6:.1f} ms CPU" for c, v in sorted(sups[n]["scrape_by_thread"].items()) if v[0] or v[1])
        notes.append(f"`{n}`: the {SCRAPES} scrapes cost, by thread: {by or 'nothing measurable'}.")
    return table, scrape_table, notes


def metrics_text(mc):
    table, scrape_table, notes = metrics_section(mc)
    cpu = cpu_model()
    head = (
        f"Machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}, Linux {platform.release()}; "
        f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; commit {E.get('BENCH_COMMIT', '?')}; "
        f"{METRICS_ROUNDS} upgrade rounds per supervisor, {METRICS_WINDOWS} idle window{'s' if METRICS_WINDOWS != 1 else ''} of {IDLE_S:.0f} s, {SCRAPES} scrapes per endpoint, "
        f"{METRICS_DELIVERIES} interleaved `exec` deliveries per variant; "
        f"load average {mc.get('load_before', '?')} before, {loadavg()} after."
    )
    how = f"""How: four `ssm-cosmovisor run` supervisors (cosmovisor stand-in, one node home each) are
started back to back: metrics off, `SSM_COSMOVISOR_METRICS_FILE` only (a `.prom` in a 0755
directory), `SSM_COSMOVISOR_METRICS_ADDR=127.0.0.1:PORT` only, and both. Each hands the key over
{METRICS_ROUNDS + 1} times ({METRICS_ROUNDS} upgrade rounds, `NODE_UPGRADE_AFTER_MS=50`) and then idles with
its node running; the benchmark checks from the log that exactly the configured outputs are on
and that the textfile counts every delivery. After 1 s of settling all four are sampled over
the same windows (snapshot order rotated): wakeups are the sum over /proc/PID/task/*/status of
voluntary+nonvoluntary context switches, before and after each window, per second; threads,
VmRSS, RssAnon and VmHWM from /proc/PID/status after the windows. Ratios are against "off" from
the same run. Then {SCRAPES} GETs of `/metrics` (no Accept header: Prometheus text) to each
endpoint, alternating between them, each on a fresh TCP connection from Python, timed from
connect to EOF; the tool's CPU time (/proc/PID/task/*/schedstat) and context switches over all
the scrapes are divided by their number; RSS is read 1 s after the last, followed by one more
idle window. Delivery latency: {METRICS_DELIVERIES} rounds of `ssm-cosmovisor exec -- node` per variant,
one short-lived supervisor per delivery, the four variants' order rotating each round
(`NODE_EXIT_AFTER_MS=50`); each run's `delivered.latency_us`."""
    body = f"{METRICS_HEADING}\n\n{head}\n\n{table}\n\n{scrape_table}\n\n" + "\n".join(f"- {n}" for n in notes) + "\n\n" + how + "\n"
    return body


def splice_section(text, heading, section):
    """text with its `heading` section (up to the next "## " heading or the end) replaced
    by section, or section appended."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, l in enumerate(lines) if l.rstrip("\n") == heading), None)
    if start is None:
        return text.rstrip("\n") + "\n\n" + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    rest = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + rest if rest else "")


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


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


RESULTS = Path(E.get("BENCH_RESULTS") or REPO / "bench/results.md")
ONLY = E.get("BENCH_ONLY", "")  # "" (everything) or "metrics"


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

    if ONLY == "metrics":
        mc = metrics_cost()
        mc["load_before"] = load_before
        section = metrics_text(mc)
        print(section)
        old = RESULTS.read_text() if RESULTS.exists() else "# scripts/bench results\n\nWritten by `scripts/bench`; rerun it to refresh.\n"
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(splice_section(old, METRICS_HEADING, section))
        (WORK / "table.md").write_text(section)
        log(f"replaced the {METRICS_HEADING!r} section of {RESULTS} ({time.monotonic() - started:.0f} s of measurements); the rest is as it was")
        return 0
    if ONLY:
        raise SystemExit(f"BENCH_ONLY={ONLY!r}: only 'metrics' can be run alone")

    ttk, stages, ttk_fail = time_to_key()
    dr = delivery_and_rearm()
    lf = lease_failover()
    sc = scan_cost()
    vb = delivery_vs_baseline()
    mc = metrics_cost()
    mc["load_before"] = load_before
    size = BIN.stat().st_size

    m = {v: stats(xs) for v, xs in ttk.items() if xs}
    lines = []
    lines.append(row(["measurement", "median", "min", "max", "n", "target", ""]))
    lines.append(row(["---"] * 7))

    def add(name, st, target="", ok=None, unit=fmt_ms):
        lines.append(row([name, unit(st["median"]), unit(st["min"]), unit(st["max"]), str(st["n"]), target, "" if ok is None else verdict(ok)]))

    names = {
        "a": "time to key (a) `ssm-cosmovisor exec -- node`",
        "g": "time to key (g) as (a), with the guard: one CometBFT RPC stand-in, 4 heights above the sign state",
        "a2": "time to key (a') `ssm-cosmovisor run` via cosmovisor stand-in",
        "b": "time to key (b) AWS CLI script (`aws ssm get-parameter` → FIFO)",
        "c": f"time to key (c) floor: `curl --aws-sigv4` \\| {JSON_TOOL} → FIFO",
    }
    for v in ("a", "g", "a2", "b", "c"):
        if v in m:
            add(names[v], m[v])
    ratios = []
    if "a" in m and "b" in m:
        r = m["a"]["median"] / m["b"]["median"]
        ratios.append(("ratio (a)/(b) of medians", r, "≤ 0.10", r <= 0.10))
    if "a" in m and "c" in m:
        r = m["a"]["median"] / m["c"]["median"]
        ratios.append(("ratio (a)/(c) of medians", r, "≤ 1.5", r <= 1.5))
    if "g" in m and "a" in m:
        r = m["g"]["median"] / m["a"]["median"]
        ratios.append(("ratio (g)/(a) of medians: the guard's cost on a start", r, "", None))
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

    cpu = cpu_model()
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
    section = metrics_text(mc)
    print(text)
    print(section)
    out = RESULTS
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        "# scripts/bench results\n\nWritten by `scripts/bench`; rerun it to refresh"
        " (`scripts/bench metrics` refreshes only the last section).\n\n"
        + text
        + "\n"
        + method
        + "\n\n"
        + section
    )
    (WORK / "table.md").write_text(text + "\n" + section)
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
