"""The console: a Textual app over the embedded control plane (`bitinglip` with no command)."""
