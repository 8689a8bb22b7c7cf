# Shared by scripts/test, scripts/demo and scripts/bench: makes sure the
# project-local virtualenv (.venv, git-ignored) holds the pinned moto server.
# Source it with $repo set to the repository root.

MOTO_VERSION="5.2.5"
# The metrics tests parse our output with the official Python client's
# parsers (an implementation independent of the Rust crate that encodes it).
PROMETHEUS_CLIENT_VERSION="0.21.1"
venv="$repo/.venv"
say() { printf '==> %s\n' "$*" >&2; }

installed_moto_version() {
    # importlib.metadata reads the installed distribution, so a half-finished or
    # different install is detected even if moto_server exists.
    "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null || true
}

create_venv() {
    say "creating Python virtualenv at $venv"
    if python3 -m venv "$venv"; then
        return 0
    fi
    # Debian/Ubuntu ship ensurepip separately (python3-venv); without it
    # `python3 -m venv` fails half-way. Install it when we are allowed to.
    rm -rf "$venv"
    if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
        say "python3 -m venv failed; installing the distribution's venv package"
        pyver="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        apt-get update -qq
        apt-get install -y -qq "python${pyver}-venv" || apt-get install -y -qq python3-venv
        python3 -m venv "$venv"
    else
        say "ERROR: 'python3 -m venv' failed. Install your distribution's python3-venv package and re-run."
        exit 1
    fi
}

ensure_moto() {
    if ! command -v python3 >/dev/null 2>&1; then
        say "ERROR: python3 not found; it is needed to run the AWS emulator (moto)."
        exit 1
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        say "ERROR: cargo not found."
        exit 1
    fi
    if [[ ! -x "$venv/bin/python" ]]; then
        create_venv
    fi
    local have
    have="$(installed_moto_version)"
    if [[ ! -x "$venv/bin/moto_server" || "$have" != "$MOTO_VERSION" ]]; then
        say "installing moto[server]==$MOTO_VERSION into .venv (found: ${have:-none})"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
        have="$(installed_moto_version)"
        if [[ "$have" != "$MOTO_VERSION" || ! -x "$venv/bin/moto_server" ]]; then
            say "ERROR: moto install did not produce moto_server $MOTO_VERSION (found: ${have:-none})"
            exit 1
        fi
    else
        say "moto $MOTO_VERSION already installed in .venv"
    fi
    have="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("prometheus_client"))' 2>/dev/null || true)"
    if [[ "$have" != "$PROMETHEUS_CLIENT_VERSION" ]]; then
        say "installing prometheus_client==$PROMETHEUS_CLIENT_VERSION into .venv (the metrics tests' parser; found: ${have:-none})"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "prometheus_client==$PROMETHEUS_CLIENT_VERSION"
    fi
}

# Starts moto on a free loopback port; sets MOTO_PID and MOTO_ENDPOINT.
# The caller must `trap stop_moto EXIT`.
start_moto() {
    local port
    port="$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"${MOTO_LOG:-/dev/null}" 2>&1 &
    MOTO_PID=$!
    MOTO_ENDPOINT="http://127.0.0.1:$port"
    for _ in $(seq 1 200); do
        if "$venv/bin/python" -c "import urllib.request,sys; urllib.request.urlopen('$MOTO_ENDPOINT/moto-api/', timeout=1)" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    say "ERROR: moto did not start on port $port"
    exit 1
}

stop_moto() {
    if [[ -n "${MOTO_PID:-}" ]]; then
        kill "$MOTO_PID" 2>/dev/null || true
        wait "$MOTO_PID" 2>/dev/null || true
        MOTO_PID=
    fi
}
