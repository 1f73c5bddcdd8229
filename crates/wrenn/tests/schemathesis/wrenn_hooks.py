"""Schemathesis hooks for crates/wrenn/tests/schemathesis.rs.

Sandboxes made by the run never get egress: a generated `allow_internet: true` is sent as
false and a generated `allow_out` list as empty (still valid requests, so the checks'
expectations hold). Only the valid entries are taken out: a list the server would refuse anyway
(a malformed entry, too many) stays as it was, so a negative case stays negative.
"""
import re

import schemathesis

NET = re.compile(
    r"((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}"
    r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(/(3[0-2]|[12]?[0-9]))?"
)
MAX_RULES = 64


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if (
        case.method.upper() == "POST"
        and case.path == "/v1/sandboxes"
        and isinstance(case.body, dict)
    ):
        if case.body.get("allow_internet") is True:
            case.body["allow_internet"] = False
        nets = case.body.get("allow_out")
        if isinstance(nets, list) and len(nets) <= MAX_RULES:
            case.body["allow_out"] = [
                n for n in nets if not (isinstance(n, str) and NET.fullmatch(n))
            ]
