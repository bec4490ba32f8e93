"""equabot_gw: the Equabot Gateway in pure standard-library Python.

One asyncio TCP port serves the Gateway's WebSocket control protocol and its
HTTP endpoints, among them an OpenAI-compatible ``POST /v1/chat/completions``;
every request becomes one agent run on ``agents.runtime.run``. Start it with
``python -m equabot_gw``; see README.md.

The public API is what ``__all__`` names (docs/embedding.md), each name's
docstring its contract:

- ``Gateway``: a gateway inside another program; ``run_agent`` (an
  ``AgentRun``): one agent run in this process, without a server.
- Python providers, contract version ``PROVIDER_API_VERSION``: an async
  generator function given a ``ProviderCall`` (its ``Message``s, with
  ``TextPart`` / ``ImagePart`` / ``AudioPart`` content and ``ToolCall``s,
  and its ``GenerationOptions`` with ``ToolSpec``s) that yields
  ``TextDelta``, ``ReasoningDelta``, ``ToolCallDelta``, ``Usage`` and
  ``Finish``; passed as ``providers=`` or to ``register_provider``.
- A run's events: ``Started``, the deltas, then ``Ended`` (an
  ``AgentResult``, with its ``Usage``) or ``Failed`` (a ``RunError``).
- Errors: ``GatewayError`` and its ``ConfigError`` and ``RunError``.

Every other module and name is internal and may change.
"""

# This one file is written so that every Python since 2.7 can compile it (no
# f-strings, annotations in type comments): the version check below must run
# before anything newer fails as a SyntaxError traceback.

import sys

# Checked first: on an older Python the gateway would start and then fail
# request by request (asyncio and dataclass features it relies on are missing).
if sys.version_info < (3, 11):
    _found = ".".join(map(str, sys.version_info[:3]))
    # "python -m equabot_gw" (argv[0] is "-m" while the package is imported; "-c"
    # on Python 2) is a command line: one line and exit 2. A program importing it
    # gets an ImportError.
    _ran = getattr(sys, "orig_argv", None)     # 3.10: tells this package's -m from another's
    _m = ["-m"] if sys.version_info >= (3,) else ["-c"]
    if sys.argv[:1] == _m and (_ran is None or "equabot_gw" in _ran or "-mequabot_gw" in _ran):
        sys.stderr.write("equabot: needs Python 3.11 or newer; this is Python %s\n" % _found)
        raise SystemExit(2)
    raise ImportError("equabot_gw needs Python 3.11 or newer; this is Python %s" % _found)

import importlib  # noqa: E402
from typing import TYPE_CHECKING, Any, Final  # noqa: E402

__version__ = "0.1.0"

# Public name -> the module that defines it, imported on first use: "import
# equabot_gw" (the CLI's --help, the installed command) stays light, and the
# gateway's modules, which import __version__ from here, never see a
# half-initialised package.
_HOMES = {  # type: Final
    "Gateway": "gateway.app",
    "run_agent": "embed", "AgentRun": "embed",
    "PROVIDER_API_VERSION": "providers.python", "register_provider": "providers.python",
    "unregister_provider": "providers.python",
    "ProviderCall": "agents.types", "Message": "agents.types", "ToolCall": "agents.types",
    "GenerationOptions": "agents.types", "ToolSpec": "agents.types", "TextPart": "agents.types",
    "ImagePart": "agents.types", "AudioPart": "agents.types",
    "TextDelta": "agents.types", "ReasoningDelta": "agents.types", "ToolCallDelta": "agents.types",
    "Usage": "agents.types", "Finish": "agents.types", "AgentResult": "agents.types",
    "Started": "agents.events", "Ended": "agents.events", "Failed": "agents.events",
    "GatewayError": "errors", "ConfigError": "errors", "RunError": "errors",
}

# Written out, not derived from _HOMES: type checkers read it without running
# this module (tests check that the two agree).
__all__ = [
    "__version__",
    "Gateway",
    "run_agent", "AgentRun",
    "PROVIDER_API_VERSION", "register_provider", "unregister_provider",
    "ProviderCall", "Message", "ToolCall", "GenerationOptions", "ToolSpec", "TextPart",
    "ImagePart", "AudioPart",
    "TextDelta", "ReasoningDelta", "ToolCallDelta", "Usage", "Finish", "AgentResult",
    "Started", "Ended", "Failed",
    "GatewayError", "ConfigError", "RunError",
]

if TYPE_CHECKING:
    from .agents.events import Ended, Failed, Started
    from .agents.types import (
        AgentResult, AudioPart, Finish, GenerationOptions, ImagePart, Message, ProviderCall,
        ReasoningDelta, TextDelta, TextPart, ToolCall, ToolCallDelta, ToolSpec, Usage,
    )
    from .embed import AgentRun, run_agent
    from .errors import ConfigError, GatewayError, RunError
    from .gateway.app import Gateway
    from .providers.python import PROVIDER_API_VERSION, register_provider, unregister_provider


def __getattr__(name):  # type: (str) -> Any
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    value = getattr(importlib.import_module("." + home, __name__), name)
    globals()[name] = value         # looked up once
    return value


def __dir__():  # type: () -> list[str]
    return sorted(set(globals()) | set(__all__))
