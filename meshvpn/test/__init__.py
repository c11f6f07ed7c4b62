"""Tests for MeshVPN, run with trial."""
