"""Named KD recipes = weighted sums of the loss terms of `kdqat.kd.losses` (SPEC §4, §12).

``build_method(name, params, protocol)`` returns a `KDMethod`; calling it on the captured
student / teacher tensors returns ``(total, {term: float})``. Term values are logged UNWEIGHTED;
``total = Σ_term method.weights[term] · term`` in the order of ``method.weights``.

Captured inputs (only the sites in ``method.needs`` are required; lists are per layer):
``logits``; ``hidden`` L+1 × ``[B,S,D]`` (embeddings + every layer); ``scores`` L × ``[B,H,S,S]``
pre-softmax incl. additive mask; ``probs`` L × ``[B,H,S,S]`` before dropout; ``attn_sublayer``
L × ``[B,S,D]`` = LN(W_O·ctx + b + X) (post-LN, ``blk[1]``); ``attn_output`` L × ``[B,S,D]`` =
W_O·ctx + b (pre-LN, ``blk[2]``); ``context`` L × ``[B,H,S,d_h]``.

Families (the method's family is fixed; ``gt`` serves both and picks by the logits' rank):
* encoder: logits ``[B, C]``; batch ``labels`` ``[B]``, ``lengths`` ``[B]`` (falls back to
  ``attention_mask.sum(-1)``, i.e. right padding). Task type = ``protocol["task_type"]``
  (``classification`` | ``regression``, checked against C); when absent, HF's rule ``C == 1`` ->
  regression. Regression: pred = MSE(z^S, z^T), GT per ``gt_regression``.
* decoder: FULL HF logits ``[B, T, V]`` and ``labels`` ``[B, T]`` = input_ids with -100 where
  ignored; the method aligns them itself (logits ``[:, :-1]``, labels ``[:, 1:]``, SPEC §4.2).
  L2L uses the full-length hidden states and scores (or probs).

Protocol (``method.protocol`` keeps only the keys the recipe reads, defaults filled in): the KD
switches of :class:`kdqat.protocol.Protocol`, which owns their defaults (= official code) and
valid values: ``soft_ce``, ``output_site``, ``gt_reduction`` (encoder classification GT only;
decoder GT is always HF's mean over non-ignored tokens), ``gt_regression``, ``tsld_tau``,
``tsld_batch``, ``tsld_variant``, ``l2l_attention``; plus ``task_type``. Every other Protocol
switch (``act_clip``, ``precision``, ...) is accepted and ignored, so a job's whole resolved
protocol can be passed; any other key is a ValueError listing the valid ones.

Import cost: torch and ``kdqat.kd.losses`` are imported when a term is first computed, so naming,
validating and building methods (the registry's dry run) never loads torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Real
from typing import TYPE_CHECKING, Callable

from pydantic import ValidationError

from kdqat.protocol import Protocol

if TYPE_CHECKING:  # torch and the losses are imported when a loss is computed, not to validate names
    import torch

KD_SWITCHES = ("soft_ce", "output_site", "gt_reduction", "gt_regression",
               "tsld_tau", "tsld_batch", "tsld_variant", "l2l_attention")
TASK_TYPES = ("classification", "regression")
PROTOCOL_DEFAULTS: dict[str, object] = {
    "task_type": None, **{k: Protocol.model_fields[k].default for k in KD_SWITCHES}}


@dataclass(frozen=True)
class Param:
    """One recipe parameter: default, a predicate, the text of the valid range, a normaliser."""
    default: object
    ok: Callable[[object], bool]
    valid: str
    cast: Callable[[object], object] = lambda x: x


@dataclass(frozen=True)
class Recipe:
    family: str                     # "encoder" | "decoder" | "any" (gt only)
    terms: tuple[str, ...]
    doc: str
    params: dict[str, Param] = field(default_factory=dict)
    weights: Callable[[dict], dict[str, float]] | None = None   # None: every term weight 1.0


def _is_num(x: object) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def _map_output_weights(p: dict) -> dict[str, float]:
    g, one = p["gamma"], p["form"] == 1
    return {"pred": 1.0, "rep": 1.0, "map": 1.0 if one else g, "out": g if one else 1.0}


_GAMMA = Param(1.0, lambda x: _is_num(x) and 0.0 < float(x) <= 1.0, "a number in (0, 1]", float)
_FORM = Param(1, lambda x: isinstance(x, int) and not isinstance(x, bool) and x in (1, 2), "1 or 2")

METHODS: dict[str, Recipe] = {
    "ternarybert": Recipe("encoder", ("pred", "rep", "att"), "TernaryBERT as P1 runs it"),
    "map": Recipe("encoder", ("pred", "rep", "map"), "P1 'Map'"),
    "output": Recipe("encoder", ("pred", "rep", "out"), "P1 'Output'"),
    "map+output": Recipe("encoder", ("pred", "rep", "map", "out"),
                         "P1 unified: form 1 = L_map + γ·L_out, form 2 = γ·L_map + L_out (SPEC §12.1)",
                         {"gamma": _GAMMA, "form": _FORM}, _map_output_weights),
    "ti": Recipe("encoder", ("pred", "rep", "out", "att"), "P2 loss, both TI steps"),
    "gt": Recipe("any", ("gt",), "ground truth only: encoder GT, or HF causal-LM CE for decoders"),
    "logit": Recipe("decoder", ("logit",), "P3 logit KD"),
    "logit+gt": Recipe("decoder", ("gt", "logit"), "P3 'Logit+GT'"),
    "l2l+logit": Recipe("decoder", ("logit", "l2l_rep", "l2l_att"), "P3 'L2L+Logit'"),
    "tsld": Recipe("decoder", ("gt", "tsld"), "P3 released 'tsld' option = GT + TSLD (SPEC §9.20, §12.8)"),
    "tsld_only": Recipe("decoder", ("tsld",), "TSLD alone (switch)"),
}

# protocol keys and capture sites each term reads
_TERM_PROTOCOL = {"gt": ("task_type", "gt_reduction", "gt_regression"), "pred": ("task_type", "soft_ce"),
                  "out": ("output_site",), "tsld": ("tsld_tau", "tsld_batch", "tsld_variant"),
                  "l2l_att": ("l2l_attention",)}
_TERM_SITES = {"rep": "hidden", "att": "scores", "map": "probs", "l2l_rep": "hidden"}  # + out, l2l_att


def method_names() -> list[str]:
    """The valid method names, in registration order."""
    return list(METHODS)


def _recipe(name: str) -> Recipe:
    if name not in METHODS:
        raise ValueError(f"unknown KD method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name]


def _resolve_params(name: str, params: dict | None) -> dict:
    spec = _recipe(name).params
    params = dict(params or {})
    for key in params:
        if key not in spec:
            raise ValueError(f"KD method {name!r}: unknown parameter {key!r}; "
                             f"valid: {', '.join(spec) or '(none)'}")
    out = {}
    for key, p in spec.items():
        value = params.get(key, p.default)
        if not p.ok(value):
            raise ValueError(f"KD method {name!r}: parameter {key!r} must be {p.valid}, got {value!r}")
        out[key] = p.cast(value)
    return out


def _resolve_protocol(protocol: dict | None) -> dict:
    protocol = dict(protocol or {})
    for key in protocol:
        if key not in PROTOCOL_DEFAULTS and key not in Protocol.model_fields:
            raise ValueError(f"unknown KD protocol key {key!r}; valid: {', '.join(PROTOCOL_DEFAULTS)} "
                             "(other kdqat.protocol switches are accepted and ignored)")
    if protocol.get("task_type") not in (None, *TASK_TYPES):
        raise ValueError(f"KD protocol 'task_type' must be one of {', '.join(TASK_TYPES)}, "
                         f"got {protocol['task_type']!r}")
    try:
        checked = Protocol(**{k: v for k, v in protocol.items() if k in Protocol.model_fields})
    except ValidationError as e:
        err = e.errors()[0]
        raise ValueError(f"KD protocol {err['loc'][0]!r}: {err['msg']}, got {err['input']!r}") from None
    return {"task_type": protocol.get("task_type"), **{k: getattr(checked, k) for k in KD_SWITCHES}}


def validate_method(name: str, params: dict | None = None, protocol: dict | None = None) -> None:
    """Raise ValueError (naming the offending method / parameter / key) unless all are valid."""
    _resolve_params(name, params)
    _resolve_protocol(protocol)


def build_method(name: str, params: dict | None = None, protocol: dict | None = None) -> "KDMethod":
    """The recipe ``name`` with validated ``params`` and ``protocol`` (see module docstring)."""
    return KDMethod(name, params, protocol)


def _layers(name: str, site: str, student: dict, teacher: dict) -> list[tuple]:
    """(teacher, student) tensor pairs of one capture site; checks presence and layer counts."""
    for who, d in (("student", student), ("teacher", teacher)):
        if site not in d:
            raise ValueError(f"KD method {name!r} needs {who}[{site!r}] (captured: {', '.join(d)})")
    if len(student[site]) != len(teacher[site]):
        raise ValueError(f"{site!r}: student has {len(student[site])} layers, "
                         f"teacher {len(teacher[site])}")
    return list(zip(teacher[site], student[site]))


def _layer_sum(fn, pairs, *extra) -> torch.Tensor:
    total = None
    for t, s in pairs:
        v = fn(t, s, *extra)
        total = v if total is None else total + v
    if total is None:
        raise ValueError("no layers captured")
    return total


class KDMethod:
    """A named recipe. Attributes: ``name``, ``params`` and ``protocol`` (resolved, with defaults),
    ``family``, ``weights`` ``{term: coefficient}`` and ``needs`` (capture sites read)."""

    def __init__(self, name: str, params: dict | None = None, protocol: dict | None = None):
        recipe = _recipe(name)
        self.name = name
        self.family = recipe.family
        self.params = _resolve_params(name, params)
        full = _resolve_protocol(protocol)
        reads = [k for t in recipe.terms for k in _TERM_PROTOCOL.get(t, ())
                 if not (t == "gt" and recipe.family == "decoder")]       # decoder GT: fixed HF mean
        self.protocol = {k: full[k] for k in PROTOCOL_DEFAULTS if k in reads}
        self.weights = recipe.weights(self.params) if recipe.weights else {t: 1.0 for t in recipe.terms}
        self.needs = frozenset(self._site(t) for t in recipe.terms if self._site(t))

    def _site(self, term: str) -> str | None:
        if term == "out":
            return "attn_sublayer" if self.protocol["output_site"] == "post_ln" else "attn_output"
        if term == "l2l_att":
            return self.protocol["l2l_attention"]         # "scores" (official) | "probs" (stock HF)
        return _TERM_SITES.get(term)

    def __repr__(self) -> str:
        return f"KDMethod({self.name!r}, params={self.params}, protocol={self.protocol})"

    def __call__(self, student: dict, teacher: dict, batch: dict) -> tuple[torch.Tensor, dict]:
        """Total loss (0-dim) and the unweighted term values as floats."""
        rank = student["logits"].dim()
        family = self.family if self.family != "any" else ("encoder" if rank == 2 else "decoder")
        if (family, rank) not in (("encoder", 2), ("decoder", 3)):
            raise ValueError(f"KD method {self.name!r} ({family}) got logits of rank {rank}; "
                             "expected [B, C] for encoders, [B, T, V] for decoders")
        term_fn = self._encoder_term if family == "encoder" else self._decoder_term
        values, total = {}, None
        for term, w in self.weights.items():
            v = term_fn(term, student, teacher, batch)
            values[term] = float(v.detach())
            total = w * v if total is None else total + w * v
        return total, values

    def _encoder_term(self, term: str, student: dict, teacher: dict, batch: dict) -> torch.Tensor:
        from kdqat.kd import losses as L
        zs, zt, p = student["logits"], teacher["logits"], self.protocol
        regression = zs.shape[-1] == 1
        if p["task_type"] is not None and (p["task_type"] == "regression") != regression:
            raise ValueError(f"task_type {p['task_type']!r} but the logits have {zs.shape[-1]} outputs")
        if term == "gt":
            if regression:
                target = zt if p["gt_regression"] == "teacher" else batch["labels"]
                return L.gt_regression_mse(zs, target)
            return L.gt_cross_entropy(zs, batch["labels"], p["gt_reduction"])
        if term == "pred":
            return L.pred_mse(zs, zt) if regression else L.soft_cross_entropy(zs, zt, p["soft_ce"])
        pairs = _layers(self.name, self._site(term), student, teacher)
        if term == "rep":
            return _layer_sum(L.hidden_mse, pairs)
        if term == "att":
            return _layer_sum(L.attention_score_mse, pairs)
        if term == "out":
            return _layer_sum(L.attention_output_mse, pairs)
        if term == "map":
            lengths = batch["lengths"] if "lengths" in batch else batch["attention_mask"].sum(-1)
            return _layer_sum(L.attention_map_kl, pairs, lengths)
        raise AssertionError(term)

    def _decoder_term(self, term: str, student: dict, teacher: dict, batch: dict) -> torch.Tensor:
        from kdqat.kd import losses as L
        p = self.protocol
        zs = student["logits"][:, :-1]
        labels = batch["labels"][:, 1:]
        if term == "gt":
            return L.causal_lm_ce(zs, labels)
        zt = teacher["logits"][:, :-1]
        if term == "logit":
            return L.logit_kd_causal(zs, zt)
        if term == "tsld":
            return L.tsld(zs, zt, labels, tau=float(p["tsld_tau"]), batch_reduction=p["tsld_batch"],
                          variant=p["tsld_variant"])
        pairs = _layers(self.name, self._site(term), student, teacher)
        if term == "l2l_rep":
            return _layer_sum(L.hidden_mse, pairs)
        if term == "l2l_att":
            return _layer_sum(L.l2l_attention_mse, pairs)
        raise AssertionError(term)
