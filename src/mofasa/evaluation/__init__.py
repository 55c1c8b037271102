"""mofasa.evaluation (see docs/ARCHITECTURE.md)."""
