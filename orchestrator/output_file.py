"""A file a command writes at a path the operator names: an export bundle, a head anchor, benchmark results."""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Iterator

from orchestrator.errors import InvalidInputError, StorageError
from orchestrator.store.files import fsync_dir

DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG)


class OutputFile:
    """``path`` written whole or not at all, and refused before the work that fills it.

    Creating it opens a temporary file next to ``path`` at once, so a path that cannot be written is
    refused before anything is read or measured. Leaving the ``with`` block syncs the file, renames
    it over ``path`` and syncs the folder; an error in the block (or ``discard``) removes it, and a
    file already at ``path`` is left as it was. A path that cannot be written is ``InvalidInputError``
    (a missing folder, a file where a folder belongs, a folder at ``path``, no permission), a full or
    failing disk ``StorageError``.
    """

    def __init__(self, path: str | os.PathLike[str], what: str) -> None:
        self.path, self.what = Path(path), what
        self._tmp = self.path.with_name(f".{self.path.name}.{os.urandom(4).hex()}.tmp")
        self._done = False
        self._fh: BinaryIO | None = None
        if self.path.is_dir():
            raise InvalidInputError(f"cannot write {what} to {self.path}: it is a folder")
        with self._refused():
            self._fh = open(self._tmp, "xb")

    def write(self, data: bytes) -> None:
        assert self._fh is not None and not self._done
        with self._refused():
            self._fh.write(data)

    def flush(self) -> None:
        assert self._fh is not None and not self._done
        with self._refused():
            self._fh.flush()

    def commit(self) -> None:
        """Sync the file and rename it over ``path`` (once; nothing after ``discard``)."""
        if not self._done:
            assert self._fh is not None
            with self._refused():
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()
                os.replace(self._tmp, self.path)
                fsync_dir(self.path.parent)  # the rename too: an anchor that vanishes on a power cut proves nothing
            self._done = True

    def discard(self) -> None:
        """Drop what was written: ``path`` stays as it was."""
        self._done = True
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            with contextlib.suppress(OSError):
                self._tmp.unlink()

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    @contextlib.contextmanager
    def _refused(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            self.discard()
            error = StorageError if exc.errno in DISK_ERRORS else InvalidInputError
            raise error(f"cannot write {self.what} to {self.path}: {self._reason(exc)}; nothing was written there",
                        path=str(self.path)) from None

    def _reason(self, exc: OSError) -> str:
        if isinstance(exc, FileNotFoundError):
            return f"there is no folder {self.path.parent}"
        if isinstance(exc, NotADirectoryError):
            blocking = next((p for p in reversed(self.path.parents) if p.exists() and not p.is_dir()), self.path.parent)
            return f"{blocking} is a file, not a folder"
        return exc.strerror or str(exc)
