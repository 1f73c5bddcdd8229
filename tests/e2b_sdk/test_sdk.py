"""What an agent written against E2B does, run against Wrenn. Every call is the SDK's own."""

import os
import time

import httpx
import pytest
from e2b import (
    CommandExitException,
    NotFoundException,
    Sandbox,
    SandboxQuery,
    TimeoutException,
)
from e2b.sandbox.commands.command_handle import PtySize

# Where the raw HTTP checks go: the API URL, or with E2B_DOMAIN alone `https://api.<domain>`
# (httpx trusts SSL_CERT_FILE, the local CA).
API = os.environ.get("E2B_API_URL") or f"https://api.{os.environ.get('E2B_DOMAIN', '')}"
KEY = os.environ.get("E2B_API_KEY", "")


def test_create_run_files_info_kill():
    sbx = Sandbox.create(metadata={"suite": "e2b-sdk", "n": "1"}, envs={"GREETING": "hi"}, timeout=120)
    try:
        r = sbx.commands.run("echo $GREETING && echo oops 1>&2")
        assert (r.stdout, r.stderr, r.exit_code) == ("hi\n", "oops\n", 0)
        with pytest.raises(CommandExitException) as e:
            sbx.commands.run("exit 3")
        assert e.value.exit_code == 3
        with pytest.raises(TimeoutException):
            sbx.commands.run("sleep 30", timeout=2)

        sbx.files.write("/home/user/hello.txt", "hi there")
        assert sbx.files.read("/home/user/hello.txt") == "hi there"
        assert "hello.txt" in [e.name for e in sbx.files.list("/home/user")]
        assert sbx.files.exists("/home/user/hello.txt")
        sbx.files.remove("/home/user/hello.txt")
        assert not sbx.files.exists("/home/user/hello.txt")
        with pytest.raises(NotFoundException):
            sbx.files.read("/home/user/nope.txt")

        info = sbx.get_info()
        assert info.state == "running"
        assert info.metadata == {"suite": "e2b-sdk", "n": "1"}
        assert info.cpu_count >= 1 and info.memory_mb >= 128

        listed = Sandbox.list(query=SandboxQuery(metadata={"suite": "e2b-sdk"})).next_items()
        assert sbx.sandbox_id in [s.sandbox_id for s in listed]
        assert Sandbox.list(query=SandboxQuery(metadata={"suite": "other"})).next_items() == []
    finally:
        assert sbx.kill() is True
    assert sbx.is_running() is False
    assert Sandbox.kill(sbx.sandbox_id) is False


def test_background_command_and_connect(sbx):
    h = sbx.commands.run("for i in 1 2 3; do echo tick $i; sleep 0.5; done", background=True)
    again = sbx.commands.connect(h.pid)
    result = again.wait()
    assert "tick 3" in result.stdout
    assert result.exit_code == 0


def test_watch_dir(sbx):
    sbx.files.make_dir("/home/user/w")
    handle = sbx.files.watch_dir("/home/user/w")
    sbx.files.write("/home/user/w/a.txt", "x")
    deadline = time.time() + 20
    names = []
    while time.time() < deadline and "a.txt" not in names:
        names += [e.name for e in handle.get_new_events()]
        time.sleep(0.2)
    handle.stop()
    assert "a.txt" in names


def test_set_timeout_and_metrics(sbx):
    before = sbx.get_info().end_at
    sbx.set_timeout(600)
    assert sbx.get_info().end_at > before
    metrics = sbx.get_metrics()
    assert metrics and metrics[-1].mem_total > 0 and metrics[-1].cpu_count >= 1


def test_pause_then_connect_keeps_memory(sbx):
    sbx.commands.run("echo in-memory > /dev/shm/keep")
    sleeper = sbx.commands.run("sleep 600", background=True)
    assert sbx.pause() is True
    assert sbx.get_info().state == "paused"
    resumed = Sandbox.connect(sbx.sandbox_id)
    assert resumed.commands.run("cat /dev/shm/keep").stdout == "in-memory\n"
    # The process that ran before the pause runs on, same pid.
    assert resumed.commands.run(f"kill -0 {sleeper.pid}").exit_code == 0
    assert sleeper.pid in [p.pid for p in resumed.commands.list()]
    assert resumed.get_info().state == "running"


