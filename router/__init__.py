"""erp-router: route each prompt to the model with the best expected reward minus lambda times cost.

``from router import Router`` is resolved lazily, so importing the package loads neither torch nor LiteLLM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from router.sdk import Router

__all__ = ["Router"]


def __getattr__(name: str) -> Any:
    if name == "Router":
        from router.sdk import Router

        return Router
    raise AttributeError(f"module 'router' has no attribute {name!r}")
