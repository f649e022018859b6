"""Knowledge-distillation losses (`kdqat.kd.losses`, pure functions, SPEC §4) and named
recipes (`kdqat.kd.methods`: weighted sums of those terms, chosen by name)."""
from kdqat.kd.methods import METHODS, KDMethod, build_method, method_names, validate_method

__all__ = ["METHODS", "KDMethod", "build_method", "method_names", "validate_method"]
