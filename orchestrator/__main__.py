"""``python3 -m orchestrator ...``: the console script without installing it."""
from orchestrator.cli import main

main(prog_name="python3 -m orchestrator")
