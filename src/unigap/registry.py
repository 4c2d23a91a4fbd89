"""One registry per concept (study arms, judges, training strategies): short names mapped to entries.

After lm-evaluation-harness's `Registry`. A name registers once, in lowercase words joined by hyphens (dots for
numbers: `soup-0.5`). An unknown name is one `UserError` that names the closest known name and lists them all, so
every lookup of a concept fails the same way. An entry may be a lazy `"module:attr"` string (`load`) that is only
imported when used, so listing names (the CLI's help) needs no torch. Registries stay open: a user's script may
register its own arm or judge before it runs. Kept free of torch.

A registry is a read-only `Mapping` in registration order: `name in R`, `R[name]`, `list(R)` and `R.items()` work as
on a dict.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

from unigap.errors import UserError

T = TypeVar("T")
NAME = re.compile(r"[a-z0-9]+(?:[.-][a-z0-9]+)*")


def load(target: str) -> Any:
    """The object a lazy `"module:attr"` target names, imported now."""
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"a lazy target is 'module:attr', got {target!r}")
    return getattr(importlib.import_module(module), attr)


def lazy_attributes(package: str, exports: Mapping[str, Sequence[str]]) -> tuple[Callable[[str], Any], list[str]]:
    """A package's `__getattr__` (PEP 562) and `__all__` for `exports` (module → the names it gives the package): each
    name is imported when first used, so importing one light submodule (`unigap.evaluate.stats`) does not import the
    package's model-bound ones."""
    targets = {name: f"{module}:{name}" for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in targets:
            return load(targets[name])
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, list(targets)


class Registry(Mapping[str, T], Generic[T]):
    """Names of one concept (`concept`: "arm", "judge", "strategy") and their entries, in registration order."""

    def __init__(self, concept: str) -> None:
        self.concept = concept
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add `entry` under `name`; a name registered twice or a malformed name is an error in the code that
        registers (`ValueError`), not the user's."""
        if not NAME.fullmatch(name):
            raise ValueError(f"{self.concept} names are lowercase words joined by hyphens, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.concept} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def lookup(self, name: str, choices: Iterable[str] | None = None) -> T:
        """The entry `name`, which must be one of `choices` (default: every name); any other is `unknown(name)`."""
        allowed = list(self if choices is None else choices)
        if name not in allowed or name not in self._entries:
            raise self.unknown(name, allowed)
        return self._entries[name]

    def unknown(self, name: str, choices: Iterable[str] | None = None, *, label: str | None = None) -> UserError:
        """The one-line error for a name outside `choices` (default: every name): the closest name, then all."""
        allowed = list(self if choices is None else choices)
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return UserError(f"unknown {label or self.concept} {name!r}{hint}; expected one of {', '.join(allowed)}")

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.concept!r}: {', '.join(self._entries)})"
