"""kdqat.nnlut: exact network→LUT conversion, LUT evaluation and gradients, deterministic training,
cached tables, power-of-two scaling, LUT softmax / LayerNorm / GELU against the exact ops, the
BERT swap + restore and calibration (NNLUT.md §1.1–§1.6)."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdqat.nnlut import ibert
from kdqat.nnlut.calibrate import calibrate
from kdqat.nnlut.lut import (TABLE_DIR, Lut, load_network, load_table, lut_eval, network_to_lut, pow2_reduce)
from kdqat.nnlut.network import OPS, FitConfig, ReluNet, fit_network, l1_grad
from kdqat.nnlut.ops import LutGELU, LutLayerNorm, LutSoftmax, default_tables, lut_softmax, swap_nonlinearities

# Stated tolerances of the LUT ops vs the exact ops (16 entries; "paper": Table-1 ranges + §1.5 scaling,
# "narrow": 1/x on [1, 2) and 1/√x on [1, 4) with exact scaling). Softmax: max |p − p_ref| and max
# |Σp − 1| on scores N(0, σ²), σ ∈ {1, 3, 10}, length ≤ 128, with padding. LayerNorm: the relative error
# of the normalised output (|y − y_ref| ≤ tol·|y_ref| + 1e-4) for σ from 1e-3 to 300.
TOL_SOFTMAX_PAPER, SUM_TOL_PAPER = 1.5e-2, 3e-2
TOL_SOFTMAX_NARROW, SUM_TOL_NARROW = 1.5e-2, 3e-3
TOL_LN_PAPER, TOL_LN_NARROW = 0.08, 3e-3


def _net(n, b, m):
    net = ReluNet(len(n))
    with torch.no_grad():
        for k, v in (("n", n), ("b", b), ("m", m)):
            getattr(net, k).copy_(torch.tensor(v, dtype=torch.float64))
    return net


# ------------------------------------------------------------------------------ conversion

def test_conversion_hand_computed():
    # ReLU(x) + 2·ReLU(1 − x) + 0.5·ReLU(0·x + 3) (constant 1.5) + 7·ReLU(-x) with m = 0 (dropped)
    net = _net([1.0, -1.0, 0.0, -1.0], [0.0, 1.0, 3.0, 0.0], [1.0, 2.0, 0.5, 0.0])
    d, s, t = network_to_lut(net.n, net.b, net.m)
    # x < 0: 2(1 − x) + 1.5; 0 ≤ x < 1: x + 2(1 − x) + 1.5; x ≥ 1: x + 1.5
    assert d.tolist() == [0.0, 1.0]
    assert s.tolist() == [-2.0, -1.0, 1.0] and t.tolist() == [3.5, 3.5, 1.5]


def test_conversion_merges_duplicate_breakpoints():
    # two units switching at x = 1 (one from each side) and one at x = -2
    net = _net([2.0, -1.0, 1.0], [-2.0, 1.0, 2.0], [1.0, 1.0, 1.0])
    d, s, t = network_to_lut(net.n, net.b, net.m)
    assert d.tolist() == [-2.0, 1.0]
    # x < -2: (1 − x); -2 ≤ x < 1: (1 − x) + (x + 2) = 3; x ≥ 1: (2x − 2) + (x + 2) = 3x
    assert s.tolist() == [-1.0, 0.0, 3.0] and t.tolist() == [1.0, 3.0, 0.0]


@pytest.mark.parametrize("hidden", [15, 31])
def test_conversion_exact_on_random_networks(hidden):
    g = torch.Generator().manual_seed(hidden)
    for _ in range(20):
        n, b, m = (torch.randn(hidden, generator=g, dtype=torch.float64) for _ in range(3))
        n[0] = 0.0                                   # constant unit
        n[1], b[1] = -2 * n[2], -2 * b[2]            # same breakpoint (exactly), opposite side
        net = _net(n.tolist(), b.tolist(), m.tolist())
        lut = Lut.from_network(net)
        assert lut.entries == hidden - 1             # H − 1 constant − 1 duplicate + 1
        x = torch.cat([torch.linspace(-10, 10, 20_001, dtype=torch.float64), lut.d])
        with torch.no_grad():
            assert float((lut(x) - net(x)).abs().max()) < 1e-12


def test_lut_eval_convention_and_gradients():
    d = torch.tensor([0.0, 1.0], dtype=torch.float64)
    s = torch.tensor([-2.0, -1.0, 1.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([3.5, 3.5, 1.5], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([-1.0, 0.0, 0.5, 1.0, 3.0], dtype=torch.float64, requires_grad=True)
    y = lut_eval(x, d, s, t)                        # x = d_i belongs to the segment right of d_i
    assert y.tolist() == [5.5, 3.5, 3.0, 2.5, 4.5]
    y.sum().backward()
    assert s.grad.tolist() == [-1.0, 0.5, 4.0] and t.grad.tolist() == [1.0, 2.0, 2.0]
    assert x.grad.tolist() == [-2.0, -1.0, -1.0, 1.0, 1.0]


def test_lut_eval_dtype_follows_input():
    lut = load_table("gelu")
    x = torch.linspace(-4, 4, 101)
    assert lut(x).dtype == torch.float32 and lut(x.half()).dtype == torch.float16
    assert float((lut(x).double() - lut(x.double())).abs().max()) < 1e-6


# ------------------------------------------------------------------------------ training

def test_l1_grad_matches_autograd():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(3, 15, generator=g, dtype=torch.float64)
    x, y = torch.randn(257, generator=g, dtype=torch.float64), torch.randn(257, generator=g, dtype=torch.float64)
    net = _net(*p.tolist())
    (net(x) - y).abs().mean().backward()
    auto = torch.stack([net.n.grad, net.b.grad, net.m.grad])
    assert torch.allclose(l1_grad(p, x, y), auto, rtol=0, atol=1e-15)


def test_fit_is_deterministic_and_learns():
    cfg = FitConfig(samples=4096, batch=512, steps=1000, seed=3)
    a, b = fit_network("gelu", cfg), fit_network("gelu", cfg)
    assert a.state() == b.state()
    x = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    with torch.no_grad():
        start = float((fit_network("gelu", FitConfig(steps=0, seed=3))(x) - F.gelu(x)).abs().mean())
        assert start > 1.0 and float((a(x) - F.gelu(x)).abs().mean()) < 0.07     # 1.20 → 0.058


def test_spread_init_places_breakpoints_in_range():
    for op in ("gelu", "exp", "recip", "rsqrt_s"):
        net = fit_network(op, FitConfig(init="spread", steps=0))
        d = -net.b / net.n
        spec = OPS[op]
        assert int(((d >= spec.lo) & (d <= spec.hi)).sum()) >= 14


# ------------------------------------------------------------------------------ cached tables

def test_cached_tables_match_their_networks():
    files = sorted(TABLE_DIR.glob("*.json"))
    assert len(files) == len(OPS) * 2 * 2             # ops × {16, 32} × {paper, spread}
    for f in files:
        rec = json.loads(f.read_text())
        net = ReluNet.from_state(rec["network"])
        d, s, t = network_to_lut(net.n, net.b, net.m)
        assert (d.tolist(), s.tolist(), t.tolist()) == (rec["lut"]["d"], rec["lut"]["s"], rec["lut"]["t"])
        assert net.hidden == rec["entries"] - 1 and len(rec["lut"]["s"]) <= rec["entries"]
        spec = OPS[rec["op"]]
        x = torch.linspace(spec.lo, spec.hi, 10_001, dtype=torch.float64)
        with torch.no_grad():
            assert float((Lut(d, s, t)(x) - net(x)).abs().max()) < 1e-12


def test_gelu16_table_beats_i_gelu_on_minus4_4():
    x = torch.linspace(-4, 4, 80_001, dtype=torch.float64)
    with torch.no_grad():
        lut_err = float((load_table("gelu", 16)(x) - F.gelu(x)).abs().max())
    i_gelu_err = float((ibert.i_gelu(x) - F.gelu(x)).abs().max())
    assert lut_err <= i_gelu_err
    assert load_network("gelu", 16).hidden == 15


# ------------------------------------------------------------------------------ power-of-two scaling

def test_pow2_reduce_hand_values():
    x = torch.tensor([3 * 2**-10, 0.5, 1.0, 1023.0, 1024.0, 3 * 2**20, 2**-25], dtype=torch.float64)
    xr, k = pow2_reduce(x)
    assert k.tolist() == [1, 1, 0, 0, -1, -2, 3]
    assert xr.tolist() == [3.0, 512.0, 1.0, 1023.0, 1.0, 3.0, 32.0]


def test_scaling_is_exact_and_keeps_relative_error():
    wide = torch.logspace(-8, 8, 20_001, dtype=torch.float64)
    for table, step, bound in (("rsqrt_s", 10, 0.08), ("rsqrt_n", 2, 1e-3), ("recip_n", 1, 1e-3)):
        lut = load_table(table, 16)
        assert lut.scale_log2 == step
        with torch.no_grad():
            xr, k = pow2_reduce(wide, step)
            raw = lut_eval(xr, lut.d, lut.s, lut.t)
            # f(x) = S^(-k·p)·LUT(x·S^k): a power-of-two factor, so bitwise equal
            assert torch.equal(lut(wide), raw * torch.exp2(-step * lut.power * k.double()))
            f = OPS[table].fn
            rel_wide = (lut(wide) - f(wide)).abs() / f(wide)
            rel_reduced = (raw - f(xr)).abs() / f(xr)
        assert float((rel_wide - rel_reduced).abs().max()) < 1e-12      # relative error is carried over
        assert float(rel_wide.max()) < bound


# ------------------------------------------------------------------------------ ops

def _scores(batch, heads, length, scale, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, heads, length, length, generator=g) * scale
    mask = torch.zeros(batch, 1, 1, length)
    mask[-1, ..., length // 2:] = torch.finfo(torch.float32).min       # HF additive padding mask
    return s + mask


@pytest.mark.parametrize("table_set,tol,sum_tol", [("paper", TOL_SOFTMAX_PAPER, SUM_TOL_PAPER),
                                                   ("narrow", TOL_SOFTMAX_NARROW, SUM_TOL_NARROW)])
def test_lut_softmax_close_to_softmax(table_set, tol, sum_tol):
    tabs = default_tables(16, table_set)
    sm = LutSoftmax(tabs["exp"], tabs["recip"])
    for length, scale in ((16, 1.0), (16, 3.0), (64, 3.0), (128, 10.0)):
        s = _scores(2, 4, length, scale, seed=length)
        p, ref = sm(s), s.softmax(-1)
        assert p.dtype == torch.float32
        assert float((p - ref).abs().max()) < tol
        assert float((p.sum(-1) - 1).abs().max()) < sum_tol
        assert float(p[-1, ..., length // 2:].abs().max()) == 0.0       # masked keys get exactly 0
    s = _scores(1, 2, 16, 3.0, seed=0).half()
    assert lut_softmax(s).dtype == torch.float16


@pytest.mark.parametrize("table_set,rel_tol", [("paper", TOL_LN_PAPER), ("narrow", TOL_LN_NARROW)])
def test_lut_layernorm_close_to_layernorm(table_set, rel_tol):
    g = torch.Generator().manual_seed(0)
    ln = nn.LayerNorm(64, eps=1e-12)
    with torch.no_grad():
        ln.weight.copy_(1 + 0.2 * torch.randn(64, generator=g)), ln.bias.copy_(0.2 * torch.randn(64, generator=g))
    lut_ln = LutLayerNorm(ln, copy.deepcopy(default_tables(16, table_set)["rsqrt"]))
    assert lut_ln.weight is ln.weight and lut_ln.bias is ln.bias
    for mu, sd in ((0.0, 1.0), (5.0, 0.01), (0.0, 30.0), (1.0, 300.0), (0.0, 1e-3)):
        x = torch.randn(4, 10, 64, generator=g) * sd + mu
        with torch.no_grad():
            y, ref = lut_ln(x) - ln.bias, ln(x) - ln.bias
        # the only approximation is r = LUT(σ² + ε): each row is off by one relative factor
        # (+ float32 rounding of x − μ, ≤ 1e-4 here)
        assert bool(((y - ref).abs() <= rel_tol * ref.abs() + 1e-4).all())
        assert float(((y - ref).abs() / ref.abs().clamp(min=1e-6)).max()) < 1.0


def test_lut_gelu_module():
    x = torch.linspace(-6, 6, 1201)
    g = LutGELU()
    with torch.no_grad():
        assert float((g(x) - F.gelu(x)).abs().max()) < 6e-3
    assert torch.equal(g(x), load_table("gelu")(x))


# ------------------------------------------------------------------------------ BERT swap + calibration

def _bert(hidden_act="gelu"):
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     vocab_size=100, hidden_act=hidden_act)
    return BertForSequenceClassification(cfg).eval()


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 8:] = 0
    return {"input_ids": torch.randint(3, 100, (2, 12), generator=g), "attention_mask": mask}


@pytest.mark.parametrize("table_set,tol", [("paper", 0.3), ("narrow", 0.01)])
def test_swap_bert_close_and_restored(table_set, tol):
    from kdqat.capture import Capture
    model, inp = _bert(), _inputs()
    with torch.no_grad():
        ref = model.bert(**inp).last_hidden_state
    keys = set(model.state_dict())
    with swap_nonlinearities(model, table_set=table_set) as h:
        kinds = [type(m).__name__ for m in h.swapped.values()]
        assert kinds.count("LutGELU") == 2 and kinds.count("LutLayerNorm") == 5    # emb + 2 per layer
        assert isinstance(model.bert.encoder.layer[1].intermediate.intermediate_act_fn, LutGELU)
        assert set(model.state_dict()) == keys                 # tables are non-persistent buffers
        with torch.no_grad(), Capture(model, softmax_fn=h.softmax_fn):
            out = model.bert(**inp).last_hidden_state
        err = float((out - ref).abs().max())
        assert 0 < err < tol                                   # |ref| ≤ 2.9 here
    with torch.no_grad():
        assert torch.equal(model.bert(**inp).last_hidden_state, ref)


def test_swap_errors():
    with pytest.raises(ValueError, match="unknown op"):
        swap_nonlinearities(_bert(), ops=("tanh",))
    with pytest.raises(ValueError, match="has no such module"):
        swap_nonlinearities(_bert(hidden_act="relu"), ops=("gelu",))
    with pytest.raises(ValueError, match="table_set"):
        swap_nonlinearities(_bert(), table_set="wide")


def test_calibrate_improves_every_table_and_freezes_the_model():
    from kdqat.capture import Capture
    model = _bert()
    h = swap_nonlinearities(model)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}

    def run(batch):
        with Capture(model, softmax_fn=h.softmax_fn):
            model(**batch)

    report = calibrate(h, [_inputs(s) for s in range(3)], run=run, per_call=512, batch=256)
    assert set(report) == set(h.swapped) | {"softmax.exp", "softmax.recip"}
    for site, r in report.items():
        assert r["l1_after"] < r["l1_before"], site
    assert report["softmax.recip"]["samples"] == 3 * 2 * (2 * 4 * 12)      # batches × layers × rows
    assert all(torch.equal(p, params[k]) for k, p in model.named_parameters())
    gelu = model.bert.encoder.layer[0].intermediate.intermediate_act_fn
    assert gelu.lut.name.endswith("+cal") and h.softmax_fn.exp.name.endswith("+cal")
    assert gelu.lut.net_state is not None and h.softmax_fn.record is None
    h.restore()
