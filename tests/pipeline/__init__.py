"""Unit tests of engine/pipeline/ modules."""
