"""The `smolship` command line (typer): the app file wires commands; one module per command."""
