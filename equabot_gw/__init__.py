"""equabot_gw: the Equabot Gateway in pure standard-library Python.

One asyncio TCP port serves the Gateway's WebSocket control protocol and its
HTTP endpoints, among them an OpenAI-compatible ``POST /v1/chat/completions``;
every request becomes one agent run on ``agents.runtime.run``. Start it with
``python -m equabot_gw``; see README.md.

The public API is what ``__all__`` names (docs/embedding.md): ``Gateway``,
to run a gateway inside another program, and ``__version__``. Every other
module and name is internal and may change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Gateway", "__version__"]

if TYPE_CHECKING:
    from .gateway.app import Gateway


def __getattr__(name: str) -> Any:
    # Imported on first use: "import equabot_gw" (the CLI's --help, the
    # installed command) stays light, and the gateway's modules, which
    # import __version__ from here, never see a half-initialised package.
    if name == "Gateway":
        from .gateway.app import Gateway
        return Gateway
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
