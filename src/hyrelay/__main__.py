"""``python -m hyrelay``: the same as the ``hyrelay`` command."""

from .cli import main

main(prog_name="hyrelay")
