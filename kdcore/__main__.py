"""``python -m kdcore`` is ``kdcore`` (and works under ``torchrun -m kdcore``)."""

from .cli import main

main(prog_name="kdcore")
