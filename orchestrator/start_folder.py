"""The folder a command was started in, as a place modules are imported from: never one someone other than this user
or root could put a module in (``others_could_write``). ``python3 -m orchestrator`` has Python put it first on
``sys.path`` before any code of ours runs: the package takes it off again as its first act (``leave_out_if_shared``),
so that nothing it imports from then on comes from there; the ``worker`` command's own rule is
``handlers.look_in_start_folder``.

No ``from __future__ import annotations`` here, nor in the package's ``__init__``: that statement imports the module
``__future__``, which ``-m`` looks up in the start folder first (another user's ``__future__.py`` ran as the user
running the command). Until the folder is off the path this module uses only ``sys`` and ``os``, which Python loaded
before any code of ours ran."""
import os
import sys

PUTS_A_MODULE_THERE = "put a module of their own there, which the worker would import and run as this user"
OPTIONS_WITH_A_VALUE = frozenset("WX")  # ``-W error``, ``-X dev``: the value may be the next word
LONG_OPTIONS_WITH_A_VALUE = frozenset({"--check-hash-based-pycs"})


def leave_out_if_shared() -> None:
    """Take the start folder off ``sys.path`` when this process is ``python3 -m orchestrator`` (the module named on
    the interpreter's own command line, ``sys.orig_argv``: another program run with ``-m`` that imports the package
    keeps the path Python made) and others could put a module in that folder (``others_could_write``). Taken off
    before it is checked, so the check's own imports cannot come from there either; put back when it is safe."""
    global _CHECKED
    if sys.argv[:1] != ["-m"] or not _is_this_package(module_run(sys.orig_argv[1:])):
        return
    try:
        folder = os.getcwd()
    except OSError:  # removed meanwhile: nothing can be imported from it
        return
    if not sys.path or sys.path[0] not in (folder, ""):
        return  # ``-P``, ``-I`` or ``PYTHONSAFEPATH``: not on the path
    first = sys.path.pop(0)
    _CHECKED = (folder, others_could_write(folder))
    if _CHECKED[1] is None:
        sys.path.insert(0, first)


# the folder ``leave_out_if_shared`` checked, and its verdict: the ``worker`` command's look (``refused``) reuses it
_CHECKED: "tuple[str, str | None] | None" = None


def refused(folder: str) -> "str | None":
    """``others_could_write(folder)``, checked once a process: under ``python3 -m orchestrator`` the package checked
    the start folder already (``leave_out_if_shared``), and a shared one is off the path, so the ``worker`` command's
    ``handlers.look_in_start_folder`` would check it again (a stat of it and of each folder above)."""
    if _CHECKED is not None and _CHECKED[0] == folder:
        return _CHECKED[1]
    return others_could_write(folder)


def _is_this_package(module: "str | None") -> bool:
    return module is not None and (module == "orchestrator" or module.startswith("orchestrator."))


def module_run(args: "list[str]") -> "str | None":
    """The module the interpreter options ``args`` (its command line after the program's name) run with ``-m``, read
    as Python reads them: options grouped (``-OBm``), the module's name in the same word (``-mname``) or the next,
    a value after ``-W``, ``-X`` or ``--check-hash-based-pycs``; None for a script, ``-c`` or standard input."""
    words = iter(args)
    for word in words:
        if word in LONG_OPTIONS_WITH_A_VALUE:
            next(words, None)
            continue
        if word.startswith("--"):
            continue
        if not word.startswith("-") or word == "-":
            return None
        for at, option in enumerate(word[1:], start=1):
            if option == "c":
                return None
            if option == "m":
                return word[at + 1:] or next(words, None)
            if option in OPTIONS_WITH_A_VALUE:
                if at == len(word) - 1:
                    next(words, None)
                break
    return None


def others_could_write(folder: str) -> "str | None":
    """Why someone other than this user or root could put a module in ``folder`` (None: no one could), by the
    signing keys' rule (``orchestrator.key_paths``): a folder another user owns, or that others may write, sticky
    (/tmp) or not, since they may add a module to it; or one below a folder so (but for a sticky one owned by this
    user or root), whose writers could put another folder in its place. Until 2026-12-07 root's worker, started in
    a shared folder, imported a module another user left there (``ORCH_HANDLERS`` naming it)."""
    from pathlib import Path

    from orchestrator.errors import SigningKeyError
    from orchestrator.key_paths import check_folders_above, only_its_owner_changes

    what, path = "the current folder", Path(folder)
    try:
        st = os.stat(folder)
        only_its_owner_changes(path, what, st, PUTS_A_MODULE_THERE, "start the worker in a folder of its own")
        check_folders_above(path, "current folder")
    except SigningKeyError as exc:
        return exc.message
    except OSError as exc:  # removed meanwhile: nothing to import from it
        return exc.strerror or str(exc)
    return None
