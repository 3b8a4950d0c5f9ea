"""Talking to agents: the session protocol, the local pipe, SSH connections, bootstrap."""
