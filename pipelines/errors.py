"""The project's error classes: one base, `LabError`, and one subclass per domain.

Each is a failure a user can act on, raised with a one-line message at the point where the code
knows what is wrong (a bad params value, a missing or corrupt file, an unreachable tracking store,
a full disk). The command-line edge (`pipelines/cli/edge.py`) catches `LabError` only and prints it
as one `error:` line; any other exception is a bug and keeps its traceback. This module imports
nothing, so any module can raise these classes without depending on the modules that catch them.

Exit status of every entry point (docs/setup.md, "Exit codes"), from the class's `exit_code`:

    0  ok
    1  failure: an unexpected exception (with its traceback), a failed check, or one of
       TrackingError, StageError, CheckError (the inputs are fine, something else failed)
    2  bad input: ParamsError (params.yaml or a command-line argument), DataError and its
       subclasses DownloadError and IntegrityError (raw or prepared data), ReportError (a stage
       output that breaks docs/outputs.md)
"""
from __future__ import annotations

OK, FAILURE, BAD_INPUT = 0, 1, 2


class LabError(Exception):
    """Base of every error the pipeline reports as one line; exits FAILURE unless a subclass says."""

    exit_code = FAILURE


class ParamsError(LabError):
    """A params.yaml value or a command-line argument that is not allowed."""

    exit_code = BAD_INPUT


class DataError(LabError):
    """A data problem the user can fix (missing source, malformed or unreadable file, bad folder)."""

    exit_code = BAD_INPUT


class DownloadError(DataError):
    """Every URL of a file failed; the message says how to provide the file offline."""


class IntegrityError(DataError):
    """A file whose digest is not the one recorded for it."""


class ReportError(LabError):
    """A stage output that exists but does not follow docs/outputs.md."""

    exit_code = BAD_INPUT


class TrackingError(LabError):
    """The MLflow tracking store cannot be reached or refused a call."""


class StageError(LabError):
    """A step could not complete for a reason outside its inputs: an output that cannot be written
    (full disk, read-only folder), an external command that failed."""


class CheckError(LabError):
    """A step of the params check could not run (git/dvc failure); reported as a FAIL verdict."""


def one_line(err: BaseException) -> str:
    """The first line of an error's message (its class name when the message is empty)."""
    text = str(err)
    return text.splitlines()[0] if text.strip() else type(err).__name__
