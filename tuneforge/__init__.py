"""TuneForge tuneforge package."""
