"""The one exception type that reaches the user as a single line (never a traceback)."""


class AegisError(Exception):
    """What went wrong and what to do, in one line. `exit_code` is the process exit status."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
