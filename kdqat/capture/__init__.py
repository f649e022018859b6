"""Read (and for Teacher Intervention, replace) the per-layer tensors of an unmodified HF model
(SPEC §1.3 outputs, §3.1 attention-internal A8, §4.1 loss inputs, §5.1 TI-M/C/O).

``Capture(model, record=...)`` is a context manager. Inside it, every forward of ``model`` first
empties ``records`` and then fills ``records[site]`` with one tensor per layer, in layer order:

  "q","k","v"      [B,H,S,d_h] as fed to QK^T (after RoPE, GQA repeat and any A8 quantization)
  "scores"         [B,H,S,S]   Q·Kᵀ·scaling + HF's additive mask (eager convention), pre-softmax
  "probs"          [B,H,S,S]   softmax output, before dropout and before quantization
  "context"        [B,H,S,d_h] per-head P·V (the context W_O consumed; the teacher's under TI-C)
  "attn_output"    [B,S,D]     W_O·concat(ctx)+b before dropout/residual (SPEC "SA_output", blk[2];
                               the teacher's under TI-O)
  "attn_sublayer"  [B,S,D]     post-LN encoders: LN(dropout(W_O ctx + b) + X_l) (SPEC blk[1]);
                               pre-LN decoders: the residual stream right after the attention add
  "hidden"         L+1 x [B,S,D]: input of layer 0 (embedding output), outputs of layers 0..L-2,
                   and the layer stack's last_hidden_state (after the final norm for decoders),
                   i.e. exactly HF ``output_hidden_states``.

The first six need the attention computation and switch the model to the registered attention
function (``attention.NAME``) for as long as they (or A8, softmax_fn, TI-M/TI-C) are needed; the
rest are forward hooks. With nothing requested the model is left untouched (bitwise equal output).
Leaving the context removes every hook and restores the attention implementation.
Records are tensors of the live graph (no copies); a teacher is run under no_grad/inference_mode.
Gradient checkpointing is not supported (recomputation would record twice).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from . import attention
from .adapters import Adapter, LayerParts, get_adapter

__all__ = ["Capture", "SITES", "ATTENTION_SITES", "MODES", "TEACHER_SITE", "get_adapter"]

SITES = ("q", "k", "v", "scores", "probs", "context", "attn_output", "attn_sublayer", "hidden")
ATTENTION_SITES = frozenset(("q", "k", "v", "scores", "probs", "context"))
MODES = (None, "M", "C", "O")
TEACHER_SITE = {"M": "probs", "C": "context", "O": "attn_output"}  # what each TI mode substitutes


class Capture:
    """Context manager exposing per-layer tensors of ``model``; see the module docstring.

    act_quant_bits=8 applies ``quantize_activation(x, 8, act_quant_clip)`` to Q, K, V and to the
    probabilities after dropout, before @V (SPEC §3.1; student only). softmax_fn(scores) replaces
    softmax over the last dim (NN-LUT); it is called with the scores tensor only.
    """

    def __init__(self, model, record: Iterable[str] = (), *, act_quant_bits: int | None = None,
                 act_quant_clip: float | None = 2.5, softmax_fn=None):
        want = set(record)
        bad = want - set(SITES)
        if bad:
            raise ValueError(f"Capture: unknown site(s) {sorted(bad)}; valid: {', '.join(SITES)}")
        self.model, self.want = model, want
        self.act_quant_bits, self.act_quant_clip, self.softmax_fn = act_quant_bits, act_quant_clip, softmax_fn
        self.records: dict[str, list[torch.Tensor]] = {s: [] for s in SITES if s in want}
        self._mode, self._teacher, self._layers = None, None, None
        self._adapter: Adapter | None = None
        self._hooks, self._ti_hooks, self._o_hooked = [], [], False
        self._shape: dict[int, torch.Size] = {}
        self._orig_impl, self._switched = None, False

    # ------------------------------------------------------------------ records
    def clear(self) -> None:
        """Drop all records (new empty lists; lists handed out earlier are left as they are)."""
        for site in self.records:
            self.records[site] = []

    def put(self, site: str, tensor: torch.Tensor) -> None:
        if site in self.want:
            self.records[site].append(tensor)

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> Capture:
        ad = self._adapter = get_adapter(self.model)
        if not ad.uses_interface:
            self._check_no_interface(self._mode)
        try:
            attention.register()
            for li, parts in enumerate(ad.parts):
                attention.bind(parts.attn, self, li)
            self._install_record_hooks(ad)
            self._orig_impl = getattr(self.model.config, "_attn_implementation", None)
            self._install_ti_hooks()
            self._sync_impl()
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._teardown()

    def _teardown(self) -> None:
        for h in self._hooks + self._ti_hooks:
            h.remove()
        self._hooks, self._ti_hooks, self._o_hooked = [], [], False
        if self._adapter is not None:
            for parts in self._adapter.parts:
                if attention._BOUND.get(parts.attn, (None,))[0] is self:
                    attention.unbind(parts.attn)
        if self._switched:
            self._set_impl(self._orig_impl)
            self._switched = False
        self._adapter = None

    # ------------------------------------------------------------------ intervention
    def intervene(self, mode: str | None, teacher_records: Mapping | None, *, layers=None) -> None:
        """Set the Teacher-Intervention mode for the next forwards (SPEC §5.1); None switches it off.

        M: Q,K from a detached copy of their input, V from the normal input; the teacher's probs
           replace the student's before dropout/A8/@V (the student's own probs are still recorded).
        C: Q,K,V from the detached input; the teacher's per-head context replaces P·V before W_O.
        O: Q,K,V from the detached input; the teacher's W_O·ctx+b replaces the student's, followed
           by the model's own dropout, residual add and LayerNorm.
        ``teacher_records`` is a teacher Capture's ``records`` (read at every forward, so one call
        serves many steps); it must record "probs" / "context" / "attn_output" for M / C / O.
        ``layers``: indices to intervene in (default: every layer, as the official code).
        Detaching the input of the Q/K/V projections is the layer input for BERT; for pre-LN
        decoders it is the normed input (their projections never see the raw residual stream).
        """
        if mode not in MODES:
            raise ValueError(f"intervene: mode must be one of {MODES}, got {mode!r}")
        if mode is not None:
            need = TEACHER_SITE[mode]
            if teacher_records is None or need not in teacher_records:
                raise ValueError(f"intervene({mode!r}) needs teacher records of {need!r} "
                                 f"(create the teacher Capture with record including {need!r})")
            if self._adapter is not None and not self._adapter.uses_interface:
                self._check_no_interface(mode)
        self._mode, self._teacher = mode, (teacher_records if mode else None)
        self._layers = None if layers is None or mode is None else frozenset(int(i) for i in layers)
        if self._adapter is not None:
            for h in self._ti_hooks:
                h.remove()
            self._ti_hooks = []
            self._install_ti_hooks()
            self._sync_impl()

    def mode_at(self, layer: int) -> str | None:
        """The TI mode applied in ``layer`` (None outside the selected layers)."""
        if self._mode is None or (self._layers is not None and layer not in self._layers):
            return None
        return self._mode

    def teacher_tensor(self, site: str, layer: int, shape, dtype) -> torch.Tensor:
        """The teacher's ``site`` tensor of ``layer``, checked against ``shape``, cut from any graph."""
        recs = self._teacher[site]
        if layer >= len(recs):
            raise RuntimeError(f"intervene({self._mode!r}): teacher records hold {len(recs)} "
                               f"{site!r} tensors, layer {layer} needed; run the teacher first")
        t = recs[layer]
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"teacher {site!r} of layer {layer} has shape {tuple(t.shape)}, "
                             f"the student needs {tuple(shape)}")
        t = t.clone() if t.is_inference() else t.detach()  # inference tensors cannot enter autograd
        return t.to(dtype)

    # ------------------------------------------------------------------ internals
    def _needs_attention(self) -> bool:
        return bool(self.want & ATTENTION_SITES or self.act_quant_bits or self.softmax_fn is not None
                    or self._mode in ("M", "C"))

    def _check_no_interface(self, mode) -> None:
        bad = sorted(self.want & ATTENTION_SITES)
        if bad or self.act_quant_bits or self.softmax_fn is not None or mode in ("M", "C"):
            raise NotImplementedError(
                "GPT-Neo: its attention is computed inside GPTNeoSelfAttention, not through "
                "transformers' AttentionInterface, so Capture cannot read or change Q/K/V, scores, "
                "probs or context, apply act_quant_bits or softmax_fn, or run TI-M/TI-C "
                f"(asked: sites={bad}, act_quant_bits={self.act_quant_bits}, "
                f"softmax_fn={self.softmax_fn is not None}, mode={mode!r}); "
                "'hidden', 'attn_output', 'attn_sublayer' and TI-O work")

    def _set_impl(self, impl) -> None:
        if hasattr(self.model, "set_attn_implementation") and impl is not None:
            self.model.set_attn_implementation(impl)
        else:
            self.model.config._attn_implementation = impl

    def _sync_impl(self) -> None:
        need = self._needs_attention()
        if need and not self._switched:
            self._set_impl(attention.NAME)
            self._switched = True
        elif not need and self._switched:
            self._set_impl(self._orig_impl)
            self._switched = False

    def _install_record_hooks(self, ad: Adapter) -> None:
        hook = self._hooks.append
        hook(self.model.register_forward_pre_hook(lambda m, a: self.clear()))
        if "hidden" in self.want:
            hook(ad.layers[0].register_forward_pre_hook(self._hidden_in, with_kwargs=True))
            for layer in ad.layers[:-1]:
                hook(layer.register_forward_hook(self._hidden_out))
            hook(ad.stack.register_forward_hook(self._hidden_last))
        if self.want & {"attn_output", "attn_sublayer"}:
            self._hook_o()
        if "attn_sublayer" in self.want:
            for li, parts in enumerate(ad.parts):
                if parts.sub_is_input:
                    hook(parts.sub.register_forward_pre_hook(self._sub_in(li)))
                else:
                    hook(parts.sub.register_forward_hook(lambda m, a, out: self.put("attn_sublayer", out)))

    def _hidden_in(self, module, args, kwargs):
        self.put("hidden", args[0] if args else kwargs["hidden_states"])

    def _hidden_out(self, module, args, out):
        self.put("hidden", out[0] if isinstance(out, tuple) else out)

    def _hidden_last(self, module, args, out):
        self.put("hidden", out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0])

    def _sub_in(self, li: int):
        def hook(module, args):
            x = args[0]
            if x.dim() == 2:  # OPT flattens the residual stream to [B*S, D] before its FFN norm
                x = x.view(self._shape[li])
            self.put("attn_sublayer", x)
        return hook

    def _hook_o(self) -> None:
        """One forward hook per W_O: records "attn_output" and applies the TI-O substitution."""
        if self._o_hooked:
            return
        for li, parts in enumerate(self._adapter.parts):
            self._hooks.append(parts.o.register_forward_hook(self._o_hook(li)))
        self._o_hooked = True

    def _o_hook(self, li: int):
        def hook(module, args, out):
            self._shape[li] = out.shape
            replaced = None
            if self.mode_at(li) == "O":
                out = replaced = self.teacher_tensor("attn_output", li, out.shape, out.dtype)
            self.put("attn_output", out)
            return replaced
        return hook

    def _install_ti_hooks(self) -> None:
        """Stop-gradient on the projection inputs of the intervened layers (SPEC §5.1, §9.14)."""
        if self._mode is None:
            return
        if self._mode == "O":
            self._hook_o()
        for li, parts in enumerate(self._adapter.parts):
            if self.mode_at(li) is not None:
                self._ti_hooks.extend(_detach_hooks(parts, self._mode))


def _detach_input(module, args):
    return (args[0].detach(), *args[1:])


def _detach_hooks(parts: LayerParts, mode: str) -> list:
    if parts.qkv is None:
        mods = (parts.q, parts.k) if mode == "M" else (parts.q, parts.k, parts.v)
        return [m.register_forward_pre_hook(_detach_input) for m in mods]
    if mode != "M":
        return [parts.qkv.register_forward_pre_hook(_detach_input)]

    def qk_detached(module, args, out):  # fused [Q|K|V]: Q,K from a detached input, V as is
        d = out.shape[-1] // 3
        det = module.forward(args[0].detach(), *args[1:])
        return torch.cat([det[..., : 2 * d], out[..., 2 * d:]], dim=-1)
    return [parts.qkv.register_forward_hook(qk_detached)]
