"""The host name in the audit trail's actor (``user@host``) and in a worker's default id: the one
``socket.gethostname()`` gives, read without importing ``socket`` (a command's cold start)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

from orchestrator.config import default_actor
from orchestrator.worker_settings import default_worker_id


def test_the_actor_and_the_default_worker_id_name_the_host_socket_names() -> None:
    assert default_actor().endswith(f"@{socket.gethostname()}")
    assert default_worker_id().startswith(f"{socket.gethostname()}-{os.getpid()}-")


def test_a_status_read_imports_neither_socket_nor_secrets() -> None:
    code = ("import sys, orchestrator.cli, orchestrator.api, orchestrator.worker_settings; "
            "print(sorted({'socket', 'secrets'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
