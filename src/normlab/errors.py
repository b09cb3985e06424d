"""The one error a bad config value raises, wherever it is checked."""

from __future__ import annotations


class Shown(str):
    """A value shown as written, without quotes, in a :class:`ConfigError`."""

    def __repr__(self) -> str:
        return str(self)


class ConfigError(ValueError):
    """A config value that cannot run; ``str()`` is the one line shown to the user."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")
