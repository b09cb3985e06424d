"""Code a user brings from outside the package, named in a config node by ``_target_``: found,
and checked against the call normlab will make of it, before any work; a failure is a
:class:`~normlab.errors.ConfigError` naming the key."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from normlab.errors import ConfigError

_KEYWORDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def locate(key: str, target: str) -> Any:
    """The object ``target`` (``package.module.Name``) names; ``key`` names it in the error."""
    try:
        return _find(target)
    except Exception as error:  # any import failure is the user's path or module
        reason = (str(error).strip().splitlines() or [""])[0]
        allowed = f"an importable name (package.module.Name): {type(error).__name__}: {reason}"
        raise ConfigError(key, target, allowed) from None


def _find(target: str) -> Any:
    """Import the longest module prefix of ``target``, then take the attributes after it. An
    import error raised inside the user's module is theirs to see, not a missing name."""
    parts = target.split(".")
    found = importlib.import_module(parts[0])
    for depth, part in enumerate(parts[1:], start=2):
        if hasattr(found, part):
            found = getattr(found, part)
            continue
        name = ".".join(parts[:depth])
        if not inspect.ismodule(found):
            raise AttributeError(f"{'.'.join(parts[: depth - 1])} has no attribute {part!r}")
        try:
            found = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            raise AttributeError(f"module {found.__name__!r} has no attribute {part!r}") from None
    return found


def check_call(
    node: str,
    target: str,
    function: Callable[..., Any],
    contract: Sequence[str],
    options: Mapping[str, Any],
) -> None:
    """That ``function(*contract, **options)`` binds: the ``contract`` arguments normlab passes
    first accepted (else ``NODE._target_`` is named), every option a keyword taken beyond them
    (else ``NODE.options.KEY``), and nothing required left out."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # no signature to read (a builtin): the call will tell
        return
    call = f"{target.rsplit('.', 1)[-1]}({', '.join([*contract, '**options'])})"
    try:
        signature.bind_partial(*contract)
    except TypeError as error:
        raise ConfigError(f"{node}._target_", target, f"a callable as {call}: {error}") from None
    parameters = list(signature.parameters.values())
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):
        accepted = [p.name for p in parameters[len(contract) :] if p.kind in _KEYWORDS]
        for key, value in options.items():
            if key not in accepted:
                allowed = f"a keyword of {target}: {', '.join(accepted) or 'it takes none'}"
                raise ConfigError(f"{node}.options.{key}", value, allowed)
    try:
        signature.bind(*contract, **options)
    except TypeError as error:
        raise ConfigError(f"{node}._target_", target, f"a callable as {call}: {error}") from None
