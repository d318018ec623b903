"""The engine: deterministic transitions on run state, driven by an async runner."""
