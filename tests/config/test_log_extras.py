"""No logging call names a LogRecord attribute in `extra`: logging raises KeyError for one
("Attempt to overwrite 'args' in LogRecord"), so the call meant to report a failure becomes
the failure (a send to the broker that failed after a commit turned into a 500)."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("config", "mlregistry", "predictions", "quality", "backups", "client", "bench")


def test_no_extra_key_overwrites_a_log_record_attribute():
    reserved = set(vars(logging.LogRecord("n", 0, "p", 0, "m", (), None))) | {"message", "asctime"}
    found = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not (isinstance(node, ast.keyword) and node.arg == "extra"):
                    continue
                if not isinstance(node.value, ast.Dict):
                    continue
                keys = [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                found += [f"{where} {key}" for key in keys if key in reserved]
    assert found == []
