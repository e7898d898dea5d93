"""TuneForge app package."""
