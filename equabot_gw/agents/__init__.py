"""The agent runtime: agents, sessions, providers and the one ``run`` every door calls."""
