"""TuneForge engine package."""
