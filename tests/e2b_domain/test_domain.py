"""The official E2B Python SDK given only E2B_DOMAIN (and E2B_API_KEY, SSL_CERT_FILE for
`wrenn up --domain`'s CA): the API at https://api.<domain>, the sandbox at
https://49983-<id>.<domain>, routed by Host. Run by crates/wrenn/tests/e2b_domain.rs, which
makes the names resolve to the control plane; run alone it fails."""

import os
import ssl
import time

import httpx
import pytest
from e2b import Sandbox

DOMAIN = os.environ.get("E2B_DOMAIN", "")


def test_domain_alone():
    for var in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_DEBUG"):
        assert var not in os.environ, f"{var} must not be set: the domain alone is tested"
    for var in ("E2B_DOMAIN", "E2B_API_KEY", "SSL_CERT_FILE"):
        if not os.environ.get(var):
            pytest.fail(f"{var} is not set: run through `cargo nextest run -p wrenn --test e2b_domain`")

    sbx = Sandbox.create(timeout=120)
    try:
        assert sbx.connection_config.api_url == f"https://api.{DOMAIN}"
        assert sbx.sandbox_domain == DOMAIN
        assert sbx.envd_api_url == f"https://49983-{sbx.sandbox_id}.{DOMAIN}"
        r = sbx.commands.run("echo hi")
        assert (r.stdout, r.exit_code) == ("hi\n", 0)
        sbx.files.write("/home/user/domain.txt", "reached by name")
        assert sbx.files.read("/home/user/domain.txt") == "reached by name"
        # A server in the guest, by host name: https://8000-<id>.<domain>.
        sbx.commands.run("cd /home/user && python3 -m http.server 8000", background=True)
        host = sbx.get_host(8000)
        assert host == f"8000-{sbx.sandbox_id}.{DOMAIN}"
        ca = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
        deadline = time.time() + 30
        while True:
            r = httpx.get(f"https://{host}/domain.txt", verify=ca, timeout=10)
            if r.status_code == 200 or time.time() > deadline:
                break
            time.sleep(0.3)
        assert (r.status_code, r.text) == (200, "reached by name")
        assert sbx.is_running() is True
    finally:
        assert sbx.kill() is True
    assert sbx.is_running() is False
