"""The one interface every cloud exchanger offers: `Exchanger`.

An exchanger turns the federated token its `TokenSupplier` gives into one cloud's credentials.
What they share is deliberately small, because what they fetch is keyed differently, and each
key is what its cache is keyed on:

    AwsExchanger.fetch()                      one role per sidecar    -> CredentialCache
    GcpExchanger.access_token(scopes)         keyed by scopes         -> CacheFamily
    GcpExchanger.id_token(audience)           keyed by audience       -> CacheFamily
    AzureExchanger.token(identity, resource)  keyed by both           -> CacheFamily

A single `fetch(key)` would force AWS to take a dummy key and GCP to take a tagged union of two
unrelated requests; instead each fetch method already has the shape its cache takes
(`Callable[[], Awaitable[V]]` or `Callable[[K], Awaitable[V]]`), so caching wraps an exchanger
without knowing its cloud. The common part is how logs and errors name it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["Exchanger"]


@runtime_checkable
class Exchanger(Protocol):
    @property
    def description(self) -> str:
        """Who gets which cloud identity, for logs and errors: 'user alice (run r1) as ...'."""
        ...
