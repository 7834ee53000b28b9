"""The exception types the data readers raise for problems a user can fix."""


class DataError(ValueError):
    """A user-facing data problem; the message is one line naming the path/problem."""


class DamagedData(DataError):
    """One damaged item of a data set (file, record, sequence, empty split): `--skip-bad` may skip it.

    The other DataErrors are usage problems (no such folder, a DEST that is not ours): `cvae data
    check/convert` exit 1 for damage and 2 for those, the rest of `cvae` exits 2 for both.
    """
