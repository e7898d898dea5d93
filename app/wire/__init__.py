"""Pydantic models of everything on the `/v1` wire."""
