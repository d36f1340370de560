"""The program's entry points: the command line (cli.py) and its commands, run, doctor, bench-pipeline
and the window's options, with the checks they share (progress, Qt platform)."""
