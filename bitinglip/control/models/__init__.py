"""The model manager: aliases, the hub, the registry, pulls and pushes, GGUF headers, fit."""
