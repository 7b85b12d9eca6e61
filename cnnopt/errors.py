"""The one exception family of cnnopt.

Every error a user can cause (a bad study file, a missing dataset, an unreachable storage) is a
CnnoptError. The CLI turns it into a single line on stderr and a non-zero exit code; anything else
is a bug and keeps its traceback.
"""


class CnnoptError(Exception):
    """Base class: the message is shown to the user as one line."""

    exit_code = 2


class StudyFileError(CnnoptError):
    """A study file or a --set override is wrong (unknown key, bad type, bad value)."""


class ConfigError(CnnoptError):
    """A resolved configuration is inconsistent (e.g. 3 conv blocks but 2 filter sizes)."""


class DataError(CnnoptError):
    """A dataset is missing, unreadable or malformed."""


class StorageError(CnnoptError):
    """The study storage cannot be opened, or the study is not in it."""


class TrialFailed(CnnoptError):
    """A trial ended for a reason that is the trial's fault (NaN loss, out of memory)."""


class DeviceError(CnnoptError):
    """A --device names a GPU this machine does not have (or CUDA where there is none)."""


class ArtifactError(CnnoptError):
    """An artifact location is malformed or unusable, or a trial has no such artifact."""
