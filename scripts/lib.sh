# Shared helpers for Wrenn's scripts. Source it; don't run it.

# Build artefacts and tool caches live outside the clone so fresh clones reuse them.
export WRENN_CACHE="${WRENN_CACHE:-/var/cache/wrenn}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$WRENN_CACHE/target}"
# Incremental state only helps edit-compile loops; in scripted builds it costs gigabytes.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
mkdir -p "$WRENN_CACHE"

# A failing command stops the scripts (set -e); say which, instead of ending silently.
set -E
trap 'wrenn_rc=$?; echo "$(basename "$0"): line $LINENO: \`$BASH_COMMAND\` failed (exit $wrenn_rc)" >&2' ERR

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# ensure_root ARGS...: re-runs the calling script as root. Root runs it as it is; another user
# goes through sudo, keeping PATH and the Rust toolchain's homes so cargo is still found; with
# neither, it stops and says so.
ensure_root() {
    [[ $(id -u) -eq 0 ]] && return 0
    if command -v sudo >/dev/null 2>&1; then
        log "$(basename "$0") needs root: re-running it with sudo"
        exec sudo env "PATH=$PATH" "CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}" \
            "RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}" bash "$0" "$@"
    fi
    echo "$(basename "$0") needs root (VMs, network namespaces, apt): run it as root, or install sudo" >&2
    exit 1
}

# Directories searched besides $PATH: a non-login root shell often lacks the sbin ones, where
# nft, debootstrap and mkfs.ext4 live.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# have CMD: whether CMD runs here; `@pg` and `@venv` stand for PostgreSQL's server binaries
# (not on PATH) and Python's venv module.
have() {
    case $1 in
        @pg) pg_bindir >/dev/null ;;
        @venv) python3 -c 'import ensurepip, venv' >/dev/null 2>&1 ;;
        *) command -v "$1" >/dev/null 2>&1 ;;
    esac
}

# installed_version PKG: the installed version, or nothing.
installed_version() {
    { dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null || true; } |
        awk '$1 == "install" && $3 == "installed" { print $4 }'
}

candidate_version() {
    apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }'
}

# QEMU's packages come from one source package and refuse each other at other versions (a
# qemu-utils from bookworm-backports Breaks Debian 12's qemu-system-common), so whenever one of
# them is installed, those of them wanted are installed at one version: qemu-system-x86's
# installed one while apt still has it, else its candidate. A package at another version is
# moved to it, and said so.
QEMU_PACKAGES=(qemu-system-x86 qemu-utils)

