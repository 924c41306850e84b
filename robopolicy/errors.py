"""Errors a user can cause. The CLI prints their message as one line and exits non-zero, so
each message names the file, key or value at fault and, where there is one, the fix."""


class RobopolicyError(Exception):
    """Base class of every user-facing error."""


class StoreError(RobopolicyError):
    """A demonstration store is missing, malformed, locked, or given data it cannot take."""


class ConfigError(RobopolicyError):
    """A configuration file or override names an unknown key or a bad value."""
