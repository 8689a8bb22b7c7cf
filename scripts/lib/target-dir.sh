# Shared by scripts/package, scripts/demo and scripts/bench: prints cargo's target directory as
# cargo itself resolves it (CARGO_TARGET_DIR, build.target-dir in a cargo config, else
# <repo>/target). Source it; call from the repository root.
cargo_target_dir() {
    local meta
    meta="$(cargo metadata --format-version 1 --no-deps --offline)" || {
        printf 'cannot ask cargo for its target directory (cargo metadata failed)\n' >&2
        return 1
    }
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])' <<<"$meta"
}
