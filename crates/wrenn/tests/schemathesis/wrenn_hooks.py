"""Schemathesis hooks for crates/wrenn/tests/schemathesis.rs.

Sandboxes made by the run never get internet egress: a generated `allow_internet: true` is
sent as false (still a valid request, so the checks' expectations hold).
"""
import schemathesis


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if (
        case.method.upper() == "POST"
        and case.path == "/v1/sandboxes"
        and isinstance(case.body, dict)
        and case.body.get("allow_internet") is True
    ):
        case.body["allow_internet"] = False
