"""An E2B SDK from before 2.51 (`POST /sandboxes`, `/sandboxes/{id}/connect`): create, run,
kill. Run by crates/wrenn/tests/e2b_sdk.rs in its own venv (scripts/lib.sh pins the version)."""

import importlib.metadata

from e2b import Sandbox


def test_create_run_kill():
    assert importlib.metadata.version("e2b").startswith("2.50.")
    sbx = Sandbox.create(timeout=60)
    r = sbx.commands.run("echo legacy")
    assert (r.stdout, r.exit_code) == ("legacy\n", 0)
    same = Sandbox.connect(sbx.sandbox_id)
    assert same.commands.run("true").exit_code == 0
    assert sbx.kill() is True
    assert sbx.is_running() is False
