"""mofasa.training (see docs/ARCHITECTURE.md)."""
