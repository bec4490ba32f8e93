"""equabot_gw: the Equabot Gateway in pure standard-library Python.

One asyncio TCP port serves the Gateway's WebSocket control protocol and its
HTTP endpoints, among them an OpenAI-compatible ``POST /v1/chat/completions``;
every request becomes one agent run on ``agents.runtime.run``. Start it with
``python -m equabot_gw``; see README.md.
"""

__version__ = "0.1.0"
