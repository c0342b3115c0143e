"""`python -m smolship.cli` = the `smolship` command."""

from smolship.cli.app import main

main()
