# Used by scripts/test: makes sure the project-local cache (.cache/, git-ignored)
# holds Prometheus' promtool and node_exporter, so tests/prometheus_rules.rs can
# check and unit-test contrib/prometheus/alerts.yml with the real promtool.
# Source it with $repo set to the repository root.
#
# Best effort: the binaries come from the distribution's packages (apt-get
# download + dpkg-deb -x, no root, no change to the package lists or to the
# system). Without apt-get/dpkg-deb, or if the download fails (offline, no
# package lists, another distribution), it says so and returns 0; the tests
# then fall back to a structural check of the rules. It never fails the run.

prometheus_bin="$repo/.cache/prometheus/bin"
declare -F say >/dev/null || say() { printf '==> %s\n' "$*" >&2; }

# First line of `<tool> --version`, or nothing if the binary is missing or does not run.
prometheus_tool_version() {
    local out
    [[ -x "$1" ]] || return 0
    # promtool prints its version on stdout, node_exporter on stderr.
    out="$("$1" --version 2>&1)" || return 0
    printf '%s\n' "${out%%$'\n'*}"
}

ensure_prometheus_tools() {
    local promtool="$prometheus_bin/promtool"
    local node_exporter="$prometheus_bin/node_exporter"
    local have_promtool have_node_exporter
    have_promtool="$(prometheus_tool_version "$promtool")"
    have_node_exporter="$(prometheus_tool_version "$node_exporter")"
    if [[ -n "$have_promtool" && -n "$have_node_exporter" ]]; then
        say "Prometheus tools already in .cache: $have_promtool; $have_node_exporter"
        return 0
    fi

    local skipped="promtool checks of contrib/prometheus/alerts.yml will be skipped (tests fall back to a structural check)"
    local missing=()
    command -v apt-get >/dev/null 2>&1 || missing+=(apt-get)
    command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg-deb)
    if [[ ${#missing[@]} -gt 0 ]]; then
        say "WARNING: not found: ${missing[*]}; cannot fetch promtool/node_exporter; $skipped"
        return 0
    fi

    local tmp
    if ! tmp="$(mktemp -d)"; then
        say "WARNING: mktemp failed; $skipped"
        return 0
    fi
    say "downloading promtool and node_exporter: apt-get download prometheus prometheus-node-exporter (about 23 MB, into .cache/prometheus)"
    # As root, apt drops to the _apt user to download, which cannot write to the
    # private temp dir; download as ourselves instead (no sandbox warning).
    local apt_opts=(-q)
    if [[ $(id -u) -eq 0 ]]; then
        apt_opts+=(-o APT::Sandbox::User=root)
    fi
    if ! (cd "$tmp" && apt-get "${apt_opts[@]}" download prometheus prometheus-node-exporter) >&2; then
        say "WARNING: apt-get download prometheus prometheus-node-exporter failed (offline, or no package lists: apt-get update as root fixes that); $skipped"
        rm -rf "$tmp"
        return 0
    fi

    local deb
    for deb in "$tmp"/*.deb; do
        if ! dpkg-deb -x "$deb" "$tmp/root"; then
            say "WARNING: dpkg-deb -x $(basename "$deb") failed; $skipped"
            rm -rf "$tmp"
            return 0
        fi
    done
    if [[ ! -f "$tmp/root/usr/bin/promtool" || ! -f "$tmp/root/usr/bin/prometheus-node-exporter" ]]; then
        say "WARNING: the packages hold no usr/bin/promtool or usr/bin/prometheus-node-exporter; $skipped"
        rm -rf "$tmp"
        return 0
    fi

    # Copy under a temporary name, then rename: a concurrent or interrupted run
    # never leaves a half-written binary that looks present.
    if ! mkdir -p "$prometheus_bin" ||
        ! install -m 0755 "$tmp/root/usr/bin/promtool" "$promtool.tmp.$$" ||
        ! mv -f "$promtool.tmp.$$" "$promtool" ||
        ! install -m 0755 "$tmp/root/usr/bin/prometheus-node-exporter" "$node_exporter.tmp.$$" ||
        ! mv -f "$node_exporter.tmp.$$" "$node_exporter"; then
        say "WARNING: could not install the binaries into $prometheus_bin; $skipped"
        rm -f "$promtool.tmp.$$" "$node_exporter.tmp.$$"
        rm -rf "$tmp"
        return 0
    fi
    rm -rf "$tmp"

    have_promtool="$(prometheus_tool_version "$promtool")"
    have_node_exporter="$(prometheus_tool_version "$node_exporter")"
    if [[ -z "$have_promtool" ]]; then
        say "WARNING: $promtool does not run here; $skipped"
        rm -f "$promtool"
        return 0
    fi
    say "installed into .cache/prometheus/bin: $have_promtool; ${have_node_exporter:-node_exporter does not run here}"
    return 0
}
