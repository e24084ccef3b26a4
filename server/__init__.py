"""FastAPI server (installed as ``facematch.server``)."""
