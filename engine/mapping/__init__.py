"""The spec language's mapping rules and operations, compiled once into closures."""

from __future__ import annotations

from .message import compile_classifier, encode_carry, new_call_id
from .ops import OPS
from .rules import RULE_KEYS, Mapper, compile_rule_value, compile_rules
from .shape import ShapeCheck, compile_required
from .templates import compile_condition, compile_first_of, compile_source, compile_template
from .turns import split_call_id

__all__ = [
    "OPS",
    "RULE_KEYS",
    "Mapper",
    "ShapeCheck",
    "compile_classifier",
    "compile_condition",
    "compile_first_of",
    "compile_required",
    "compile_rule_value",
    "compile_rules",
    "compile_source",
    "compile_template",
    "encode_carry",
    "new_call_id",
    "split_call_id",
]
