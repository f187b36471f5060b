"""One registry for everything built by name: networks, tasks, patch encoders and slide (MIL) models.

Each kind keeps its own :class:`Registry`. Names are unique within a kind: registering a second,
different object under a taken name is a programming error (``ValueError``), so a plug-in can never
silently replace a built-in; registering the same object again (a module imported twice) is allowed.
An unknown name is the user's error: the message lists what is available.

The registry never imports plug-ins itself: a package registers its built-ins when it is imported
(``sarcomakit.tasks`` registers the segmentation and multi-task tasks, ``sarcomakit.models`` the networks),
and a user's own code registers its additions the same way before calling the API.

Example:
    >>> losses = Registry("loss")
    >>> @losses.register("l1")
    ... def l1(a, b):
    ...     return abs(a - b)
    >>> losses.get("l1")(3, 1)
    2
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from sarcomakit.core.errors import UserInputError

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects of one kind by name (see the module docstring)."""

    def __init__(self, kind: str, option: str | None = None) -> None:
        #: what is registered, in words ("network", "task", ...), for messages
        self.kind = kind
        #: the command-line option that chooses one, for the fix in messages
        self.option = option
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering the decorated object under ``name``."""

        def decorate(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorate

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name`` (a different object under a taken name raises ``ValueError``)."""
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"invalid {self.kind} name {name!r}: use letters, digits, '-' and '_'")
        existing = self._items.get(name)
        if existing is not None and existing is not obj:
            raise ValueError(f"a {self.kind} named {name!r} is already registered ({existing!r})")
        self._items[name] = obj

    def get(self, name: str) -> T:
        """The object registered as ``name``; an unknown name is a :class:`UserInputError` listing the choices."""
        try:
            return self._items[name]
        except KeyError:
            where = f" ({self.option})" if self.option else ""
            raise UserInputError(f"unknown {self.kind} '{name}'.",
                                 fix=f"choose a {self.kind}{where} among {', '.join(self.names()) or 'none'}.") \
                from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
