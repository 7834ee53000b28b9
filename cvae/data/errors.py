"""The one exception type the data readers raise for problems a user can fix."""


class DataError(ValueError):
    """A user-facing data problem; the message is one line naming the path/problem."""
