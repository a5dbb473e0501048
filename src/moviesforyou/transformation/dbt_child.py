"""One dbt command in a child process, for :func:`moviesforyou.transformation.transform.run_dbt`.

dbt's profile reads the warehouse from the environment (``PGHOST`` … and the
``MFY_*`` settings). That environment is given to this child process alone, so the
caller's own environment is never changed. dbt's log lines go to this process's
standard output, which the caller passes on line by line; the outcome (success,
each node's status and timing) is written as JSON to the file named first.

Usage: ``python -m moviesforyou.transformation.dbt_child RESULT_FILE DBT_ARG…``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from dbt.cli.main import dbtRunner

    result_file, args = Path(argv[0]), argv[1:]
    outcome = dbtRunner().invoke(args)
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
    result_file.write_text(json.dumps({
        "success": bool(outcome.success), "results": results,
        "exception": f"{type(exception).__name__}: {exception}" if exception else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
