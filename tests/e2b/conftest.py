"""Runs envd (built by scripts/test) in its namespace sandbox on localhost:49983, the address
the E2B SDK uses in debug mode, for the whole session."""

import os
import pathlib
import signal
import subprocess
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PORT = 49983


def _healthy() -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=1) as r:
            return r.status == 204
    except OSError:
        return False


@pytest.fixture(scope="session", autouse=True)
def envd():
    binary = os.environ.get("ENVD_BIN")
    if not binary or not os.path.exists(binary):
        pytest.fail("ENVD_BIN must point at a built envd binary (scripts/test sets it)")
    if _healthy():
        pytest.fail(f"something already listens on port {PORT}; stop it first")
    proc = subprocess.Popen(
        [str(ROOT / "scripts/envd-sandbox"), binary, "--addr", "127.0.0.1", "--port", str(PORT)],
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not _healthy():
            if proc.poll() is not None:
                pytest.fail(f"envd exited early with status {proc.returncode}")
            if time.monotonic() > deadline:
                pytest.fail("envd did not become healthy within 20 s")
            time.sleep(0.05)
        os.environ["E2B_DEBUG"] = "true"
        os.environ.setdefault("E2B_API_KEY", "e2b_debug")
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
