"""The method registry: a method file calls `register(Method(...))`; `sat_ehft.methods` imports them all."""

METHODS = {}


def register(method):
    if method.name in METHODS:
        raise ValueError(f"method '{method.name}' is registered twice")
    METHODS[method.name] = method
    return method


def get_method(name):
    if name not in METHODS:
        raise KeyError(f"unknown method '{name}'; known methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]
