"""The gateway: an OpenAI-compatible HTTP API in front of the fleet (`bitinglip serve`)."""
