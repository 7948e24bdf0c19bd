"""Errors a user can act on. Each message is one line: what was wrong and how to fix it."""


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


class WeightsError(ManetError):
    """Model weights cannot be loaded (offline, missing file, wrong architecture)."""
