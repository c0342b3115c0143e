"""Keep library chatter that says nothing about the user's model out of the terminal, and draw
smolship's own progress there (below the CLI: export workers draw it too)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Iterator, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

# torchao logs "Failed to load ..._C_cutlass_90a.so" for its optional CUDA kernels on every CPU-only
# import, and torch warns about torchao's Enum pytree registration: neither concerns a CPU export.
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")
COREMLTOOLS_NOTICES = ("Failed to load _ML", "scikit-learn version", "Torch version")


def quiet_library_logs() -> None:
    """Raise the noisy loggers to ERROR unless SMOLSHIP_DEBUG is set."""
    if os.environ.get("SMOLSHIP_DEBUG", "") not in ("", "0"):
        return
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # coremltools says "Failed to load _MLModelProxy" off macOS: the report already states that the
    # Core ML runtime did not run and why, so drop those lines and keep its other warnings
    # and its version notices about scikit-learn (unused here) and untested torch (the tests cover ours)
    logging.getLogger("coremltools").addFilter(
        lambda record: not str(record.msg).startswith(COREMLTOOLS_NOTICES))


@contextlib.contextmanager
def library_output_to(log_path: Path) -> Iterator[TextIO]:
    """Send everything written to file descriptors 1 and 2 to `log_path`; yield a stream on the terminal.

    Converters write progress bars (coremltools' MIL passes, tqdm) and C++ runtimes write straight to
    the file descriptors, so redirecting sys.stdout is not enough: the descriptors themselves point at
    the log while the export runs, and smolship's own display writes to the stream yielded here.
    With SMOLSHIP_DEBUG set, nothing is redirected (the yielded stream is stderr).
    """
    if os.environ.get("SMOLSHIP_DEBUG", "") not in ("", "0"):
        yield sys.stderr
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved_err), "w", buffering=1)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err, log_fd):
            os.close(fd)
        terminal.close()


@contextlib.contextmanager
def progress_bar(enabled: bool = True, on: Console | None = None, label: str = "") -> Iterator:
    """Yield progress(desc, fraction) for long steps; silent for --json or non-terminals.

    `on` is the console to draw on (an export draws on the real terminal while library output goes
    to its log); `label` names the bundle, so each bundle has one display line.
    """
    on = on or Console(stderr=True)
    if not enabled or not on.is_terminal:
        yield lambda desc, frac: None
        return
    prefix = f"[bold]{label}[/] " if label else ""
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=on, transient=True,
                  # rich would otherwise wrap sys.stdout/stderr and draw what converters print there
                  # (coremltools' tqdm bars) on the terminal, above the bar: they belong in the log
                  redirect_stdout=False, redirect_stderr=False) as bar:
        task = bar.add_task(prefix + "starting", total=1.0)
        yield lambda desc, frac: bar.update(task, description=prefix + desc[:50], completed=max(0.0, min(1.0, frac)))


@contextlib.contextmanager
def progress_from(events, on: Console | None = None) -> Iterator[None]:
    """Draw what worker processes send through the queue `events`: ("progress", label, desc, fraction) as one
    live line per bundle, ("line", label, text) as a plain line above them (the bundle's line then goes).

    Parallel workers drawing their own bars on one terminal would erase each other's lines; here one
    process draws them all."""
    on = on or Console(stderr=True, highlight=False)
    live = on.is_terminal
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                   TimeElapsedColumn(), console=on, transient=True, disable=not live,
                   redirect_stdout=False, redirect_stderr=False)
    tasks: dict[str, int] = {}

    def pump() -> None:
        while (item := events.get()) is not None:
            kind, label = item[0], item[1]
            if kind == "progress" and live:
                if label not in tasks:
                    tasks[label] = bar.add_task(f"[bold]{label}[/]", total=1.0)
                bar.update(tasks[label], description=f"[bold]{label}[/] {item[2][:50]}",
                           completed=max(0.0, min(1.0, item[3])))
            elif kind == "line":
                if label in tasks:
                    bar.update(tasks[label], visible=False)
                bar.console.print(item[2], highlight=False)

    with bar:
        thread = threading.Thread(target=pump, name="smolship-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            events.put(None)
            thread.join()

