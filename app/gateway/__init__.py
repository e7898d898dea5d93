"""Forward inference calls to the process that serves a base model (ours in-process or remote, or vLLM)."""
