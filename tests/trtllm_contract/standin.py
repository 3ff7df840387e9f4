"""A stand-in ``tensorrt_llm`` package for the contract tests: a contract check, not a run of TensorRT-LLM.

Its ``bindings.executor`` classes are generated from ``declarations``: a constructor or method call with a name,
keyword or argument count the pinned release does not declare raises TypeError, an undeclared attribute or
module name raises AttributeError, and every call is recorded (``Standin.calls``). Behind the declarations, a
small emulation answers requests the way the backend relies on (never checked on a GPU): a toy bigram model
per engine folder gives the logits, ``LlmRequest::validate``'s silent cuts are recorded as ``silent_cuts``, a
rank that is not its model's leader (first participant) cannot enqueue, and ``shutdown`` is recorded.
"""
from __future__ import annotations

import enum
import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from pearl.backends.trtllm_pin import VERSION
from pearl.params import SamplingParams
from pearl.sampling import probabilities
from trtllm_contract.declarations import CLASSES, ENUMS, Cls, Sig


def bind(owner: str, overloads: tuple[Sig, ...], args: tuple, kwargs: dict) -> dict:
    """The arguments by name for the first overload that takes them, as pybind11 would pick it."""
    errors = []
    for sig in overloads:
        try:
            return _bind(sig, args, kwargs)
        except TypeError as exc:
            errors.append(str(exc))
    raise TypeError(f"{owner}: the pinned TensorRT-LLM {VERSION} declares no overload taking "
                    f"{len(args)} positional and {sorted(kwargs)} keyword arguments ({'; '.join(errors)})")


def _bind(sig: Sig, args: tuple, kwargs: dict) -> dict:
    if len(args) > len(sig.params):
        raise TypeError(f"at most {len(sig.params)} positional arguments")
    values = dict(zip(sig.params, args))
    for key, value in kwargs.items():
        if key in values or (key not in sig.params and key not in sig.kw_only):
            raise TypeError(f"no keyword {key!r}" if key not in values else f"{key!r} given twice")
        values[key] = value
    if missing := [name for name in sig.params[:sig.required] if name not in values]:
        raise TypeError(f"missing {missing}")
    return values


