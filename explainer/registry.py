"""One small registry, for everything chosen by name: attribution methods, mask networks, in-fillers.

METHODS = Registry("attribution method")

@METHODS.register("gradcam")
class GradCAM(...): ...

METHODS.get("gradcam")      # the class; an unknown name lists the valid ones
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to entries (classes or factories), registered once each.

    Args:
        kind: what an entry is, for error messages (``"attribution method"``).
        plural: how the list of valid names is introduced (``"methods"``: "valid methods: ...").
        sort: list the names sorted; ``False`` keeps the order of registration (the first is the default).
    """

    def __init__(self, kind: str, plural: str = "names", sort: bool = True) -> None:
        self.kind = kind
        self.plural = plural
        self.sort = sort
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Registers ``entry`` under ``name``; a name taken by another entry is an error."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str) -> T:
        """The entry of ``name``; an unknown name is an error listing the valid ones."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} '{name}'; valid {self.plural}: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        """The registered names, sorted or in the order of registration (see ``sort``)."""
        return sorted(self._entries) if self.sort else list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["Registry"]
