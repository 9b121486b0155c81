"""Errors a user sees as one clear line (CLI) or one clear sentence (socket, API)."""


class NemberError(Exception):
    """A problem the user can fix; its message is shown as it is, without a traceback."""


class ConfigError(NemberError):
    """The config file is wrong: the message names the file and the key."""


class NotFound(NemberError):
    pass


class AlreadyExists(NemberError):
    pass


class Forbidden(NemberError):
    """Allowed to others, not to this caller (an API key's scope)."""


class StoreUnavailable(NemberError):
    """A store did not answer (down, unreachable, too slow): try again later. Its message is
    for the log; users are told only that the service is unavailable for now."""


class TooManyAttempts(NemberError):
    """Refused for now: too many recent attempts (failed logins)."""


class InvalidData(NemberError):
    """Training data or parameters that cannot make a model."""


class ModelFileRejected(NemberError):
    """A stored model file that is not in the expected, safe format."""
