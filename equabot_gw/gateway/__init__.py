"""The gateway's doors: the app that wires them, the OpenAI endpoint, the WebSocket control protocol."""
