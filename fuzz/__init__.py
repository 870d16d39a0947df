"""Long-running fuzzing and torture harnesses for hvdbg (see docs/reliability.md)."""
