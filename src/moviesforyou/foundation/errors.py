"""Errors that reach users. Each says where the problem is: file, line, field."""

from __future__ import annotations


class MoviesForYouError(Exception):
    """Base class: the CLI prints these without a traceback.

    ``retry_helps``: whether trying the same step again could succeed. False for
    errors in the data itself (a failed validation): Airflow then fails the task at
    once instead of retrying it (a task killed with its runner is still retried).
    """

    retry_helps = True


class SourceError(MoviesForYouError):
    """A MovieLens source that cannot be fetched, read or trusted.

    Args:
        message: what is wrong, in words a data engineer acts on.
        path: the file (or URL) concerned.
        line: 1-based line number within ``path``.
        field: the column or field name within that line.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.path:
            where.append(self.path)
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.field:
            where.append(f"field '{self.field}'")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class WarehouseError(MoviesForYouError):
    """The warehouse cannot be started, reached or set up."""


class WarehouseBusy(WarehouseError):
    """Another writer holds the warehouse's writer lock."""
