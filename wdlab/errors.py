"""The failures a user can fix: each message is one line naming the problem and the fix."""


class StageError(RuntimeError):
    """A stage cannot do its work as configured (a missing device, an unusable store, a bad download)."""


class StageInputError(StageError):
    """An input file another stage makes is missing or unreadable."""
