"""``reward_model``: a critic (:class:`dgraph.declare.Scores`) that scores generated outputs
with a transformers sequence-classification model (a reward model) loaded from a folder, or
trained in the same run (``hf_sequence_classifier``, a node of the graph).

Each candidate's text is ``template`` filled with its prompt and output (default
``{prompt}{output}``), encoded with the reward model's own tokenizer (its folder's
``tokenizer.json``, another file or folder, or ``byte``: the byte tokenizer of dgraph's text
sources), padded on the right with the model's pad id and scored in batches without
gradients; the score is the logit of ``label`` (``None``: the model's single output,
``num_labels: 1``), or with ``output: prob`` its probability (softmax over the labels; the
sigmoid of a single output), so that a generator's ``threshold: 0.5`` keeps what the model
judges more likely right than wrong:

    score(x, y) = RM(template(x, y))[label]      (output: logit)
    score(x, y) = softmax(RM(template(x, y)))[label]   (output: prob)

A text longer than ``max_length`` tokens is an error that names it (never silently cut).

The folder is a local one written by ``save_pretrained`` (or a Hub id already in the local
cache); it is loaded with ``AutoModelForSequenceClassification.from_pretrained``,
``trust_remote_code=False`` and ``local_files_only``. Validation (the dry run) reads its
``config.json`` only: it must name a sequence-classification architecture, have a pad token
(batches are padded) and positions for ``max_length`` tokens. The model is loaded once, when
the node is built for training, and is kept outside the node's parameters: its weights are the
folder's, frozen, never checkpointed or exported.

With ``model: NODE`` instead of ``path`` the scorer is an ``hf_sequence_classifier`` node of
the spec (trained by an earlier stage, say on ``arithmetic_judgements``); its tokenizer must
be named (``tokenizer: byte`` for the text sources' bytes), and it is put in eval mode while
it scores.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from dgraph.components._inputs import input_error
from dgraph.components.generate._decoding import Candidate
from dgraph.components.models.hf import model_folder

from dgraph.declare import Logits, Mask, Module, NodeRef, Outputs, Tokens, model, op, param
from dgraph.registry import BuildContext

__all__ = ["RewardModel", "SequenceClassifier", "load_reward_model"]

_FIELDS = ("prompt", "output")


def _template_fields(p) -> None:  # noqa: ANN001 - the generated parameter model
    if (p.path is None) == (p.model is None):
        raise ValueError("give the reward model as path: FOLDER (a saved model) or model: NODE "
                         "(an hf_sequence_classifier node), exactly one")
    if p.model is not None and p.tokenizer is None:
        raise ValueError("model: NODE scores with the node's own tokenizer: name it "
                         "(tokenizer: byte for the text sources' byte tokens, or a "
                         "tokenizer.json)")
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(p.template)
                 if name is not None]
    except ValueError as exc:
        raise ValueError(f"template '{p.template}' is not a format string: {exc}") from None
    unknown = sorted({n for n in names if n not in _FIELDS})
    if unknown:
        raise ValueError(f"template '{p.template}' names {unknown}; it may use only "
                         "{prompt} and {output} (write {{ and }} for braces)")
    if "output" not in names:
        raise ValueError(f"template '{p.template}' does not contain {{output}}: the reward "
                         "model would not see the output it scores")


def _positions(config: Any) -> int | None:
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def load_reward_model(folder: Path) -> Any:
    """``AutoModelForSequenceClassification`` from a saved folder (float32, eval mode, no
    gradients); ``ValueError`` when the folder lacks the classification head's weights
    (a causal LM's folder, say: transformers would start the head from random values)."""
    from transformers import AutoModelForSequenceClassification

    model, info = AutoModelForSequenceClassification.from_pretrained(
        str(folder), local_files_only=True, trust_remote_code=False, output_loading_info=True)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ValueError(f"its weights lack {', '.join(missing[:4])}"
                         f"{', ...' if len(missing) > 4 else ''}: not a trained "
                         "sequence-classification model")
    model = model.float().eval()
    model.requires_grad_(False)
    return model


@op("reward_model", check=_template_fields)
class RewardModel(Module):
    """Score each output with a reward model: the chosen logit of a sequence classifier."""

    def __init__(self, *,
                 max_length: int = param(gt=0, doc="the most tokens a scored text may have; a "
                                         "longer one is an error (never cut)"),
                 path: str | None = param(None, doc="the reward model: a local folder written "
                                          "by save_pretrained (config.json, weights, "
                                          "tokenizer.json) relative to the spec's folder, or "
                                          "a Hub id in the local cache; never downloaded"),
                 model: NodeRef | None = param(None, doc="instead of path: an "
                                               "hf_sequence_classifier node of the spec "
                                               "(trained in an earlier stage)"),
                 tokenizer: str | None = param(None, doc="the tokenizer: a tokenizer.json or "
                                               "a folder holding one, 'byte' (the byte "
                                               "tokenizer of dgraph's text sources); None: "
                                               "the model folder's tokenizer.json"),
                 label: int | None = param(None, ge=0, doc="the logit scored (None: the "
                                           "model must have one output, num_labels 1)"),
                 output: Literal["logit", "prob"] = param(
                     "logit", doc="the score: the label's logit, or its probability "
                     "(softmax over the labels; sigmoid of a single output)"),
                 template: str = param("{prompt}{output}", doc="the text scored, from the "
                                       "candidate's {prompt} and {output}"),
                 add_special_tokens: bool = param(True, doc="let the tokenizer add its "
                                                  "special tokens ([CLS] ... [SEP])"),
                 batch_size: int = param(64, gt=0, doc="texts scored together"),
                 context: BuildContext) -> None:
        super().__init__()
        from transformers import AutoConfig

        self.output = output
        self.node = context.node
        self._model: tuple[Any, ...] = ()
        if model is not None:
            classifier = getattr(model, "model", None)
            if not isinstance(model, SequenceClassifier) or classifier is None:
                raise input_error(
                    context, "model", f"names a node that is not a sequence classifier "
                    f"({type(model).__name__})", code="not-a-reward-model",
                    expected="an hf_sequence_classifier node", found=f"model: a "
                    f"{type(model).__name__}", hint="point model at an hf_sequence_classifier "
                    "node, or give path: a saved reward model's folder")
            self._setup(context, classifier.config, label, max_length, where="model")
            self.tokenizer = self._tokenizer(context, None, tokenizer)
            self.template, self.add_special_tokens = template, add_special_tokens
            self.batch_size, self.folder = batch_size, None
            self._model = (model,)  # by reference: the node's own module, trained elsewhere
            return
        assert path is not None
        folder = model_folder(context, "path", path)
        try:
            config = AutoConfig.from_pretrained(str(folder), local_files_only=True,
                                                trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise input_error(context, "path", f"transformers cannot read the config in "
                              f"{folder}", expected="a folder written by save_pretrained",
                              found=f"{type(exc).__name__}: {str(exc).strip()[:200]}",
                              hint="re-write the folder with save_pretrained") from None
        architectures = list(getattr(config, "architectures", None) or [])
        if architectures and not any(a.endswith("ForSequenceClassification")
                                     for a in architectures):
            raise input_error(
                context, "path", f"{folder} is not a sequence-classification model",
                code="not-a-reward-model",
                expected="a folder saved from an ...ForSequenceClassification model "
                "(AutoModelForSequenceClassification)",
                found=f"config.json architectures: {', '.join(architectures)}",
                hint="train a reward model (e.g. GPT2ForSequenceClassification, num_labels "
                "1) and save_pretrained it; a language model's folder has no reward head")
        self._setup(context, config, label, max_length, where="path", folder=folder)
        self.tokenizer = self._tokenizer(context, folder, tokenizer)
        self.template = template
        self.add_special_tokens = add_special_tokens
        self.batch_size = batch_size
        self.folder = folder
        # Loaded for training only (the dry run and the exporter read the config alone), and
        # kept out of the module tree: frozen weights of the folder, not the run's.
        if not context.meta and context.weights:
            try:
                loaded = load_reward_model(folder)
            except (OSError, ValueError) as exc:
                raise input_error(
                    context, "path", f"transformers cannot load the reward model in "
                    f"{folder}", code="not-a-reward-model",
                    expected="a folder saved from a sequence-classification model "
                    "(config.json and its weights)",
                    found=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}",
                    hint="re-write the folder with save_pretrained from the trained reward "
                    "model") from None
            self._model = (loaded.to(context.device),)

    def _setup(self, context: BuildContext, config: Any, label: int | None, max_length: int,
               *, where: str, folder: Path | None = None) -> None:
        """Check the label, the pad token and the positions against the model's config."""
        if label is None and config.num_labels != 1:
            raise input_error(
                context, "label", f"the model has {config.num_labels} outputs; say which "
                "one is the reward", code="bad-param",
                expected="label: the index of the logit to score (0 .. "
                f"{config.num_labels - 1})", found="label: null",
                hint="set label, or use a model with num_labels 1")
        if label is not None and label >= config.num_labels:
            raise input_error(
                context, "label", f"label {label} is not one of the model's "
                f"{config.num_labels} outputs", code="bad-param",
                expected=f"0 <= label < {config.num_labels}", found=f"label: {label}",
                hint=f"set label to at most {config.num_labels - 1}")
        if config.pad_token_id is None:
            raise input_error(
                context, where, f"the reward model {'in ' if folder else ''}"
                f"{folder or 'of node ' + str(context.reference_names.get('model'))} has no "
                "pad token",
                code="no-pad-token", expected="config.json with pad_token_id (texts are "
                "scored in padded batches; the score is read at the last real token)",
                found="pad_token_id: null",
                hint="set model.config.pad_token_id (e.g. to the end-of-text id) and "
                "save_pretrained again")
        limit = _positions(config)
        if limit is not None and max_length > limit:
            raise input_error(
                context, "max_length", f"max_length {max_length} is over the model's "
                f"{limit} positions", code="bad-param", expected=f"max_length <= {limit}",
                found=f"max_length: {max_length}", hint=f"set max_length to at most {limit}")
        self.pad_token_id = int(config.pad_token_id)
        self.label = 0 if label is None else label
        self.num_labels = int(config.num_labels)
        self.max_length = max_length

    @staticmethod
    def _tokenizer(context: BuildContext, folder: Path | None, raw: str | None) -> Any:
        from dgraph.components.data.text import byte_tokenizer, read_tokenizer_json, tokenizer_json

        if raw == "byte":
            return byte_tokenizer()
        if raw is None:
            assert folder is not None
            path = folder / "tokenizer.json"
            if not path.is_file():
                raise input_error(
                    context, "tokenizer", f"the model folder {folder} holds no "
                    "tokenizer.json", code="missing-file",
                    expected="a tokenizer.json saved by the tokenizers library, or a folder "
                    "holding one",
                    found="tokenizer: null (the model folder's), and no tokenizer.json there",
                    hint="save the reward model's tokenizer into its folder, or name one "
                    "with tokenizer: (a file, a folder, or 'byte')")
        else:
            path = tokenizer_json(context, "tokenizer", raw)
        return read_tokenizer_json(context, "tokenizer", path)

    def forward(self) -> Outputs():
        return {}

    @property
    def model(self) -> Any:
        """The transformers sequence classifier (None in the dry run)."""
        if not self._model:
            return None
        found = self._model[0]
        return found.model if isinstance(found, SequenceClassifier) else found

    def texts(self, candidates: Sequence[Candidate]) -> list[str]:
        return [self.template.format(prompt=c.prompt, output=c.output) for c in candidates]

    def encode(self, candidates: Sequence[Candidate]) -> list[list[int]]:
        """The token ids of each candidate's text; a text over ``max_length`` is an error."""
        out = []
        for c, text in zip(candidates, self.texts(candidates), strict=True):
            ids = self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens).ids
            if len(ids) > self.max_length:
                raise ValueError(
                    f"reward_model '{self.node}': the text of prompt {c.index} "
                    f"({text[:60]!r}) is {len(ids)} tokens, over max_length "
                    f"{self.max_length}; raise max_length (texts are never cut) or generate "
                    "fewer tokens")
            if not ids:
                raise ValueError(f"reward_model '{self.node}': the text of prompt {c.index} "
                                 "is empty: nothing to score")
            out.append(ids)
        return out

    def score(self, candidates: Sequence[Candidate]) -> list[float]:
        import torch

        model = self.model
        if model is None:
            raise RuntimeError(f"reward_model '{self.node}' was built without its weights "
                               "(dry run or export): it cannot score")
        device = next(model.parameters()).device
        encoded = self.encode(candidates)
        scores: list[float] = []
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(encoded), self.batch_size):
                part = encoded[start:start + self.batch_size]
                width = max(len(ids) for ids in part)
                ids = torch.full((len(part), width), self.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(part), width), dtype=torch.long)
                for row, tokens in enumerate(part):
                    ids[row, :len(tokens)] = torch.tensor(tokens)
                    mask[row, :len(tokens)] = 1
                with torch.no_grad():
                    logits = model(input_ids=ids.to(device),
                                   attention_mask=mask.to(device)).logits.float()
                if self.output == "prob":
                    logits = torch.sigmoid(logits) if self.num_labels == 1 else \
                        torch.softmax(logits, -1)
                scores += logits[:, self.label].tolist()
        finally:
            model.train(was_training)
        return scores


