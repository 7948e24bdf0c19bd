"""Errors a user can act on. Each message is one line: what was wrong and how to fix it."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (of the driver's error for SQLAlchemy's
    wrappers), whitespace collapsed; the exception's type name when it has no message."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(exc).__name__


def flattened(exc: BaseException, limit: int = 160) -> str:
    """An exception's whole message on one line, at most ``limit`` characters (for messages
    whose first line says little, such as ``load_state_dict``'s)."""
    return " ".join(str(exc).split())[:limit]


class ManetError(Exception):
    """Base class for errors reported to the user as a one-line message with a non-zero exit."""

    exit_code = 1


class PluginError(ManetError):
    """Unknown plugin name, duplicate registration, or invalid plugin parameters."""


class DatasetError(ManetError):
    """A dataset path, manifest or record that cannot be read."""


class ImageError(ManetError):
    """An image file that cannot be decoded or is unsafe to decode."""


class DatabaseError(ManetError):
    """The database cannot be reached or is not in the expected state."""


class NotFoundError(ManetError):
    """A named model, image or other object does not exist."""


class DamagedModelError(DatabaseError):
    """A stored model's settings, index options or projection cannot be used (the row was edited,
    or written by another manet); the model can still be deleted or its index built again."""


class WeightsError(ManetError):
    """Model weights cannot be loaded (offline, missing file, wrong architecture)."""