def test_pty(sbx):
    out = []
    pty = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.resize(pty.pid, PtySize(rows=40, cols=100))
    sbx.pty.send_stdin(pty.pid, b"stty size; exit\n")
    pty.wait(on_pty=lambda b: out.append(b))
    assert b"40 100" in b"".join(out)


def test_snapshot_and_fork(sbx):
    sbx.commands.run("echo snap > /dev/shm/state")
    snap = sbx.create_snapshot()
    assert snap.snapshot_id
    clone = Sandbox.create(snap.snapshot_id, timeout=120)
    try:
        assert clone.commands.run("cat /dev/shm/state").stdout == "snap\n"
    finally:
        clone.kill()
    forks = sbx.fork(count=2, timeout=120)
    try:
        assert len(forks) == 2
        for f in forks:
            assert not isinstance(f, Exception), f
            assert f.commands.run("cat /dev/shm/state").stdout == "snap\n"
            f.commands.run("echo mine > /dev/shm/own")
        assert not sbx.files.exists("/dev/shm/own")
    finally:
        for f in forks:
            if not isinstance(f, Exception):
                f.kill()
    assert Sandbox.delete_snapshot(snap.snapshot_id) is True


def test_port_through_the_proxy_by_headers(sbx):
    sbx.commands.run("mkdir -p /tmp/www && echo served > /tmp/www/index.txt")
    sbx.commands.run("cd /tmp/www && python3 -m http.server 8000", background=True)
    url = f"{API}/index.txt"
    headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8000"}
    deadline = time.time() + 30
    while True:
        r = httpx.get(url, headers=headers, timeout=10)
        if r.status_code == 200 or time.time() > deadline:
            break
        time.sleep(0.3)
    assert (r.status_code, r.text) == (200, "served\n")
    # A port nothing listens on, and envd without its token.
    r = httpx.get(url, headers={**headers, "E2b-Sandbox-Port": "8001"}, timeout=10)
    assert r.status_code == 502 and "port" in r.json()["message"]
    r = httpx.post(
        f"{API}/process.Process/List",
        headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983", "Content-Type": "application/json"},
        content=b"{}",
        timeout=10,
    )
    assert r.status_code == 401


def test_bad_input():
    with pytest.raises(NotFoundException):
        Sandbox.connect("aaaaaaaaaaaaaaaaaaaa")
    with pytest.raises(NotFoundException):
        Sandbox.get_info("aaaaaaaaaaaaaaaaaaaa")
    r = httpx.post(f"{API}/v2/sandboxes", headers={"X-API-KEY": KEY}, content=b"{not json", timeout=10)
    assert r.status_code == 400
    assert r.json()["code"] == 400 and r.json()["message"]
    r = httpx.post(f"{API}/v2/sandboxes", headers={"X-API-KEY": KEY}, json={"timeout": 10}, timeout=10)
    assert r.status_code == 400


def test_another_teams_key_sees_nothing(sbx):
    other = os.environ["WRENN_OTHER_TEAM_KEY"]
    r = httpx.get(f"{API}/sandboxes/{sbx.sandbox_id}", headers={"X-API-KEY": other}, timeout=10)
    assert r.status_code == 404
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sbx.sandbox_id, api_key=other)
    r = httpx.delete(f"{API}/sandboxes/{sbx.sandbox_id}", headers={"X-API-KEY": other}, timeout=10)
    assert r.status_code == 404
    assert sbx.is_running()


def test_idempotency_key_makes_one_sandbox():
    a = Sandbox.create(timeout=60, idempotency_key="wrenn-test-key-1")
    b = Sandbox.create(timeout=60, idempotency_key="wrenn-test-key-1")
    try:
        assert a.sandbox_id == b.sandbox_id
    finally:
        a.kill()


