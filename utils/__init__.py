"""Names the shared ops runbook uses (``utils.security``, ``utils/test_security_baseline.py``), kept so
its release checks run as written from a checkout. The code lives in the ``orchestrator`` package."""
