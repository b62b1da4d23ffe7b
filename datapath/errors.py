"""Errors the control plane reports to an operator as one clear line."""


class MicrosegError(Exception):
    """An error with a message fit to show as is (no traceback)."""

    exit_code = 1


class UsageError(MicrosegError):
    """Bad input from the operator (file, argument, interface name)."""

    exit_code = 2
