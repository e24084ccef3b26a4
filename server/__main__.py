"""``python -m facematch.server [--host ...] [--port ...] [--gallery ...]``: same as ``facematch serve``."""

from facematch.server.cli import main

main()
