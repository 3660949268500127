"""A name -> object registry, shared by tasks and methods (as fairseq registers tasks)."""


class Registry(dict):
    def __init__(self, kind, normalize=str):
        super().__init__()
        self.kind = kind  # "task" / "method", for messages
        self.normalize = normalize  # how names compare, e.g. ignoring case and dashes

    def register(self, item):
        if item.name in self:
            raise ValueError(f"{self.kind} '{item.name}' is registered twice")
        self[item.name] = item
        return item

    def get_item(self, name):
        by_key = {self.normalize(n): item for n, item in self.items()}
        if self.normalize(name) not in by_key:
            raise KeyError(f"unknown {self.kind} '{name}'; known {self.kind}s: {', '.join(sorted(self))}")
        return by_key[self.normalize(name)]
