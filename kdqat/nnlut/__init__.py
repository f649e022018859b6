"""NN-LUT (Yu et al., DAC 2022) and the I-BERT baselines (NNLUT.md).

* ``network``: the one-hidden-layer ReLU approximator, its ops (``OPS``) and training (§1.2, §1.4).
* ``lut``: exact network → LUT conversion, LUT evaluation, power-of-two input scaling, cached
  tables under ``kdqat/nnlut/tables/`` (rebuild: ``python -m kdqat.nnlut.lut``) (§1.1, §1.2, §1.5).
* ``ibert``: i-GELU, i-exp, i-softmax, i-sqrt, i-LayerNorm (float and integer simulations) and
  their modules ``IGELU``, ``ISoftmax``, ``ILayerNorm`` (§3).
* ``ops``: ``LutGELU``, ``LutLayerNorm``, ``lut_softmax``/``LutSoftmax``, ``swap_nonlinearities``,
  ``swap_ibert`` (§1.3). Registry rows that use them: role "approx", ``kdqat.recipes.approx``.
* ``calibrate``: refit swapped tables on the inputs they see, model frozen (§1.6).
* ``errors``: the error table ``python -m kdqat.nnlut.errors --out results/nnlut_error.md`` (§4).
"""
from kdqat.nnlut.lut import Lut, load_network, load_table, lut_eval, network_to_lut, pow2_reduce
from kdqat.nnlut.network import OPS, FitConfig, ReluNet, fit_network
from kdqat.nnlut.ops import (LutGELU, LutLayerNorm, LutSoftmax, LutSwap, lut_softmax, swap_ibert,
                             swap_nonlinearities)

__all__ = ["OPS", "FitConfig", "ReluNet", "fit_network", "Lut", "network_to_lut", "lut_eval", "pow2_reduce",
           "load_table", "load_network", "LutGELU", "LutLayerNorm", "LutSoftmax", "LutSwap", "lut_softmax",
           "swap_nonlinearities", "swap_ibert"]
