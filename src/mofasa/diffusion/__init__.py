"""mofasa.diffusion (see docs/ARCHITECTURE.md)."""