def test_private_ports_want_the_traffic_token():
    sbx = Sandbox.create(timeout=120, network={"allow_public_traffic": False})
    try:
        assert sbx.traffic_access_token
        sbx.commands.run("mkdir -p /tmp/p && echo private > /tmp/p/f.txt")
        sbx.commands.run("cd /tmp/p && python3 -m http.server 8000", background=True)
        headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8000"}
        authed = {**headers, "E2b-Traffic-Access-Token": sbx.traffic_access_token}
        deadline = time.time() + 30
        while True:
            r = httpx.get(f"{API}/f.txt", headers=authed, timeout=10)
            if r.status_code == 200 or time.time() > deadline:
                break
            time.sleep(0.3)
        assert (r.status_code, r.text) == (200, "private\n")
        assert httpx.get(f"{API}/f.txt", headers=headers, timeout=10).status_code == 401
        bad = {**headers, "E2b-Traffic-Access-Token": "nope"}
        assert httpx.get(f"{API}/f.txt", headers=bad, timeout=10).status_code == 403
        # envd's port still takes the envd token alone: the SDK works as usual.
        assert sbx.commands.run("echo ok").stdout == "ok\n"
    finally:
        sbx.kill()


# A guest server for what http.server cannot show: an HTTP upgrade answered with 101 and then
# an echo of raw bytes (uppercased) both ways, and a POST whose chunked body it decodes itself.
UPGRADE_SERVER = r'''
import base64, hashlib, socket, threading

def handle(c):
    f = c.makefile("rb")
    f.readline()
    h = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        k, v = line.decode().split(":", 1)
        h[k.strip().lower()] = v.strip()
    if h.get("upgrade", "").lower() == "websocket":
        accept = base64.b64encode(hashlib.sha1((h["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        c.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Accept: " + accept + "\r\n\r\n").encode())
        while True:
            d = f.read1(4096)
            if not d:
                break
            c.sendall(d.upper())
    else:
        body = b""
        if h.get("transfer-encoding", "").lower() == "chunked":
            while True:
                n = int(f.readline().split(b";")[0], 16)
                if n == 0:
                    f.readline()
                    break
                body += f.read(n)
                f.readline()
        else:
            body = f.read(int(h.get("content-length", "0")))
        out = ("%s %d %s" % (h.get("transfer-encoding", "-"), len(body), hashlib.sha256(body).hexdigest())).encode()
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(out) + out)
    c.close()

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8002))
s.listen()
while True:
    threading.Thread(target=handle, args=(s.accept()[0],), daemon=True).start()
'''


def test_upgrade_and_chunked_request_through_the_proxy(sbx):
    import base64
    import hashlib
    import socket
    import ssl
    from urllib.parse import urlparse

    sbx.files.write("/tmp/upgrade_server.py", UPGRADE_SERVER)
    sbx.commands.run("python3 /tmp/upgrade_server.py", background=True)
    headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8002"}

    # A chunked request body, streamed from a generator: arrives whole, still chunked.
    parts = [os.urandom(3000) for _ in range(40)]
    deadline = time.time() + 30
    while True:
        r = httpx.post(f"{API}/upload", headers=headers, content=iter(parts), timeout=30)
        if r.status_code == 200 or time.time() > deadline:
            break
        time.sleep(0.3)
    body = b"".join(parts)
    assert r.status_code == 200, r.text
    assert r.text == f"chunked {len(body)} {hashlib.sha256(body).hexdigest()}"

    # A WebSocket upgrade: 101 with the guest's accept, then bytes both ways, message by
    # message (each answer arrives before the next message is sent: nothing is buffered).
    api = urlparse(API)
    port = api.port or (443 if api.scheme == "https" else 80)
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection((api.hostname, port), timeout=10) as raw:
        c = raw
        if api.scheme == "https":
            ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
            c = ctx.wrap_socket(raw, server_hostname=api.hostname)
        req = (
            f"GET /ws HTTP/1.1\r\nHost: {api.hostname}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            + "\r\n"
        )
        c.sendall(req.encode())
        f = c.makefile("rb")
        status = f.readline()
        assert status.startswith(b"HTTP/1.1 101"), status
        got = {}
        while (line := f.readline()) not in (b"\r\n", b""):
            k, v = line.decode().split(":", 1)
            got[k.strip().lower()] = v.strip()
        want = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        assert got["sec-websocket-accept"] == want.decode()
        for i in range(20):
            msg = f"message {i} ".encode() * 10
            c.sendall(msg)
            assert f.read(len(msg)) == msg.upper()
