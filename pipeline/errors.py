"""Errors that are the user's to fix (bad input, missing weights), reported without a traceback."""


class InputError(RuntimeError):
    """Input the stage cannot use: the message names the file or key and says what to do."""


class MissingWeightsError(InputError):
    """A pretrained weights file is not where ``params.yaml`` says it is."""

    def __init__(self, what: str, path: str, how: str) -> None:
        super().__init__(f"missing weights for {what}: expected {path}\n  how to get it: {how}")
        self.path = path
