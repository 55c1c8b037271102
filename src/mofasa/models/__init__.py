"""mofasa.models (see docs/ARCHITECTURE.md)."""
