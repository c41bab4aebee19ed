"""Performance, execution-quality, compliance and model reports (later issues; not built yet)."""
