"""The BitingLip host agent. Its core imports only the standard library (python3 >= 3.9)."""

__version__ = "0.1.0"
