"""One shape for every table of named choices: algorithms (``algo.name``), environments (``env.name``),
generation backends (``backend``), datasets (``dataset.name``) and export formats (``format``)."""

from __future__ import annotations

from typing import TypeVar

from turnrl.errors import ConfigError

T = TypeVar("T")


class Registry(dict[str, T]):
    """name -> entry, for the option ``option`` that chooses among them. Entries are added with :meth:`register`
    or as items; :meth:`lookup` returns one or raises the error that names the option and the choices (``also``: choices that are not entries, e.g. ``auto``; ``hint``: what else
    the option accepts)."""

    def __init__(self, option: str, entries: dict[str, T] | None = None, also: tuple[str, ...] = (),
                 hint: str = ""):
        super().__init__(entries or {})
        self.option, self.also, self.hint = option, also, hint

    def register(self, name: str, entry: T) -> T:
        self[name] = entry
        return entry

    def choices(self) -> list[str]:
        return [*self.also, *self]

    def lookup(self, name: str) -> T:
        if name not in self:
            raise ConfigError(f"{self.option}: {name!r}; expected one of {', '.join(self.choices())}"
                              + (f" {self.hint}" if self.hint else ""))
        return self[name]
