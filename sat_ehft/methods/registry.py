"""The method registry: a method file calls `register(Method(...))`; `sat_ehft.methods` imports them all."""

from sat_ehft.registry import Registry

METHODS = Registry("method")
register = METHODS.register
get_method = METHODS.get_item
