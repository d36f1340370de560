"""Live diffusion camera filter: ``python main.py`` opens the window, ``python main.py --help`` lists
the headless commands (run, bench, bench-pipeline, doctor)."""

import sys

from app.commands.cli import main

if __name__ == "__main__":
    sys.exit(main())
