"""Loaded files are data: the names of user code they hold are refused unless the user allowed them.

A classifier may be a user callable named ``package.module:factory``. Such a name is imported only where a
person typed it (a command line, their own YAML config, a Python call). A name that comes from a loaded
file (a checkpoint's ``hyper_parameters.backbone``, an export's ``config.json``) is read inside
:func:`loading_from`, and there a ``package.module:factory`` name is refused before anything is imported,
unless the user's own code allowed it:

* ``register_backbone("package.module:factory", factory)`` before loading (the registered callable is used
  and nothing is imported), or
* ``allow_factories=["package.module:factory"]`` of the loading function (``explainer.load``,
  ``FrozenClassifier.from_checkpoint``), or the environment variable ``EXPLAINER_ALLOW_FACTORIES`` (a comma
  list) for the command-line tools.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any

from explainer.registry import Registry

ALLOW_ENV = "EXPLAINER_ALLOW_FACTORIES"
"""Environment variable: a comma list of ``package.module:factory`` names that loaded files may name."""

BACKBONES: Registry[Callable[..., Any]] = Registry("classifier", plural="registered classifiers")
"""Classifier names that resolve to a callable without an import: ``digitnet``, ``digitnet_local`` and the
names given to :func:`register_backbone`."""
_LOADING: ContextVar[tuple[str, frozenset[str]] | None] = ContextVar("explainer_loading_from", default=None)


class UntrustedFactoryError(ValueError):
    """A loaded file names a ``package.module:factory`` classifier that nobody allowed."""


def register_backbone(name: str, factory: Callable[..., Any]) -> None:
    """Makes ``factory`` (called as ``factory(num_classes=n)``) the classifier named ``name``.

    Use it for a classifier of your own before loading a checkpoint or export that names it: the name
    (typically the ``package.module:factory`` it was trained with) then resolves to ``factory`` without any
    import. Registering a name twice with another callable is an error.
    """
    if not callable(factory):
        raise TypeError(f"register_backbone('{name}', ...) needs a callable, got {type(factory).__name__}")
    if name in BACKBONES and BACKBONES.get(name) is not factory:
        raise ValueError(f"classifier '{name}' is registered already with another factory")
    BACKBONES.add(name, factory)


def registered_backbones() -> list[str]:
    """The names registered with :func:`register_backbone`."""
    return BACKBONES.names()


def allowed_factories() -> set[str]:
    """The ``package.module:factory`` names allowed by ``EXPLAINER_ALLOW_FACTORIES``."""
    return {item.strip() for item in os.environ.get(ALLOW_ENV, "").split(",") if item.strip()}


@contextlib.contextmanager
def loading_from(source: str, allow: Iterable[str] = ()) -> Iterator[None]:
    """Classifier names read inside come from the file ``source``: a ``package.module:factory`` name is
    refused (:class:`UntrustedFactoryError`, before any import) unless registered, in ``allow`` or in
    ``EXPLAINER_ALLOW_FACTORIES``. A nested scope (a file referenced by another) is named with the file that
    referenced it, and adds its allowances to the outer ones."""
    outer = _LOADING.get()
    allowed = frozenset(allow) | (outer[1] if outer else frozenset())
    name = f"{source}, referenced by {outer[0]}," if outer else str(source)
    token = _LOADING.set((name, allowed))
    try:
        yield
    finally:
        _LOADING.reset(token)


def check_trusted(spec: str) -> None:
    """Raises :class:`UntrustedFactoryError` when ``spec``, read inside :func:`loading_from`, is a
    ``package.module:factory`` name that is neither registered nor allowed."""
    scope = _LOADING.get()
    if scope is None or ":" not in spec or spec in BACKBONES or spec in scope[1] or spec in allowed_factories():
        return
    raise UntrustedFactoryError(
        f"{scope[0]} names the classifier factory '{spec}' (code to import). Loading a file never imports "
        f"code. If you trust it, register the factory before loading "
        f"(explainer.classifiers.register_backbone('{spec}', factory)), pass allow_factories=['{spec}'], or set "
        f"{ALLOW_ENV}={spec} for train.py / evaluate.py"
    )


def registered_factory(name: str) -> Callable[..., Any] | None:
    """The callable registered under ``name``, or None."""
    return BACKBONES.get(name) if name in BACKBONES else None


__all__ = [
    "ALLOW_ENV",
    "BACKBONES",
    "UntrustedFactoryError",
    "allowed_factories",
    "check_trusted",
    "loading_from",
    "register_backbone",
    "registered_backbones",
    "registered_factory",
]
