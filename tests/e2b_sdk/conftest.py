"""The official E2B Python SDK, unchanged, against a Wrenn control plane started like the
README's run command. The Rust test `crates/wrenn/tests/e2b_sdk.rs` starts `wrenn up` and runs
this suite with E2B_API_KEY / E2B_API_URL / E2B_SANDBOX_URL set (and WRENN_OTHER_TEAM_KEY, a key
of another team). Run alone it fails: it has nothing to talk to."""

import os

import pytest
from e2b import Sandbox


def pytest_configure(config):
    for var in ("E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL", "WRENN_OTHER_TEAM_KEY"):
        if not os.environ.get(var):
            raise pytest.UsageError(
                f"{var} is not set: run this suite through `cargo nextest run -p wrenn --test e2b_sdk`"
            )


@pytest.fixture
def sbx():
    s = Sandbox.create(timeout=300)
    try:
        yield s
    finally:
        s.kill()
