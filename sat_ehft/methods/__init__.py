"""Every method of the paper's Table 1, registered by name. Adding a method: a `register(Method(...))`
call in a file here, plus its import line below."""

from sat_ehft.methods.base import PET_MIXINS, Method, Stage
from sat_ehft.methods.registry import METHODS, get_method, register

from sat_ehft.methods import one_stage, two_stage  # noqa: E402,F401  (registers)

__all__ = ["METHODS", "PET_MIXINS", "Method", "Stage", "get_method", "register"]
