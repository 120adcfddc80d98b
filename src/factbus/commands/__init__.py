"""The ``factbus`` CLI's commands, one module each.

Each module has a one-line docstring (the command's help), ``add_arguments(parser)``
and ``run(args) -> int`` (the exit status). Errors for the user are one clear
line; details go to the structured log.
"""
