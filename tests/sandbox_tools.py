"""Misbehaving tools for tests/test_sandbox.py; they run inside sandbox workers."""

import os
import signal
import time
from pathlib import Path

CHUNK = 50 * 2**20


def _note_pid(config: dict) -> None:
    if config.get("pid_file"):
        Path(config["pid_file"]).write_text(str(os.getpid()))


def echo(dataset, config: dict) -> dict:
    time.sleep(config.get("pause", 0))
    return {"rows": len(dataset.rows), "config": config, "pid": os.getpid()}


def sleepy(dataset, config: dict) -> dict:
    """Burn CPU (not sleep) for config["seconds"], optionally holding `ballast_mb` of memory."""
    ballast = b"x" * (config.get("ballast_mb", 0) * 2**20)
    _note_pid(config)
    end = time.monotonic() + config.get("seconds", 60)
    spins = 0
    while time.monotonic() < end:
        spins += 1
    return {"spins": spins, "ballast": len(ballast)}


def hog(dataset, config: dict) -> dict:
    """Allocate (and touch) memory in 50 MB chunks until it fails (or, without a limit, at 2 GB)."""
    _note_pid(config)
    chunks = []
    while len(chunks) * CHUNK < 2 * 2**30:
        chunks.append(bytearray(b"x" * CHUNK))
    return {"allocated_mb": len(chunks) * CHUNK // 2**20}


def crash(dataset, config: dict) -> dict:
    """Die without a word: by SIGSEGV, or by os._exit(3); optionally after touching `touch_mb`."""
    ballast = b"x" * (config.get("touch_mb", 0) * 2**20)
    if config.get("how") == "exit":
        os._exit(3)
    os.kill(os.getpid(), signal.SIGSEGV)
    return {"ballast": len(ballast)}


def boom(dataset, config: dict) -> dict:
    raise ValueError("bad input")


def chatty(dataset, config: dict) -> dict:
    """Prints to stdout: that must not corrupt the protocol."""
    print("a stray print from a tool")
    os.write(1, b"raw bytes on fd 1\n")
    return {"ok": True}


def django_state(dataset, config: dict) -> dict:
    """What the worker did with Django: it must not have set it up."""
    import sys

    from django.apps import apps
    from django.conf import settings

    return {
        "apps_ready": apps.ready,
        "settings_configured": settings.configured,
        "settings_module": os.environ.get("DJANGO_SETTINGS_MODULE"),
        "db_modules": sorted(m for m in ("django.db.backends.mysql.base", "MySQLdb") if m in sys.modules),
    }


def nap(dataset, config: dict) -> dict:
    """Sleep (using no CPU) for the first row's `pause` seconds; fail if its `fail` is set."""
    first = dataset.rows[0] if dataset.rows else {}
    time.sleep(float(first.get("pause") or 0))
    if first.get("fail"):
        raise ValueError("a planned failure")
    return {"rows": len(dataset.rows), "pid": os.getpid()}


def environment(dataset, config: dict) -> dict:
    return dict(os.environ)
