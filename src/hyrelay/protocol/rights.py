"""Access rights carried by SAS rules."""

from __future__ import annotations

import enum
from collections.abc import Iterable


class Rights(enum.Flag):
    """Listen, Send, Manage; Manage implies the other two (spec §5.4)."""

    NONE = 0
    LISTEN = enum.auto()
    SEND = enum.auto()
    MANAGE = enum.auto()

    @classmethod
    def parse(cls, names: Iterable[str]) -> "Rights":
        """Rights from names such as ``("Listen", "Send")``, case-insensitively."""
        result = cls.NONE
        for name in names:
            try:
                if name.strip().upper() == "NONE":
                    raise KeyError(name)
                result |= cls[name.strip().upper()]
            except KeyError:
                raise ValueError(f"unknown right {name!r}; use Listen, Send or Manage") from None
        return result

    def grants(self, needed: "Rights") -> bool:
        """True if these rights allow *needed*."""
        effective = self | (Rights.LISTEN | Rights.SEND if Rights.MANAGE in self else Rights.NONE)
        return needed in effective

    def names(self) -> tuple[str, ...]:
        """Canonical names in the order Listen, Send, Manage."""
        return tuple(r.name.capitalize() for r in (Rights.LISTEN, Rights.SEND, Rights.MANAGE) if r in self)
