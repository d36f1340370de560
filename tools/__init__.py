"""Developer tools, not shipped in the package: the stand-in engine, the README screenshot and the GUI
responsiveness measurement (python -m tools.screenshot, python -m tools.responsiveness)."""
