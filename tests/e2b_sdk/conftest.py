"""The official E2B Python SDK, unchanged, against a Wrenn control plane started like the
README's run command. Run twice: by `crates/wrenn/tests/e2b_sdk.rs` with E2B_API_KEY /
E2B_API_URL / E2B_SANDBOX_URL set, and by `crates/wrenn/tests/e2b_domain.rs` with E2B_API_KEY /
E2B_DOMAIN (and SSL_CERT_FILE, the CA of `wrenn up --domain`) over HTTPS; both also set
WRENN_OTHER_TEAM_KEY, a key of another team. Run alone it fails: it has nothing to talk to."""

import os

import pytest
from e2b import Sandbox


def pytest_configure(config):
    by_url = os.environ.get("E2B_API_URL") and os.environ.get("E2B_SANDBOX_URL")
    by_domain = os.environ.get("E2B_DOMAIN") and os.environ.get("SSL_CERT_FILE")
    if not (by_url or by_domain):
        raise pytest.UsageError(
            "set E2B_API_URL + E2B_SANDBOX_URL or E2B_DOMAIN + SSL_CERT_FILE: run this suite through "
            "`cargo nextest run -p wrenn --test e2b_sdk` (or `--test e2b_domain`)"
        )
    for var in ("E2B_API_KEY", "WRENN_OTHER_TEAM_KEY"):
        if not os.environ.get(var):
            raise pytest.UsageError(f"{var} is not set: run this suite through cargo nextest")


@pytest.fixture
def sbx():
    s = Sandbox.create(timeout=300)
    try:
        yield s
    finally:
        s.kill()
