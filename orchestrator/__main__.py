"""``python3 -m orchestrator ...``: the console script without installing it."""
from orchestrator.entry import main

main(prog_name="python3 -m orchestrator")
