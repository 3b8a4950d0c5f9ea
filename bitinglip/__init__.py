"""BitingLip: a terminal-first operator console for LLM work on your own GPU hosts."""

__version__ = "0.1.0"