class Declared:
    """Base of the generated classes: declared constructor, attributes and methods only."""

    _name: str
    _decl: Cls
    _standin: "Standin"

    def __init__(self, *args, **kwargs) -> None:
        values = bind(f"{self._name}(...)", self._decl.inits, args, kwargs)
        object.__setattr__(self, "_values", values)
        self._standin.calls.append((self._name, values))
        if hasattr(self, "_construct"):
            self._construct(**values)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._decl.attributes:
            return self._values.get(name)
        raise AttributeError(f"TensorRT-LLM {VERSION}'s {self._name} has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        elif name in self._decl.attributes:
            self._values[name] = value
        else:
            raise AttributeError(f"TensorRT-LLM {VERSION}'s {self._name} has no attribute {name!r}")


def _method(owner: str, name: str, overloads: tuple[Sig, ...], emulate: Callable | None):
    def call(self, *args, **kwargs):
        values = bind(f"{owner}.{name}", overloads, args, kwargs)
        self._standin.calls.append((f"{owner}.{name}", values))
        if emulate is None:
            raise NotImplementedError(f"the stand-in does not emulate {owner}.{name}")
        return emulate(self, **values)
    return call


@dataclass
class ToyModel:
    """Bigram logits: row ``tokens[-1]`` of a random table, ``padded`` columns wide (the columns past ``vocab``
    are huge, so a caller that forgets to cut the padding picks them)."""

    vocab: int
    padded: int
    table: torch.Tensor = field(init=False)
    seed: int = 0
    like: "ToyModel | None" = None  # a draft: this model's table plus noise
    noise: float = 0.0

    def __post_init__(self) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        base = torch.randn(self.vocab, self.vocab, generator=generator) * 4
        if self.like is not None:
            base = self.like.table[:, :self.vocab] + self.noise * torch.randn(base.shape, generator=generator)
        self.table = torch.cat([base, torch.full((self.vocab, self.padded - self.vocab), 100.0)], dim=1)

    def logits(self, tokens: list[int]) -> torch.Tensor:
        return self.table[tokens[-1]]

    def greedy(self, prompt: list[int], count: int) -> list[int]:
        tokens = list(prompt)
        for _ in range(count):
            tokens.append(int(self.logits(tokens)[:self.vocab].argmax()))
        return tokens[len(prompt):]


class ExecutorEmulation:
    """What the stand-in's Executor does behind its declared methods."""

    def _construct(self, model_path, model_type, executor_config) -> None:
        folder = Path(model_path)
        build = json.loads((folder / "config.json").read_text())["build_config"]
        self._limits = (int(build["max_input_len"]), int(build["max_seq_len"]), int(build.get("max_draft_len", 0)))
        self._model = self._standin.models[str(folder)]
        participants = executor_config.parallel_config.participant_ids
        self._leader = self._standin.world_rank() == participants[0]
        self._responses: dict[int, object] = {}
        self._shut = False

    def enqueue_request(self, request):
        if not self.can_enqueue_requests():
            raise RuntimeError("this rank cannot enqueue (not its model's leader, or shut down)")
        request_id = len(self._standin.requests) + 1
        self._standin.requests.append(request)
        self._responses[request_id] = self._standin.module.Response(request_id=request_id, result=self._run(request))
        return request_id

    def _run(self, request):
        max_input, max_seq, max_draft = self._limits
        prompt = list(request.input_token_ids)
        drafts = list(request.external_draft_tokens_config.tokens) if request.external_draft_tokens_config else []
        if len(prompt) > max_input or len(drafts) > max_draft:
            raise RuntimeError("LlmRequest::validate throws: prompt past max_input_len or drafts past max_draft_len")
        if drafts and len(prompt) + len(drafts) > max_input:  # LlmRequest::validate cuts, with a warning only
            self._standin.silent_cuts.append(("draft tokens", len(prompt), len(drafts)))
            drafts = drafts[:max_input - len(prompt)]
        max_tokens = request.max_tokens
        if len(prompt) + max_tokens + (len(drafts) or max_draft) > max_seq:
            self._standin.silent_cuts.append(("max_tokens", len(prompt), max_tokens))
            max_tokens = max_seq - len(prompt) - (len(drafts) or max_draft)
        rows, output = self._verify(prompt, drafts) if drafts else self._generate(prompt, max_tokens, request)
        result = self._standin.module.Result()
        result.output_token_ids = [output if request.output_config.exclude_input_from_output else prompt + output]
        result.generation_logits = rows.unsqueeze(0) if request.output_config.return_generation_logits else None
        result.is_final = True
        return result

    def _verify(self, prompt: list[int], drafts: list[int]):
        rows = torch.stack([self._model.logits(prompt + drafts[:j]) for j in range(len(drafts) + 1)])
        return rows, [int(rows[0, :self._model.vocab].argmax())]

    def _generate(self, prompt: list[int], count: int, request):
        sampling = request.sampling_config
        greedy = sampling is None or sampling.temperature is None or sampling.top_k == 1
        generator = None if greedy else torch.Generator().manual_seed(sampling.seed)
        tokens, rows = list(prompt), []
        for _ in range(count):
            row = self._model.logits(tokens)
            rows.append(row)
            if greedy:
                tokens.append(int(row[:self._model.vocab].argmax()))
            else:  # the emulation samples from exactly pearl's probabilities; the real sampler is assumed to
                params = SamplingParams(temperature=sampling.temperature, top_k=sampling.top_k or 0,
                                        top_p=sampling.top_p or 1.0)
                probs = probabilities(row[:self._model.vocab].unsqueeze(0), params)
                tokens.append(int(torch.multinomial(probs, 1, generator=generator)))
        return torch.stack(rows), tokens[len(prompt):]

    def await_responses(self, id=None, timeout=None, ids=None):
        return [self._responses.pop(id)] if id in self._responses else []

    def cancel_request(self, id=None) -> None:
        self._responses.pop(id, None)

    def can_enqueue_requests(self) -> bool:
        return self._leader and not self._shut

    def shutdown(self) -> None:
        self._shut = True


class ResponseEmulation:
    def has_error(self) -> bool:
        return self.result is None


EMULATIONS = {"Executor": ExecutorEmulation, "Response": ResponseEmulation}


class Standin:
    """One installed stand-in: the modules, the calls made through them, the emulation's state."""

    def __init__(self, models: dict[str, ToyModel], world_rank: Callable[[], int], version: str = VERSION) -> None:
        self.models, self.world_rank = models, world_rank
        self.calls: list[tuple[str, dict]] = []
        self.requests: list = []
        self.silent_cuts: list[tuple] = []
        self.module = types.ModuleType("tensorrt_llm.bindings.executor")
        for name, decl in CLASSES.items():
            emulation = EMULATIONS.get(name)
            body = {"_name": name, "_decl": decl, "_standin": self}
            body.update({method: _method(name, method, sigs, getattr(emulation, method, None))
                         for method, sigs in decl.methods.items()})
            if emulation is not None and hasattr(emulation, "_construct"):
                body["_construct"] = emulation._construct
            bases = (Declared,) if emulation is None else (Declared, emulation)
            setattr(self.module, name, type(name, bases, body))
        for name, values in ENUMS.items():
            setattr(self.module, name, enum.Enum(name, values))
        self.module.__getattr__ = self._missing
        self.package = types.ModuleType("tensorrt_llm")
        self.package.__version__ = version
        self.bindings = types.ModuleType("tensorrt_llm.bindings")
        self.bindings.executor = self.module
        self.package.bindings = self.bindings

    @staticmethod
    def _missing(name: str):
        raise AttributeError(f"tensorrt_llm.bindings.executor of TensorRT-LLM {VERSION} has no {name!r}")

    def install(self, monkeypatch) -> "Standin":
        for name, module in (("tensorrt_llm", self.package), ("tensorrt_llm.bindings", self.bindings),
                             ("tensorrt_llm.bindings.executor", self.module)):
            monkeypatch.setitem(sys.modules, name, module)
        return self

    def constructed(self, name: str) -> list[dict]:
        return [values for called, values in self.calls if called == name]
