"""TuneForge serve package."""
