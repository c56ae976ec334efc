"""The project's error classes: one base, `LabError`, and one subclass per domain.

Each is a failure a user can act on (a bad params value, a missing or corrupt file, an unreachable
tracking store, a malformed stage output), raised with a one-line message. The command-line edge
(`pipelines/cli.py`) prints it as one `error:` line. Each class also keeps the built-in base it has
always had (ValueError, RuntimeError), so code catching those still catches it. This module
imports nothing, so any stage can name these classes without depending on the modules that raise them.
"""
from __future__ import annotations


class LabError(Exception):
    """Base of every error the pipeline reports as one line."""


class ParamsError(LabError, ValueError):
    """A params.yaml problem, always one line."""


class DataError(LabError, RuntimeError):
    """A raw data problem the user can fix (missing source, malformed file); always one line."""


class DownloadError(DataError):
    """Every URL of a file failed; the message says how to provide the file offline."""


class IntegrityError(LabError, RuntimeError):
    """A file whose digest is not the one recorded for it."""


class TrackingError(LabError, RuntimeError):
    """The MLflow tracking store cannot be reached or refused a call."""


class ReportError(LabError, ValueError):
    """A stage output that exists but does not follow docs/outputs.md; always one line."""


class CheckError(LabError, RuntimeError):
    """A step of the params check could not run (git/dvc failure); reported as a FAIL verdict."""
