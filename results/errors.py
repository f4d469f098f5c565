"""The store's error, importable without mlflow (the offline log raises it too)."""


class TrackingError(RuntimeError):
    """The store cannot be reached, read or written."""


class StatedCommitError(ValueError):
    """``$SUITE_GIT_COMMIT`` does not name a commit."""


def reason(err: OSError) -> str:
    """Why a file system call failed, in lower case: "permission denied", ..."""
    return "permission denied" if isinstance(err, PermissionError) else \
        str(err.strerror or err).lower()
