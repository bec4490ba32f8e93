"""Checking servers against the Gateway's HTTP and OpenAI shapes."""
