"""The store interface: SQLite now, Redis later."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, Protocol, runtime_checkable

from .model import DEFAULT_NAMESPACE, HybridConnection, Namespace, Rule
from .snapshot import Snapshot


@runtime_checkable
class Store(Protocol):
    """Namespaces, hybrid connections and SAS rules.

    Namespace and HC names are looked up case-insensitively; rule names exactly.
    Methods raise the StoreError subclasses from hyrelay.store.model.
    """

    def close(self) -> None: ...

    def version(self) -> int:
        """Return a number that changes whenever anything changed, in any process."""
        ...

    def ensure_default(self, namespace: str = DEFAULT_NAMESPACE) -> tuple[Namespace, Rule]:
        """Create the namespace and its RootManageSharedAccessKey rule if missing."""
        ...

    def list_namespaces(self) -> list[Namespace]: ...
    def get_namespace(self, name: str) -> Namespace: ...
    def create_namespace(self, name: str, *, root_rule: bool = True) -> Namespace: ...
    def delete_namespace(self, name: str) -> None: ...

    def list_hcs(self, namespace: str) -> list[HybridConnection]: ...
    def get_hc(self, namespace: str, name: str) -> HybridConnection: ...

    def create_hc(
        self,
        namespace: str,
        name: str,
        *,
        requires_client_authorization: bool = True,
        user_metadata: str = "",
        request_timeout: float | None = None,
        max_listeners: int | None = None,
        multicast: bool = False,
    ) -> HybridConnection: ...

    def update_hc(
        self,
        namespace: str,
        name: str,
        *,
        requires_client_authorization: bool | None = None,
        user_metadata: str | None = None,
        request_timeout: Any = ...,
        max_listeners: Any = ...,
        multicast: bool | None = None,
    ) -> HybridConnection:
        """Change settings; leaving request_timeout/max_listeners out keeps them, None resets them."""

    def delete_hc(self, namespace: str, name: str) -> None: ...

    def list_rules(self, namespace: str, entity: str | None = None) -> list[Rule]: ...
    def get_rule(self, namespace: str, entity: str | None, name: str) -> Rule: ...

    def create_rule(
        self,
        namespace: str,
        entity: str | None,
        name: str,
        rights: Iterable[str],
        *,
        primary_key: str | None = None,
        secondary_key: str | None = None,
    ) -> Rule: ...

    def update_rule(self, namespace: str, entity: str | None, name: str, rights: Iterable[str]) -> Rule:
        """Replace a rule's rights; its keys stay, so tokens it signed keep working."""
        ...

    def delete_rule(self, namespace: str, entity: str | None, name: str) -> None: ...

    def regenerate_key(
        self,
        namespace: str,
        entity: str | None,
        name: str,
        which: Literal["primary", "secondary"],
        key: str | None = None,
    ) -> Rule: ...

    def snapshot(self) -> Snapshot: ...
