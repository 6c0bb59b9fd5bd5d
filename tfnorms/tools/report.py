"""What a model tool did, layer by layer (docs/design.md, "Model tools").

Every tool names each layer it acted on and each one it left and why; the
report is logged (logger `tfnorms`, level INFO), and layers left for a reason
other than the user's own choice are also a `UserWarning`.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import keras

logger = logging.getLogger("tfnorms")


@dataclass(frozen=True)
class Entry:
    """One layer: its path in the model (`model/tcn/blocks[0]/conv`), the
    layer object (of the model the tool was given), and what happened."""

    path: str
    layer: keras.layers.Layer
    detail: str


@dataclass
class Report:
    """What `tool` did: `done` (one entry per layer acted on, in order),
    `left` (layers it did not handle, each with the reason), `notes`
    (whole-model remarks, such as the class a copy came back as)."""

    tool: str
    done: list[Entry] = field(default_factory=list)
    left: list[Entry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Entries of `left` that the user asked for (layer_filter): not warned.
    _chosen: set[int] = field(default_factory=set, repr=False)

    def add_done(self, path: str, layer: keras.layers.Layer, detail: str) -> None:
        self.done.append(Entry(path, layer, detail))

    def add_left(
        self, path: str, layer: keras.layers.Layer, why: str, *, chosen: bool = False
    ) -> None:
        if chosen:
            self._chosen.add(len(self.left))
        self.left.append(Entry(path, layer, why))

    @property
    def layers(self) -> list[keras.layers.Layer]:
        """The layers acted on, in order."""
        return [entry.layer for entry in self.done]

    def __str__(self) -> str:
        lines = [f"tfnorms.{self.tool}: {len(self.done)} done, {len(self.left)} left."]
        lines += [f"  {e.path}: {e.detail}" for e in self.done]
        lines += [f"  left {e.path}: {e.detail}" for e in self.left]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def emit(self, stacklevel: int = 3) -> None:
        """Log the report; warn about layers left against the user's wish."""
        logger.info("%s", self)
        problems = [e for i, e in enumerate(self.left) if i not in self._chosen]
        if problems:
            listed = "; ".join(f"{e.path}: {e.detail}" for e in problems)
            warnings.warn(
                f"tfnorms.{self.tool} left {len(problems)} layer(s) as they were: {listed}",
                stacklevel=stacklevel,
            )


def require_model(model, tool: str) -> None:
    """Refuse anything but a Keras model, naming the tool and what it got."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"tfnorms.{tool} takes a Keras model; received {model!r}.")
