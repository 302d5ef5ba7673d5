"""`python -m graphopt ...` is the same as the `graphopt` command."""
import sys

from graphopt.cli import main

sys.exit(main())
