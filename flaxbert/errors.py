"""The one exception type for bad user input (files, configs, checkpoints, CLI arguments)."""


class InputError(ValueError):
  """Raised when user-supplied input is invalid; the message names the file/field and what was expected."""