def _num_labels(p: Any) -> dict[str, Any]:
    config = p.config or {}
    return {"num_labels": config.get("num_labels", 2 if "id2label" not in config
                                     else len(config["id2label"]))}


def _has_pad(p: Any) -> None:
    if p.config.get("pad_token_id") is None:
        raise ValueError("config needs pad_token_id: batches are padded and the score is read "
                         "at the last real token")
    if "model_type" not in p.config:
        raise ValueError("config needs model_type (e.g. gpt2)")


@model("hf_sequence_classifier", roles=("model", "teacher", "student"), check=_has_pad,
       sizes=_num_labels)
class SequenceClassifier(Module):
    """A transformers sequence classifier built from a config dict: ids in, label scores out.

    ``AutoModelForSequenceClassification``: ``num_labels`` scores per sequence, read at its
    last real token (a reward model that dgraph trains; a ``reward_model`` critic with
    ``model:`` scores with it). Its weights can start from a causal LM of the same
    architecture (``init: {run: ..., node: ..., strict: false}``: all but the new head)."""

    def __init__(self, *,
                 config: dict[str, Any] = param(doc="a transformers config dict with "
                                                "model_type, num_labels and pad_token_id, "
                                                "e.g. {model_type: gpt2, n_layer: 1, "
                                                "num_labels: 2, pad_token_id: 0, ...}"),
                 context: BuildContext) -> None:
        super().__init__()
        from dgraph.components._inputs import check_config_dict
        from transformers import AutoConfig, AutoModelForSequenceClassification

        check_config_dict(config, "config")
        settings = dict(config)
        model_type = settings.pop("model_type")
        try:
            hf = AutoConfig.for_model(model_type, **settings)
        except (ValueError, KeyError) as exc:
            raise input_error(context, "config", f"bad config for model_type '{model_type}'",
                              code="bad-param", expected="a transformers config",
                              found=f"{type(exc).__name__}: {exc}",
                              hint="check the config's keys") from None
        extra: dict[str, Any] = {"trust_remote_code": False}
        if context.meta:
            extra["attn_implementation"] = "eager"
        self.model = AutoModelForSequenceClassification.from_config(hf, **extra).float()

    def forward(self, input_ids: Tokens("B, T", "token ids, right-padded (int64)"),
                attention_mask: Mask("B, T", "1 for real tokens, 0 for padding") = None,
                ) -> Outputs(logits=Logits("B, {num_labels}", "a score per label")):
        import torch
        from dgraph.components.models.hf import meta_safe_call

        if attention_mask is not None and attention_mask.dtype != torch.long:
            attention_mask = attention_mask.to(torch.long)
        return {"logits": meta_safe_call(self.model, input_ids, attention_mask).logits}
