"""Command-line tools that work on training runs' checkpoints."""
