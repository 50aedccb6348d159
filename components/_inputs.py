"""Checks on what a spec names outside itself: the files and folders components read.

A relative path means the spec's folder (:meth:`BuildContext.resolve_path`). A missing,
unreadable or wrong-kind file, and a model folder that names custom code (``auto_map``), is a
located :class:`~dgraph.errors.ValidationError` naming the node, the parameter, the path and
a hint. Model folders never run code: dgraph passes ``trust_remote_code=False`` everywhere and
refuses folders and config dicts with ``auto_map`` up front. Imports no torch.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from dgraph.errors import Location, Problem, ValidationError
from dgraph.registry import BuildContext

__all__ = [
    "NO_REMOTE_CODE_HINT",
    "check_config_dict",
    "check_model_folder",
    "existing_path",
    "input_error",
    "model_path",
    "run_dir_path",
    "where",
]

NO_REMOTE_CODE_HINT = (
    "dgraph never runs code from model folders (trust_remote_code is always off): use a "
    "model type that transformers ships (remove 'auto_map' if the folder's model_type is "
    "one), or register a dgraph component plug-in for this architecture"
)


def _param(context: BuildContext, param: str) -> str:
    # A component built inside another's parameters (lm_topk_cache's teacher) gets a prefix.
    return context.param_prefix + param


def where(context: BuildContext, param: str) -> Location | None:
    """The spec location of ``params.<param>`` of the node being built, when known."""
    source = context.source
    if source is None:
        return None
    path = ("nodes", context.node, "params", *_param(context, param).split("."))
    return source.where(path)


def input_error(context: BuildContext, param: str, message: str, *, expected: str,
                found: str, hint: str, code: str = "bad-file",
                location: Location | None = None) -> ValidationError:
    """A located problem about what ``params.<param>`` names (raise the result)."""
    return ValidationError([Problem(
        code=code,
        message=f"params.{_param(context, param)}: {message}",
        location=location if location is not None else where(context, param),
        node=context.node,
        expected=expected,
        found=found,
        suggestion=hint,
    )])


def _relative_hint(context: BuildContext, raw: str) -> str:
    if Path(raw).expanduser().is_absolute():
        return "check the path; absolute paths are used as given"
    if context.spec_dir is None:
        return (f"relative paths are relative to the working directory ({Path.cwd()}) for a "
                "spec without a file; give an absolute path")
    return (f"relative paths are relative to the spec's folder ({context.spec_dir}); "
            "give an absolute path for a file elsewhere")


def existing_path(context: BuildContext, param: str, raw: str, *,
                  kind: Literal["file", "folder", "file or folder"], what: str) -> Path:
    """``raw`` resolved as a spec path; it must exist, be a ``kind`` and be readable."""
    path = context.resolve_path(raw)
    if not path.exists():
        raise input_error(context, param, f"'{raw}' does not exist", code="missing-file",
                          expected=what, found=f"nothing at {path}",
                          hint=_relative_hint(context, raw))
    if path.is_dir():
        found_kind = "a folder"
    elif path.is_file():
        found_kind = "a file"
    else:
        found_kind = "neither a regular file nor a folder (a device, pipe or socket)"
    wrong = (kind == "file" and not path.is_file()) or (kind == "folder" and not path.is_dir()) \
        or (kind == "file or folder" and not (path.is_file() or path.is_dir()))
    if wrong:
        raise input_error(context, param, f"'{raw}' is not a {kind}",
                          expected=what, found=f"{path} is {found_kind}",
                          hint=f"point params.{_param(context, param)} at {what}")
    mode = os.R_OK | (os.X_OK if path.is_dir() else 0)
    if not os.access(path, mode):
        raise input_error(context, param, f"'{raw}' cannot be read (permission denied)",
                          expected=f"{what} that this user can read",
                          found=f"{path} is {found_kind} without read permission",
                          hint="fix its permissions, or copy it somewhere readable")
    return path


# A Hugging Face Hub model id: "owner/name" (letters, digits, '.', '_', '-'; no '..').
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def model_path(context: BuildContext, param: str, raw: str, *,
               kind: Literal["folder", "file or folder"], what: str) -> Path:
    """A local model or tokenizer folder the spec names, or a Hub model id (``owner/name``)
    resolved from the local Hugging Face cache, offline: nothing is ever downloaded.

    A local path that exists wins over a Hub id of the same spelling; a Hub id that is not
    cached is a located error naming the id and the cache folder.
    """
    local = context.resolve_path(raw)
    if local.exists() or not _HUB_ID.fullmatch(raw) or ".." in raw:
        return existing_path(context, param, raw, kind=kind, what=what)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(raw, local_files_only=True))
    except ImportError:
        reason = "huggingface_hub is not installed"
    except Exception as exc:  # LocalEntryNotFoundError, or a cache it cannot read
        reason = f"{type(exc).__name__}"
    raise input_error(context, param, f"'{raw}' is neither a local {kind} nor a Hub model "
                      "in the local Hugging Face cache", code="missing-file",
                      expected=f"{what}, or the id of a Hub model already in the cache",
                      found=f"nothing at {local.absolute()}; '{raw}' not in the cache "
                      f"{_hub_cache()} ({reason})",
                      hint=f"download it once where there is network (`hf download {raw}`; "
                      "HF_HUB_CACHE or HF_HOME choose the cache), or give a local folder: "
                      "dgraph never downloads")


def _code_files(auto_map: Any) -> list[str]:
    """The Python files an ``auto_map`` names ("modeling_x.XModel" -> "modeling_x.py")."""
    refs: list[str] = []
    values: Iterable[Any] = auto_map.values() if isinstance(auto_map, Mapping) else [auto_map]
    for value in values:
        items = value if isinstance(value, (list, tuple)) else [value]
        refs += [item for item in items if isinstance(item, str)]
    files = {ref.split("--")[-1].rsplit(".", 1)[0] + ".py" for ref in refs if "." in ref}
    return sorted(files)


def _auto_map_found(auto_map: Any, holder: str) -> str:
    files = _code_files(auto_map)
    named = ", ".join(files) if files else repr(auto_map)
    return f"'auto_map' in {holder} naming custom code in {named}"


def check_model_folder(context: BuildContext, param: str, folder: Path, *,
                       what: str = "a folder written by save_pretrained",
                       expected: str | None = None) -> None:
    """Refuse a model folder whose ``config.json`` or ``tokenizer_config.json`` names custom
    code (``auto_map``): transformers would ask to run it. Reads JSON only."""
    for name in ("config.json", "tokenizer_config.json"):
        file = folder / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise input_error(context, param, f"{file} is not a readable JSON file",
                              expected=f"{what}, with a valid {name}",
                              found=f"{type(exc).__name__}: {exc}",
                              hint="re-write the folder with save_pretrained") from None
        if isinstance(data, dict) and "auto_map" in data:
            raise input_error(context, param,
                              f"the model folder {folder} names custom code, which dgraph "
                              "never runs", code="remote-code",
                              expected=expected or f"{what} for a model type that "
                              "transformers ships",
                              found=_auto_map_found(data["auto_map"], name),
                              hint=NO_REMOTE_CODE_HINT)


def check_config_dict(config: Mapping[str, Any], name: str) -> None:
    """Raise ``ValueError`` (a located parameter problem during validation) when a config
    dict names custom code (``auto_map``) or holds a non-finite number."""
    if "auto_map" in config:
        files = ", ".join(_code_files(config["auto_map"])) or repr(config["auto_map"])
        raise ValueError(f"{name}.auto_map names custom code ({files}), which dgraph never "
                         "runs: use a model_type that transformers ships, or register a "
                         "dgraph component plug-in")
    bad = _non_finite(config, name)
    if bad is not None:
        raise ValueError(f"{bad[0]} is {bad[1]!r}; numbers in {name} must be finite")


def _non_finite(value: Any, at: str) -> tuple[str, float] | None:
    if isinstance(value, float) and not math.isfinite(value):
        return at, value
    if isinstance(value, Mapping):
        for key, item in value.items():
            if (found := _non_finite(item, f"{at}.{key}")) is not None:
                return found
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            if (found := _non_finite(item, f"{at}[{index}]")) is not None:
                return found
    return None


def run_dir_path(context: BuildContext, param: str, raw: str) -> Path | None:
    """Where a file a component writes goes: ``raw`` inside the run directory.

    ``raw`` must be relative and stay inside (no ``..``); None when there is no run directory
    (nothing is written then).
    """
    relative = Path(raw)
    if relative.is_absolute() or raw.startswith("~") or ".." in relative.parts:
        raise input_error(context, param, "a file dgraph writes must stay inside the run "
                          "directory", code="bad-path",
                          expected="a relative path without '..', e.g. 'tokenizer'",
                          found=f"'{raw}'",
                          hint="components write only inside the run directory (--out); "
                          "copy the file elsewhere after the run")
    if context.run_dir is None:
        return None
    return context.run_dir / relative
