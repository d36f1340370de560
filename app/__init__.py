"""The desktop program around the engine, laid out along the path a frame takes: sources/, pipeline/,
outputs/, then the entry points (commands/) and the window (gui/)."""
