"""CLI commands by area; each module adds its commands to ``cli`` (``orchestrator.cli``), built from what
``orchestrator.cli_common`` holds (``project_command``, ``Output``, ...)."""
