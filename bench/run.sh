#!/usr/bin/env bash
# doorless benchmark: installs what it needs, builds release binaries, runs the driver.
#
#   bench/run.sh                 # full run (~40 min on 2 cores): medians of 3
#   bench/run.sh --quick         # smoke run (~3 min): 1 run, short loads
#   bench/run.sh --only get,bulk # a subset (get,bulk,handshake,ws,idle,flood,iperf); --targets doorless,composite_noise,...
#   bench/run.sh --net all       # network matrix instead (root: namespaces + TUN; Chromium)
#   bench/run.sh --quick --net all          # the same, bounded to ~10 min
#   bench/run.sh --net 80ms:1%,20ms:0%      # a subset of points (RTT per leg : loss)
#   bench/run.sh --net 20ms:1% --live-events 1000   # more live-update events (p99 under loss)
#
# Loopback runs use 127.0.0.1 (the flood from 127.0.0.2). Results: bench/results/latest.md
# and latest.json; the network matrix writes net-latest.md and net-latest.json (git-ignored;
# docs/benchmarks.md quotes them).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { printf '\033[1m[bench]\033[0m %s\n' "$*" >&2; }

# --- system packages: nginx (the reference proxy), iperf3 (raw TCP limit) ----------------
need_apt=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v iperf3 >/dev/null 2>&1 || need_apt+=(iperf3)
case " $* " in
    *" --net "*)
        # The page-load scenario: Debian's Chromium, NSS tools for its certificate database.
        [ -x /usr/lib/chromium/chromium ] || command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
        command -v certutil >/dev/null 2>&1 || need_apt+=(libnss3-tools)
        command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
        ;;
esac
if [ ${#need_apt[@]} -gt 0 ]; then
    say "installing ${need_apt[*]} from Debian (apt-get update && apt-get install -y ${need_apt[*]})"
    sudo_cmd=()
    [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need_apt[@]}" >/dev/null
    # The package starts a system nginx on port 80; we never use it (our nginx runs from a
    # temp dir as a child of the driver). Leave the system service as the package set it.
fi

# --- crates.io tools: oha (HTTP load with client certs), rathole (the peer tunnel) ------
export PATH="$HOME/.cargo/bin:$PATH"
# rathole 0.5.0's lock file pins a `time` release that no longer compiles on current rustc
# (E0282 in time 0.3.x), so it is installed with freshly resolved semver-compatible deps.
for tool in oha rathole; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        locked=(--locked)
        [ "$tool" = rathole ] && locked=()
        say "installing $tool from crates.io (cargo install ${locked[*]} $tool): compiles for a few minutes, once"
        cargo install "${locked[@]}" -j2 "$tool"
    fi
done

# --- build ---------------------------------------------------------------------------------
say "building doorless-edge and doorless-connector (release)"
cargo build --release -j2 -p edge -p connector
say "building the benchmark driver (release, shares ./target)"
CARGO_TARGET_DIR="$root/target" cargo build --release -j2 --manifest-path bench/Cargo.toml

# --- limits --------------------------------------------------------------------------------
# 10,000 idle WebSockets need ~2 fds each in a proxy (client side + upstream side).
hard="$(ulimit -Hn)"
if [ "$hard" != unlimited ] && [ "$hard" -lt 65536 ]; then
    ulimit -Hn 65536 2>/dev/null || true
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
say "open-file limit: $(ulimit -n) (10,000 idle WebSockets need ≥ 20,100)"

# --- run -----------------------------------------------------------------------------------
say "running the driver; progress on stderr, table at the end"
exec "$root/target/release/doorless-bench" "$@"
