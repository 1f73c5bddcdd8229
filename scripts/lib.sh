# Shared helpers for Wrenn's scripts. Source it; don't run it.

# Build artefacts and tool caches live outside the clone so fresh clones reuse them.
export WRENN_CACHE="${WRENN_CACHE:-/var/cache/wrenn}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$WRENN_CACHE/target}"
# Incremental state only helps edit-compile loops; in scripted builds it costs gigabytes.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
mkdir -p "$WRENN_CACHE"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# apt_ensure CMD:PACKAGE ...: installs PACKAGE when CMD is missing.
apt_ensure() {
    local missing=()
    for pair in "$@"; do
        local cmd="${pair%%:*}" pkg="${pair#*:}"
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        if [[ $(id -u) -ne 0 ]]; then
            echo "need root to apt-get install ${missing[*]}" >&2
            return 1
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# apt_lists_ensure PACKAGE ...: runs `apt-get update` when apt knows no candidate for one of
# the packages (a fresh machine without package lists). `wrenn image build` fetches the
# kernel and busybox with `apt-get download`, which needs them.
apt_lists_ensure() {
    if ! apt-cache show --no-all-versions "$@" >/dev/null 2>&1; then
        log "apt-get update (no candidate for one of: $*)"
        apt-get update -qq
    fi
}

# What `wrenn image build` and booting its images need (wrenn-image's prereq.rs names the
# same packages in its error message).
ensure_image_tools() {
    apt_ensure debootstrap:debootstrap mkfs.ext4:e2fsprogs cpio:cpio dpkg-deb:dpkg \
        qemu-img:qemu-utils qemu-system-x86_64:qemu-system-x86
    apt_lists_ensure linux-image-cloud-amd64 busybox-static
}

ensure_rust() {
    command -v cargo >/dev/null || {
        echo "cargo not found: install a Rust toolchain (rustup) first" >&2
        return 1
    }
    cargo nextest --version >/dev/null 2>&1 || {
        log "installing cargo-nextest"
        cargo install --locked cargo-nextest
    }
}

# Python venv with the pinned E2B SDK, for the SDK compatibility tests.
E2B_SDK_VERSION=2.63.0
ensure_venv() {
    local venv="$WRENN_CACHE/venv"
    if ! "$venv/bin/python" -c "
import importlib.metadata as m, sys
sys.exit(0 if m.version('e2b') == '$E2B_SDK_VERSION' and m.version('pytest') else 1)
" 2>/dev/null; then
        log "creating Python venv with e2b==$E2B_SDK_VERSION"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q "e2b==$E2B_SDK_VERSION" "pytest==8.4.2"
    fi
    export WRENN_VENV="$venv"
}

# start_test_postgres: a throwaway PostgreSQL cluster for the control-plane database tests.
# Uses Debian's server binaries (installing `postgresql` when missing), initdb as the postgres
# user (initdb refuses root) into a temp dir, listens on a free loopback port with its socket
# in that dir, and exports WRENN_TEST_PG_URL. stop_test_postgres stops it and removes the dir;
# callers trap it on EXIT so a failing run cleans up too.
pg_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
    [[ -n $d && -x $d/initdb ]] && echo "$d"
}

start_test_postgres() {
    local bin
    if ! bin=$(pg_bindir); then
        log "installing postgresql"
        if [[ $(id -u) -ne 0 ]]; then
            echo "need root to apt-get install postgresql" >&2
            return 1
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        bin=$(pg_bindir) || { echo "postgresql installed but no initdb found" >&2; return 1; }
    fi
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    WRENN_PG_DIR=$(mktemp -d /tmp/wrenn-pg.XXXXXX)
    export WRENN_PG_DIR
    local run=()
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres:postgres "$WRENN_PG_DIR"
        run=(runuser -u postgres --)
    fi
    log "starting throwaway PostgreSQL on 127.0.0.1:$port ($WRENN_PG_DIR)"
    "${run[@]}" "$bin/initdb" -D "$WRENN_PG_DIR/data" -U postgres -A trust --no-sync >"$WRENN_PG_DIR/initdb.log" 2>&1 || {
        cat "$WRENN_PG_DIR/initdb.log" >&2
        return 1
    }
    # fsync off: a test cluster that dies with the run need not survive a power cut.
    "${run[@]}" "$bin/pg_ctl" -D "$WRENN_PG_DIR/data" -l "$WRENN_PG_DIR/server.log" -w \
        -o "-p $port -k $WRENN_PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" \
        start >/dev/null || {
        cat "$WRENN_PG_DIR/server.log" >&2
        return 1
    }
    WRENN_PG_BIN="$bin"
    export WRENN_PG_BIN
    export WRENN_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

stop_test_postgres() {
    [[ -n ${WRENN_PG_DIR:-} && -d $WRENN_PG_DIR ]] || return 0
    local run=()
    [[ $(id -u) -eq 0 ]] && run=(runuser -u postgres --)
    local bin=${WRENN_PG_BIN:-$(pg_bindir)}
    if ! "${run[@]}" "$bin/pg_ctl" -D "$WRENN_PG_DIR/data" -m immediate -w stop >/dev/null 2>&1; then
        # Never leave a server running: end the postmaster we started by its pid file.
        local pid
        pid=$(head -n1 "$WRENN_PG_DIR/data/postmaster.pid" 2>/dev/null || true)
        [[ $pid =~ ^[0-9]+$ ]] && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -rf "$WRENN_PG_DIR"
    unset WRENN_PG_DIR WRENN_TEST_PG_URL
}
