"""Entry point: wires the command modules into one typer app and turns errors into clear messages."""

from __future__ import annotations

import sys

import typer

from smolship.cli import chat_cmd, export_cmd, inspect_cmd, matrix_cmd, validate_cmd
from smolship.cli.common import console, debug_enabled, print_error
from smolship.errors import SmolshipError
from smolship.logs import quiet_library_logs

app = typer.Typer(add_completion=False, no_args_is_help=False, pretty_exceptions_enable=False,
                  help="Export a small LLM to ONNX, Core ML, ExecuTorch and GGUF, each proven against PyTorch.")
app.command("export")(export_cmd.export)
app.command("validate")(validate_cmd.validate)
app.command("bench")(validate_cmd.bench)
app.command("chat")(chat_cmd.chat)
app.command("inspect")(inspect_cmd.inspect)
app.command("matrix")(matrix_cmd.matrix)


def main() -> None:
    quiet_library_logs()
    try:
        code = app(standalone_mode=False)  # click returns typer.Exit codes instead of raising here
        if isinstance(code, int) and code:
            sys.exit(code)
    except SmolshipError as e:
        print_error(e)
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        console.print("Interrupted: nothing half-written is left behind.")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click usage errors and the unexpected
        # usage errors (a misspelt option...): click's own, or the copy of click that typer >= 0.20 vendors
        # (typer._click), which is not a click.ClickException: both have show() and an exit code
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            sys.exit(e.exit_code)
        if debug_enabled():
            raise
        console.print(f"[bold red]Unexpected error:[/] {type(e).__name__}: {e}\n"
                      "Run again with SMOLSHIP_DEBUG=1 for the traceback, and report it if it persists.")
        sys.exit(1)
