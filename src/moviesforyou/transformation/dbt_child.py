"""dbt commands in a child process, for :func:`moviesforyou.transformation.transform.run_dbt`.

dbt's profile reads the warehouse from the environment (``PGHOST`` … and the
``MFY_*`` settings). That environment is given to this child process alone, so the
caller's own environment is never changed. The commands run one after the other in
this one process (dbt is imported once); a failing command marked ``check`` stops
the rest. dbt's log lines go to this process's standard output, which the caller
passes on line by line; each command's outcome (success, each node's status and
timing) is written as JSON to the result file.

Usage: ``python -m moviesforyou.transformation.dbt_child SPEC_FILE RESULT_FILE``, the
spec being ``{"commands": [{"args": [...], "check": true}, ...]}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _outcome(outcome) -> dict:
    results = []
    for node in getattr(outcome.result, "results", None) or []:
        status = str(getattr(node.status, "value", node.status))
        unique_id = getattr(getattr(node, "node", None), "unique_id", None) or getattr(
            node, "unique_id", "?")
        response = getattr(node, "adapter_response", None) or {}
        results.append({"unique_id": unique_id, "status": status,
                        "message": node.message or "", "seconds": node.execution_time or 0.0,
                        "rows_affected": response.get("rows_affected")})
    exception = outcome.exception
    return {"success": bool(outcome.success), "results": results,
            "exception": f"{type(exception).__name__}: {exception}" if exception else None}


def main(argv: list[str]) -> int:
    from dbt.cli.main import dbtRunner

    spec, result_file = json.loads(Path(argv[0]).read_text()), Path(argv[1])
    done = []
    for command in spec["commands"]:
        done.append(_outcome(dbtRunner().invoke(command["args"])))
        result_file.write_text(json.dumps(done))
        if command["check"] and not done[-1]["success"]:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
