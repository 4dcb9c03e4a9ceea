"""CLI commands by area; each module imports ``cli`` and ``project_command`` from ``orchestrator.cli``."""