# apt_install_for CMD:PACKAGE ...: installs, in one apt transaction, the package of every
# command that is missing, then checks every command and fails naming the package of any still
# missing. apt may not remove anything (--no-remove): no install undoes an earlier one.
apt_install_for() {
    local pair cmd pkg want=() wanted_qemu=() need_qemu=0
    for pair in "$@"; do
        cmd=${pair%%:*} pkg=${pair#*:}
        if [[ " ${QEMU_PACKAGES[*]} " == *" $pkg "* && " ${wanted_qemu[*]} " != *" $pkg "* ]]; then
            wanted_qemu+=("$pkg")
        fi
        if ! have "$cmd" && [[ " ${want[*]} " != *" $pkg "* ]]; then
            want+=("$pkg")
            [[ " ${QEMU_PACKAGES[*]} " == *" $pkg "* ]] && need_qemu=1
        fi
    done
    if ((${#want[@]})); then
        if [[ $(id -u) -ne 0 ]]; then
            echo "need root to apt-get install ${want[*]}" >&2
            return 1
        fi
        log "installing ${want[*]}"
        apt-get update -qq
        if ((need_qemu)); then
            local target have_v p rest=()
            target=$(installed_version qemu-system-x86)
            if [[ -z $target ]] || ! apt-cache show "qemu-system-x86=$target" >/dev/null 2>&1; then
                target=$(candidate_version qemu-system-x86)
            fi
            if [[ -z $target || $target == "(none)" ]]; then
                echo "apt has no qemu-system-x86 to install: check /etc/apt/sources.list" >&2
                return 1
            fi
            for p in "${want[@]}"; do
                [[ " ${QEMU_PACKAGES[*]} " == *" $p "* ]] || rest+=("$p")
            done
            for p in "${wanted_qemu[@]}"; do
                have_v=$(installed_version "$p")
                [[ $have_v == "$target" ]] && continue
                [[ -n $have_v ]] && log "$p $have_v -> $target: QEMU's packages must share one version"
                rest+=("$p=$target")
            done
            want=("${rest[@]}")
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            --no-remove --allow-downgrades "${want[@]}" >/dev/null
    fi
    local missing=()
    for pair in "$@"; do
        cmd=${pair%%:*} pkg=${pair#*:}
        have "$cmd" || missing+=("$cmd (package $pkg)")
    done
    if ((${#missing[@]})); then
        echo "still missing after apt-get install: ${missing[*]}" >&2
        return 1
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

# What the host agent runs (wrenn-agent's preflight names the same packages), building images
# (wrenn-image's prereq.rs) and booting them.
AGENT_TOOLS=(qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils nft:nftables)
IMAGE_TOOLS=(debootstrap:debootstrap mkfs.ext4:e2fsprogs cpio:cpio dpkg-deb:dpkg
    apt-get:apt chroot:coreutils)

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

# The last E2B SDK that creates with `POST /sandboxes` (before 2.51 moved to /v2), for the
# compatibility test of older clients.
E2B_LEGACY_SDK_VERSION=2.50.0
ensure_legacy_venv() {
    local venv="$WRENN_CACHE/venv-e2b-$E2B_LEGACY_SDK_VERSION"
    if ! "$venv/bin/python" -c "
import importlib.metadata as m, sys
sys.exit(0 if m.version('e2b') == '$E2B_LEGACY_SDK_VERSION' and m.version('pytest') else 1)
" 2>/dev/null; then
        log "creating Python venv with e2b==$E2B_LEGACY_SDK_VERSION"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q "e2b==$E2B_LEGACY_SDK_VERSION" "pytest==8.4.2"
    fi
    export WRENN_LEGACY_VENV="$venv"
}

# Schemathesis, pinned with the libraries that decide what it generates and how it validates
# (hypothesis, jsonschema_rs) and sends (requests), for the API conformance test
# (crates/wrenn/tests/schemathesis.rs) that runs `st` against `wrenn up`'s /openapi.json.
SCHEMATHESIS_VERSION=4.32.5
SCHEMATHESIS_PINS=("schemathesis==$SCHEMATHESIS_VERSION" "hypothesis==6.170.27"
    "jsonschema_rs==0.60.3" "requests==2.34.2")
ensure_schemathesis_venv() {
    local venv="$WRENN_CACHE/venv-schemathesis"
    if ! "$venv/bin/python" -c "
import importlib.metadata as m, sys
sys.exit(0 if m.version('schemathesis') == '$SCHEMATHESIS_VERSION' else 1)
" 2>/dev/null || [[ ! -x $venv/bin/st ]]; then
        log "creating Python venv with schemathesis==$SCHEMATHESIS_VERSION"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q "${SCHEMATHESIS_PINS[@]}"
    fi
    export WRENN_SCHEMATHESIS_VENV="$venv"
}

# The JavaScript E2B SDK (npm), pinned, in its own directory under the cache.
E2B_JS_SDK_VERSION=2.51.0
ensure_js_sdk() {
    local dir="$WRENN_CACHE/e2b-js-$E2B_JS_SDK_VERSION"
    if [[ ! -f $dir/node_modules/e2b/package.json ]] ||
        ! grep -q "\"version\": \"$E2B_JS_SDK_VERSION\"" "$dir/node_modules/e2b/package.json"; then
        log "installing e2b@$E2B_JS_SDK_VERSION from npm"
        mkdir -p "$dir"
        (cd "$dir" && npm install --no-audit --no-fund --silent "e2b@$E2B_JS_SDK_VERSION")
    fi
    export WRENN_E2B_JS="$dir"
}

# ensure_frontend: builds the dashboard (frontend/ → frontend/build), which wrenn-cp's build.rs
# embeds in the binary; run it before `cargo build`. `npm ci` only when node_modules is missing
# or package-lock.json changed since the last install; `npm run build` only when the sources'
# content hash changed since the last build. Both stamps live in node_modules (per checkout;
# a fresh `npm ci` drops them, which rebuilds — right, since the dependencies changed).
FRONTEND_DIR=frontend
ensure_frontend() {
    local fe=$FRONTEND_DIR
    [[ -f $fe/package.json ]] || return 0
    have npm || {
        echo "npm not found (Debian packages nodejs, npm): needed to build the dashboard" >&2
        return 1
    }
    local lock_stamp=$fe/node_modules/.wrenn-lock-hash build_stamp=$fe/node_modules/.wrenn-build-hash
    local lock_hash src_hash
    lock_hash=$(sha256sum "$fe/package-lock.json" | cut -d' ' -f1)
    if [[ ! -d $fe/node_modules || $(cat "$lock_stamp" 2>/dev/null) != "$lock_hash" ]]; then
        log "npm ci (dashboard dependencies)"
        (cd "$fe" && npm ci --no-audit --no-fund --loglevel=error)
        echo "$lock_hash" >"$lock_stamp"
    fi
    # Every input of the build, by content (file names included), not by mtime.
    local inputs=() p
    for p in src static package.json package-lock.json svelte.config.js vite.config.ts tsconfig.json; do
        [[ -e $fe/$p ]] && inputs+=("$p")
    done
    src_hash=$(cd "$fe" && find "${inputs[@]}" -type f -print0 | sort -z |
        xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
    if [[ ! -f $fe/build/index.html || $(cat "$build_stamp" 2>/dev/null) != "$src_hash" ]]; then
        log "building the dashboard (npm run build)"
        (cd "$fe" && npm run build --silent >/dev/null)
        echo "$src_hash" >"$build_stamp"
    fi
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
    bin=$(pg_bindir) || {
        echo "no PostgreSQL server binaries (Debian package postgresql)" >&2
        return 1
    }
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
