"""Use cases: the operations the API, CLI and workers perform, free of HTTP."""
