"""mofasa.sampling (see docs/ARCHITECTURE.md)."""
