"""The public HTTP API (/v1/...): thin handlers over the use cases."""
