"""Which parameters a stage reads: a recording view of ``Params``, for the test that checks ``dvc.yaml``.

A stage declares in ``dvc.yaml`` the keys DVC watches for it; a key it reads but does not declare is a
change ``dvc status`` never reports. With ``PIPELINE_RECORD_PARAMS=<folder>`` set, ``python -m pipeline
<stage>`` hands the stage a :class:`RecordingView` instead of the validated ``Params`` and writes the
dotted keys it read to ``<folder>/<stage>.json``; ``tests/test_pipeline.py`` runs the micro pipeline that
way and compares each stage's reads with its declaration.

A read is an attribute that is a parameter value (``params.train_clip.source`` records ``train_clip.source``); a
section used as a whole (``model_dump()`` or any other method of it) records the section's key, and so
does a section that is a library config (``train_titok.stage1``, a ``TrainConfig``): the stages hand it to
the library as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

ENV = "PIPELINE_RECORD_PARAMS"
WHOLE = "<all>"  # the key recorded when the root model itself is used whole


class RecordingView:
    """Read-only stand-in for a pydantic model (and its sections) that records every key read."""

    __slots__ = ("_model", "_prefix", "_reads")

    def __init__(self, model: BaseModel, reads: set[str] | None = None, prefix: str = "") -> None:
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_reads", set() if reads is None else reads)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._model, name)
        if name in type(self._model).model_fields:
            key = self._prefix + name
            if isinstance(value, BaseModel):
                return RecordingView(value, self._reads, key + ".")
            self._reads.add(key)
            return value
        self._reads.add(self._prefix.rstrip(".") or WHOLE)  # a method: the section is used whole
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"parameters are read-only (tried to set {self._prefix}{name})")

    @property
    def reads(self) -> set[str]:
        """The dotted keys read so far (shared by the view of the root and of every section)."""
        return self._reads

    def write(self, path: Path) -> None:
        """Write the sorted keys read to ``path`` (JSON list)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(sorted(self._reads), indent=1) + "\n")


def unwrap(params: Any) -> Any:
    """The model behind a :class:`RecordingView` (reading through it records nothing); others as they are."""
    return params._model if isinstance(params, RecordingView) else params
