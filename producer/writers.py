"""Tracking writers in NVFlare's style, on top of :class:`AnalyticsSender`.

Each writer stamps its records with its own writer kind (``LogWriterName``), as
NVFlare's Client API writers do, so sinks convert data types the same way:

- :class:`SummaryWriter` (TensorBoard): ``add_scalar``, ``add_scalars``, ``flush``
- :class:`MLflowWriter`: ``log_param(s)``, ``log_metric(s)``, ``log_text``, ``set_tag(s)``
- :class:`WandBWriter`: ``log``

A writer given no sender makes its own from ``sender_kwargs`` and closes it in
:meth:`close`; a writer given a sender leaves closing it to the caller.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, TypeVar

from flarestream.producer.sender import AnalyticsSender
from flarestream.schemas.record import AnalyticsDataType as T
from flarestream.schemas.record import LogWriterName

_W = TypeVar("_W", bound="_Writer")


class _Writer:
    writer_kind = LogWriterName.TORCH_TB

    def __init__(self, sender: AnalyticsSender | None = None, **sender_kwargs: Any) -> None:
        if sender is None:
            sender_kwargs.setdefault("writer_name", self.writer_kind)
            sender = AnalyticsSender(**sender_kwargs)
            self._owns_sender = True
        else:
            self._owns_sender = False
        self.sender = sender

    def _send(self, tag: Any, value: Any, data_type: T, step: Any = None, **kwargs: Any) -> None:
        self.sender.send(tag, value, data_type, step, self.writer_kind, kwargs)

    def flush(self, timeout: float | None = None) -> None:
        self.sender.flush(timeout)

    def close(self) -> None:
        """Flush; close the sender too when this writer made it."""
        if self._owns_sender:
            self.sender.close()
        else:
            self.sender.flush()

    def __enter__(self: _W) -> _W:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SummaryWriter(_Writer):
    """TensorBoard-style writer (NVFlare's ``SummaryWriter``)."""

    writer_kind = LogWriterName.TORCH_TB

    def add_scalar(
        self, tag: str, scalar: float, global_step: int | None = None, **kwargs: Any
    ) -> None:
        self._send(tag, scalar, T.SCALAR, global_step, **kwargs)

    def add_scalars(
        self, tag: str, scalars: dict[str, float], global_step: int | None = None, **kwargs: Any
    ) -> None:
        self._send(tag, scalars, T.SCALARS, global_step, **kwargs)


class MLflowWriter(_Writer):
    """MLflow-style writer (NVFlare's ``MLflowWriter``)."""

    writer_kind = LogWriterName.MLFLOW

    def log_param(self, key: str, value: Any) -> None:
        self._send(key, value, T.PARAMETER)

    def log_params(self, values: dict[str, Any]) -> None:
        self._send("params", values, T.PARAMETERS)

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self._send(key, value, T.METRIC, step)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._send("metrics", metrics, T.METRICS, step)

    def log_text(self, text: str, artifact_file_path: str) -> None:
        self._send("text", text, T.TEXT, path=artifact_file_path)

    def set_tag(self, key: str, tag: Any) -> None:
        self._send(key, tag, T.TAG)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._send("tags", tags, T.TAGS)


class WandBWriter(_Writer):
    """Weights & Biases-style writer (NVFlare's ``WandBWriter``)."""

    writer_kind = LogWriterName.WANDB

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._send("metrics", metrics, T.METRICS, step)
