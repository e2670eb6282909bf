"""Name -> object tables that entries extend (objectives, local optimisers).

An entry module registers what it adds when it is imported. A process that receives only a name
(a Flower ClientApp rebuilding an objective from its config) imports the catalog's entries first
(``catalog.discover()``), so that every name an entry registers is known.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A table of named things of one kind.

    Args:
        kind: What the table holds, for messages (``"objective"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> None:
        """Register ``item`` under ``name``.

        Raises:
            ValueError: If another item already has that name.
        """
        if name in self._items and self._items[name] is not item:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item

    def get(self, name: str) -> T:
        """The item named ``name``.

        Raises:
            KeyError: Listing the known names.
        """
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._items)
