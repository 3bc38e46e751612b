"""Error types.

Every error the user can cause is a :class:`SeamlineError`. Subclasses also inherit the builtin that
describes them (rasterio's pattern), so callers may catch either. Messages are one line: what was
expected, what was found, and the fix. The CLI prints ``str(err)`` and exits non-zero.
"""

from __future__ import annotations

__all__ = [
    "EXIT",
    "SeamlineError",
    "InputError",
    "ConfigError",
    "ParameterError",
    "CheckpointError",
    "QualityGateError",
]


#: The exit codes of the ``seamline`` command (and ``python -m flows.segment``), documented in docs/OPERATIONS.md.
EXIT = {
    "ok": 0,
    "failed": 1,  # a run failed for a reason that is not the input (a scene of a batch, a watch round with failures)
    "input": 2,  # bad input, config, parameter or checkpoint: one line naming it and the fix, nothing written
    "quality": 3,  # the quality gate (quality.fail_on) refused to publish the objects
    "usage": 64,  # the command line itself is wrong (unknown flag, missing argument): sysexits' EX_USAGE
    "interrupted": 130,  # Ctrl-C
    "broken_pipe": 141,  # stdout's reader went away (`seamline ... | head -1`)
}


class SeamlineError(Exception):
    """Root of all errors that Seamline reports to the user as one line."""

    exit_code = EXIT["input"]


class InputError(SeamlineError, ValueError):
    """An input file is missing, unreadable or of a kind Seamline does not process."""


class ConfigError(SeamlineError, ValueError):
    """A configuration file or key is invalid."""


class ParameterError(SeamlineError, ValueError):
    """A command-line or API parameter is out of range."""


class CheckpointError(SeamlineError, ValueError):
    """A model checkpoint is missing, incomplete or inconsistent with its metadata."""


class QualityGateError(SeamlineError, RuntimeError):
    """The run's quality verdict met ``quality.fail_on`` (``--fail-on``): its objects were not published.

    Its own exit code (3), so a scheduler can tell "refused to publish" from bad input (2); ``verdict`` is the
    verdict that was refused (:mod:`pipeline.stages.quality`)."""

    exit_code = 3

    def __init__(self, message: str, verdict: str):
        super().__init__(message)
        self.verdict = verdict
