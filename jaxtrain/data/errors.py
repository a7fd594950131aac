"""The one exception type of the data package."""


class DataError(ValueError):
  """A data set, file or setting cannot be used; the message says how to fix it."""
