"""TensorBoard event files, written without TensorBoard's writer stack.

``torch.utils.tensorboard.SummaryWriter`` imports ``tensorboard.summary``, which imports
TensorBoard's TensorFlow stub and through it boto3 and more: about 0.2 CPU s at the start of
every run, for three kinds of record. :class:`EventWriter` writes the same records (the
protocol buffers TensorBoard ships, framed as TFRecords) and only imports the generated
protocol-buffer modules: scalars (``simple_value``), HWC ``uint8`` images (PNG) and text
(the text plug-in's tensor), and a ``purge_step`` that hides what a killed run wrote after
its checkpoint, as ``SummaryWriter(purge_step=...)`` does. TensorBoard (and its
``EventAccumulator``) reads the files like any others.

A TFRecord is ``length (uint64 LE) | masked CRC-32C of length | data | masked CRC-32C of
data``; the file starts with an event naming the format version ``brain.Event:2``.
"""

from __future__ import annotations

import io
import itertools
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

__all__ = ["EventWriter", "crc32c", "masked_crc32c"]


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return tuple(table)


_TABLE = _crc32c_table()
_UIDS = itertools.count()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``: ``crc32c(b"123456789") == 0xE3069283``."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The checksum TFRecords store: CRC-32C rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _png(array: Any) -> tuple[bytes, int, int, int]:
    """PNG bytes, height, width and channels of an ``H x W x C`` image: uint8, or floats in
    [0, 1] (scaled by 255)."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(array)
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4):
        raise ValueError(f"an image must be H x W x C with C in 1, 3, 4; found {pixels.shape}")
    if pixels.shape[2] == 1:  # grey, shown as RGB (as SummaryWriter does)
        pixels = np.concatenate([pixels] * 3, axis=2)
    if pixels.dtype != np.uint8:  # values in [0, 1]
        pixels = (pixels.astype(np.float32) * 255).clip(0, 255).astype(np.uint8)
    height, width, channels = pixels.shape
    image = Image.fromarray(pixels)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue(), height, width, channels


def _stamp(name: str) -> int:
    """The time in an event file's name (``events.out.tfevents.<time>.``...), else -1."""
    parts = name.split(".")
    if len(parts) > 3 and parts[2] == "tfevents" and parts[3].isdigit():
        return int(parts[3])
    return -1


class EventWriter:
    """An event file in ``log_dir``: ``add_scalar``, ``add_image``, ``add_text``, ``flush``,
    ``close``, like the part of ``SummaryWriter`` a run uses. Records are flushed at least
    every ``flush_secs`` seconds and on :meth:`flush` and :meth:`close`."""

    def __init__(self, log_dir: str | Path, *, purge_step: int | None = None,
                 flush_secs: float = 120.0) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        folder = Path(log_dir)
        folder.mkdir(parents=True, exist_ok=True)
        # TensorBoard reads a folder's files in name order: a resumed run's file must sort
        # after the files before it, also when written within the same second (the process
        # id and counter after the time do not sort as numbers).
        stamp = max([int(time.time()), *(_stamp(p.name) + 1 for p in folder.iterdir())])
        name = "events.out.tfevents.%010d.%s.%s.%s" % (  # noqa: UP031 - TensorBoard's pattern
            stamp, socket.gethostname(), os.getpid(), next(_UIDS))
        self.path = folder / name
        self._file: Any = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        self._flush_secs = flush_secs
        self._flushed = time.monotonic()
        self._event(file_version="brain.Event:2", source_metadata=event_pb2.SourceMetadata(
            writer="dgraph.runtime.events"))
        if purge_step is not None:
            # What TensorBoard reads as a restart at purge_step: it drops the events logged
            # at that step and later by the run that was killed.
            self._event(step=purge_step, file_version="brain.Event:2")
            self._event(step=purge_step, session_log=event_pb2.SessionLog(
                status=event_pb2.SessionLog.START))
        self.flush()

    def _event(self, **fields: Any) -> None:
        if self._file is None:
            raise ValueError(f"the event file {self.path} is closed")
        fields.setdefault("wall_time", time.time())
        data = self._event_pb2.Event(**fields).SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(header + struct.pack("<I", masked_crc32c(header)) + data
                         + struct.pack("<I", masked_crc32c(data)))
        if time.monotonic() - self._flushed >= self._flush_secs:
            self.flush()

    def _summary(self, step: int, value: Any) -> None:
        self._event(step=int(step), summary=self._summary_pb2.Summary(value=[value]))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._summary(step, self._summary_pb2.Summary.Value(tag=tag, simple_value=float(value)))

    def add_image(self, tag: str, array: Any, step: int) -> None:
        """An ``H x W x C`` image (uint8, or floats in [0, 1])."""
        png, height, width, channels = _png(array)
        image = self._summary_pb2.Summary.Image(height=height, width=width,
                                                colorspace=channels, encoded_image_string=png)
        self._summary(step, self._summary_pb2.Summary.Value(tag=tag, image=image))

    def add_text(self, tag: str, text: str, step: int) -> None:
        """Text for TensorBoard's text tab (Markdown), under ``<tag>/text_summary``."""
        from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2
        from tensorboard.plugins.text import plugin_data_pb2

        pb = self._summary_pb2
        metadata = pb.SummaryMetadata(plugin_data=pb.SummaryMetadata.PluginData(
            plugin_name="text",
            content=plugin_data_pb2.TextPluginData(version=0).SerializeToString()))
        tensor = tensor_pb2.TensorProto(
            dtype="DT_STRING", string_val=[text.encode("utf-8")],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]))
        self._summary(step, pb.Summary.Value(tag=tag + "/text_summary", metadata=metadata,
                                             tensor=tensor))

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._flushed = time.monotonic()

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            file.close()
