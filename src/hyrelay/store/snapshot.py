"""An immutable in-memory view of the store for the relay's hot path."""

from __future__ import annotations

from collections.abc import Iterable

from .model import HybridConnection, Namespace, Rule


class Snapshot:
    """All namespaces, hybrid connections and rules at one store version.

    Lookups never touch disk. Namespace and HC names match case-insensitively, rule
    (key) names exactly. The relay swaps in a new snapshot when Store.version() changes.
    """

    __slots__ = ("version", "_namespaces", "_hcs", "_depth", "_ns_rules", "_hc_rules")

    version: int
    _namespaces: dict[str, Namespace]
    _hcs: dict[str, dict[str, HybridConnection]]
    _depth: dict[str, int]
    _ns_rules: dict[tuple[str, str], Rule]
    _hc_rules: dict[tuple[str, str, str], Rule]

    def __init__(
        self,
        version: int,
        namespaces: Iterable[Namespace],
        hcs: Iterable[HybridConnection],
        rules: Iterable[Rule],
    ) -> None:
        ns_map = {ns.name.lower(): ns for ns in namespaces}
        hc_map: dict[str, dict[str, HybridConnection]] = {key: {} for key in ns_map}
        # Deepest HC name per namespace, so find_hc never tries more segments than can match.
        depth: dict[str, int] = dict.fromkeys(ns_map, 0)
        for hc in hcs:
            ns_key = hc.namespace.lower()
            hc_map.setdefault(ns_key, {})[hc.name.lower()] = hc
            depth[ns_key] = max(depth.get(ns_key, 0), hc.name.count("/") + 1)
        ns_rules: dict[tuple[str, str], Rule] = {}
        hc_rules: dict[tuple[str, str, str], Rule] = {}
        for rule in rules:
            if rule.entity is None:
                ns_rules[(rule.namespace.lower(), rule.name)] = rule
            else:
                hc_rules[(rule.namespace.lower(), rule.entity.lower(), rule.name)] = rule
        set_ = object.__setattr__
        set_(self, "version", version)
        set_(self, "_namespaces", ns_map)
        set_(self, "_hcs", hc_map)
        set_(self, "_depth", depth)
        set_(self, "_ns_rules", ns_rules)
        set_(self, "_hc_rules", hc_rules)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Snapshot is immutable")

    def __repr__(self) -> str:
        return f"<Snapshot version={self.version} namespaces={len(self._namespaces)}>"

    def namespace(self, name: str) -> Namespace | None:
        """Return the namespace called name (any case), or None."""
        return self._namespaces.get(name.lower())

    def hcs(self, namespace: str) -> list[HybridConnection]:
        """Return the namespace's hybrid connections sorted by name ([] if unknown)."""
        return sorted(self._hcs.get(namespace.lower(), {}).values(), key=lambda h: h.name.lower())

    def find_hc(self, namespace: str, path: str) -> tuple[HybridConnection, str] | None:
        """Match the longest HC name that is a whole-segment prefix of path.

        Returns the HC and the rest of path including its leading '/' ('' if none).
        """
        ns_key = namespace.lower()
        hcs = self._hcs.get(ns_key)
        if not hcs:
            return None
        path = path.removeprefix("/")
        if self._depth[ns_key] == 1:  # no name has a slash (the usual case): the first segment decides
            first, sep, rest = path.partition("/")
            hc = hcs.get(first.lower())
            return None if hc is None else (hc, sep + rest)
        # Ends of the leading segments, no more than the deepest HC name could use.
        cuts: list[int] = []
        pos = -1
        while len(cuts) < self._depth[ns_key]:
            pos = path.find("/", pos + 1)
            if pos < 0:
                cuts.append(len(path))
                break
            cuts.append(pos)
        for cut in reversed(cuts):
            hc = hcs.get(path[:cut].lower())
            if hc is not None:
                return hc, path[cut:]
        return None

    def rules(self) -> list[Rule]:
        """Every rule, namespace and entity level."""
        return [*self._ns_rules.values(), *self._hc_rules.values()]

    def rule_digest(self) -> frozenset[Rule]:
        """A value that changes whenever any rule (or key) changes."""
        return frozenset(self.rules())

    def rules_for(self, namespace: str, entity: str | None, key_name: str) -> Rule | None:
        """Return the rule named key_name on entity, else on the namespace, else None."""
        ns_key = namespace.lower()
        if entity is not None:
            rule = self._hc_rules.get((ns_key, entity.lower(), key_name))
            if rule is not None:
                return rule
        return self._ns_rules.get((ns_key, key_name))
