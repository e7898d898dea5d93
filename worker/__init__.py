"""TuneForge worker package."""
